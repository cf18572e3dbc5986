"""The registry of device certificates: which certificate fieldhub's device CA issued to
which device, and which are revoked (docs/devices.md, "Certificate devices").

A device has at most one active certificate: issuing a new one (rotation) revokes the
previous one as `superseded` in the same transaction, and deleting the device revokes its
certificates as `cessationOfOperation` (a trigger, migration 0015, so every way of deleting
does it). Revoked rows stay until the certificate expires, which is what a revocation list
made from this table needs.

The certificate is signed before the transaction (openssl takes tens of milliseconds) and
shown only after it commits: one that fails to be recorded reaches nobody."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fieldhub.core.db import Conn, Queries
from fieldhub.core.device_ca import IssuedCertificate

QUERIES = Queries(Path(__file__).with_name("certificates.sql"))


class UnknownDevice(LookupError):
    pass


def record(conn: Conn, device_id: str, issued: IssuedCertificate) -> list[str]:
    """Record `issued` as the device's active certificate; returns the serials it superseded."""
    with conn.transaction():
        device = conn.execute(
            QUERIES["lock_device_for_certificate"], {"device_id": device_id}
        ).fetchone()
        if device is None:
            raise UnknownDevice(f"no device {device_id!r}")
        superseded = [
            str(row["serial"])
            for row in conn.execute(QUERIES["supersede"], {"device_key": device["device_key"]})
        ]
        conn.execute(
            QUERIES["record"],
            {
                "serial": issued.serial,
                "device_key": device["device_key"],
                "device_id": device_id,
                "fingerprint": issued.fingerprint,
                "not_after": issued.not_after,
                "key_type": issued.key,
            },
        )
    return superseded


def of_device(conn: Conn, device_key: int) -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in conn.execute(QUERIES["device_certificates"], {"device_key": device_key})
    ]
