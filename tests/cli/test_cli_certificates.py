"""`fieldhub device create/rotate --cert [--csr FILE]`: certificates from fieldhub's device CA,
recorded in the registry, checked with openssl itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.cli.conftest import CliRunner, one_error_line
from tests.support import unique_id

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIELDHUB_HOME", str(tmp_path))
    return tmp_path


def _openssl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, text=True, check=True
    )
    return done.stdout


def _csr(tmp: Path, subject: str, *key: str) -> Path:
    path = tmp / f"{unique_id()}.csr"
    _openssl(
        "req", "-new", "-nodes", "-newkey", *key, "-keyout", str(tmp / "k.pem"),
        "-out", str(path), "-subj", subject,
    )  # fmt: skip
    return path


def _certificates(cli: CliRunner, device_id: str) -> list[dict[str, object]]:
    with psycopg.connect(cli.database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT serial, state, revoke_reason, fingerprint FROM device_certificates"
            " WHERE device_id = %s ORDER BY issued_at",
            (device_id,),
        ).fetchall()


def test_create_with_a_certificate_and_rotate_it(cli: CliRunner, home: Path) -> None:
    cli("org", "create", "acme")
    device_id = unique_id()
    out, _ = cli("device", "create", device_id, "--org", "acme", "--cert", "--json")
    first = json.loads(out)
    assert first["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    ca = home / "tls" / "device-ca.crt"
    assert first["ca"] == ca.read_text()
    cert = home / "device.crt"
    cert.write_text(first["certificate"])
    assert _openssl("verify", "-CAfile", str(ca), str(cert)).strip().endswith(": OK")
    subject = _openssl("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "RFC2253")
    assert subject.strip() == f"subject=CN={device_id}"
    assert "TLS Web Client Authentication" in _openssl("x509", "-in", str(cert), "-noout", "-text")
    # The key fits the certificate.
    assert _openssl("pkey", "-pubout", stdin=first["private_key"]) == _openssl(
        "x509", "-in", str(cert), "-noout", "-pubkey"
    )
    # Only the serial and fingerprint are kept, never the key.
    [row] = _certificates(cli, device_id)
    assert (row["serial"], row["state"]) == (first["serial"], "active")
    assert row["fingerprint"] == first["fingerprint_sha256"]

    out, _ = cli("device", "rotate", device_id, "--cert", "--json")
    second = json.loads(out)
    assert second["serial"] != first["serial"]
    assert [
        (r["serial"], r["state"], r["revoke_reason"]) for r in _certificates(cli, device_id)
    ] == [
        (first["serial"], "revoked", "superseded"),
        (second["serial"], "active", None),
    ]
    cli("device", "delete", device_id)
    assert {r["revoke_reason"] for r in _certificates(cli, device_id)} == {
        "superseded",
        "cessationOfOperation",
    }


def test_a_devices_own_request_is_signed_after_its_checks(
    cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    cli("org", "create", "acme")
    device_id = unique_id()
    rsa = _csr(tmp_path, f"/O=acme/CN={device_id}", "rsa:2048")
    out, _ = cli("device", "create", device_id, "--org", "acme", "--csr", str(rsa), "--json")
    signed = json.loads(out)
    assert signed["private_key"] is None
    assert signed["key"] == "RSA 2048"
    refusals = {
        "another id": _csr(
            tmp_path, "/CN=someone-else", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"
        ),
        "a weak key": _csr(tmp_path, f"/CN={device_id}", "rsa:1024"),
        "another curve": _csr(
            tmp_path, f"/CN={device_id}", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"
        ),
    }
    for what, csr in refusals.items():
        line = one_error_line(cli, "device", "rotate", device_id, "--csr", str(csr))
        assert str(csr) in line, what
    garbage = tmp_path / "garbage.csr"
    garbage.write_text("not a request")
    assert "valid signature" in one_error_line(
        cli, "device", "rotate", device_id, "--csr", str(garbage)
    )
    # A refused request for a new device creates nothing.
    new_id = unique_id()
    one_error_line(
        cli, "device", "create", new_id, "--org", "acme", "--csr", str(refusals["a weak key"])
    )
    assert cli.device_row(new_id) is None
    assert [r["state"] for r in _certificates(cli, device_id)] == ["active"]
