"""HTTP ingest: POST /api/v1/ingest/telemetry and /api/v1/ingest/senml, for devices that
cannot keep an MQTT connection (docs/devices.md, "HTTP ingest").

The MQTT contract, over HTTP: the body is exactly an MQTT payload of devices/{id}/telemetry or
devices/{id}/telemetry/senml, decoded by fieldhub.core.decode with the same limits, written
by fieldhub.core.readings (the one readings writer) with the same identity and conflict rules,
and what the bridge would dead-letter is dead-lettered here too, with the reason in the answer.
One request is one transaction: readings, latest values, presence, the telemetry notification,
its dead letter and its Idempotency-Key commit together or not at all.

Who is sending: HTTP Basic with the device id and its secret (checked against the stored $7$
hash in constant time; failures are throttled per device and address, and per address), or a
client certificate nginx verified, believed only from a trusted proxy (ingest_rules).

A device cannot slow others: the body is bounded (the MQTT payload limit; more is refused
before it is read) and each device has a request budget per second across every worker
(FIELDHUB_INGEST_RATE_PER_S), answered 429 with Retry-After beyond it.

Measured (docs/benchmarks.md, `fieldhub bench http-ingest`): see there for requests/s and
readings/s through gunicorn on this machine, with and without Idempotency-Key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import orjson
import psycopg
from flask import Blueprint, Flask, Response, current_app, request

from fieldhub.core import readings, users
from fieldhub.core.db import Conn, Queries
from fieldhub.core.decode import (
    MAX_PAYLOAD_BYTES,
    DecodeError,
    Reading,
    decode_senml,
    decode_telemetry_stamped,
)
from fieldhub.core.passwords import hash_secret, verify_secret
from fieldhub.core.receive_clock import ReceiveClock
from fieldhub.web import db, problems
from fieldhub.web.errors import PROBLEM_JSON, problem_response
from fieldhub.web.forwarded import is_trusted, parse_address
from fieldhub.web.ingest_rules import (
    CERT_DN_HEADER,
    CERT_SERIAL_HEADER,
    CERT_VERIFY_HEADER,
    basic_credentials,
    body_digest,
    certificate_device,
    certificate_serial,
    retry_after_s,
    valid_idempotency_key,
)
from fieldhub.web.proxies import PEER_KEY, client_address

QUERIES = Queries(Path(__file__).with_name("ingest.sql"))
bp = Blueprint("ingest", __name__, url_prefix="/api/v1/ingest")


# Failed credentials: a device id guessed from one address is refused after 10 failures in 15
# minutes, and an address after 300 (a fleet behind one NAT with one misconfigured device
# keeps working: the other devices' keys differ). The secrets are 192 random bits, so this
# bounds the hashing an attacker makes us do rather than their odds.
THROTTLE = users.ThrottlePolicy(window_s=900, per_email=10, per_ip=300)
# Checked against when the device is unknown, so an unknown id costs what a wrong secret does.
_DUMMY_HASH = hash_secret("not a device secret")
# Receive stamps of readings without `ts`, strictly increasing in this process.
_CLOCK = ReceiveClock()
_TOPIC_OF = {"telemetry": "http:/api/v1/ingest/telemetry", "senml": "http:/api/v1/ingest/senml"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.before_request
def _bounded_body() -> None:
    # Werkzeug refuses a larger Content-Length with 413 before the body is read.
    request.max_content_length = MAX_PAYLOAD_BYTES


@bp.post("/telemetry")
def telemetry() -> Response:
    return _ingest("telemetry")


@bp.post("/senml")
def senml() -> Response:
    return _ingest("senml")


def _ingest(kind: str) -> Response:
    conn = db.write()
    device = _authenticate(conn)
    if isinstance(device, Response):
        return device
    row = conn.execute(QUERIES["count_request"], {"device_key": device["device_key"]}).fetchone()
    limit = int(current_app.config["INGEST_RATE_PER_S"])
    if row is not None and int(row["requests"]) > limit:
        return _too_many(
            f"This device may send {limit} request(s) per second.",
            retry_after_s(float(row["seconds_left"])),
        )
    body = request.get_data(cache=False)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not valid_idempotency_key(key):
        return problem_response(
            problems.BY_SLUG["invalid-parameter"],
            "Idempotency-Key must be 1 to 255 printable ASCII characters.",
        )
    # Decoded once, before the transaction: a redone transaction keeps the receive stamps.
    received_at = _CLOCK.stamp()
    try:
        if kind == "telemetry":
            decoded, last_stamp = decode_telemetry_stamped(body, received_at)
            _CLOCK.advance_past(last_stamp)
        else:
            decoded = decode_senml(body, received_at)
        refused: DecodeError | None = None
    except DecodeError as exc:
        decoded, refused = [], exc
    request_ = _Request(kind, device, body, received_at, key)
    # The fast path first (no savepoint: two round trips fewer per request). A request that
    # repeats a stored reading (a retry without a key) fails its COPY, and the transaction is
    # redone staged, which also finds conflicts.
    for staged in (False, True):
        try:
            with conn.transaction():
                if key is not None:
                    replay = _claim(conn, request_)
                    if replay is not None:
                        return replay
                if refused is not None:
                    status, document = _refuse(conn, request_, refused)
                else:
                    status, document = _store(conn, request_, decoded, staged=staged)
            return _answer(status, document)
        except psycopg.errors.UniqueViolation:
            if staged:
                raise
    raise AssertionError("unreachable")


class _Request(NamedTuple):
    kind: str
    device: dict[str, Any]
    body: bytes
    received_at: float
    key: str | None


def _authenticate(conn: Conn) -> dict[str, Any] | Response:
    """The enabled device the request comes from, or the refusal to send."""
    certificate = _certificate_identity()
    if certificate is not None:
        cert_id, serial = certificate
        params = {
            "device_id": cert_id,
            "keys": [],
            "window_s": THROTTLE.window_s,
            "serial": serial,
        }
        device = conn.execute(QUERIES["ingest_login"], params).fetchone()
        if device is None or device["device_key"] is None:
            return _unauthorized("The certificate's device is not registered.")
        if not device["certificate_active"]:
            return _unauthorized("This certificate was replaced or revoked.")
    else:
        credentials = basic_credentials(request.headers.get("Authorization"))
        if credentials is None:
            return _unauthorized(
                "Send the device id and its secret as HTTP Basic credentials "
                "(curl -u DEVICE_ID:SECRET)."
            )
        device_id, secret = credentials
        address = client_address() or "unknown"
        keys = [f"device:{device_id[:64]}@{address}", f"device-ip:{address}"]
        params = {
            "device_id": device_id,
            "keys": keys,
            "window_s": THROTTLE.window_s,
            "serial": None,
        }
        device = conn.execute(QUERIES["ingest_login"], params).fetchone()
        assert device is not None  # one row, always
        wait = users.blocked_for(device["failures"], THROTTLE)
        if wait is not None:
            return _too_many("Too many failed logins from this address.", retry_after_s(wait))
        known = device["device_key"] is not None
        if (
            not verify_secret(secret, device["password_hash"] if known else _DUMMY_HASH)
            or not known
        ):
            users.record_login_failure(conn, keys)
            return _unauthorized("The device id or secret is wrong.")
    if not device["enabled"]:
        return problem_response(
            problems.BY_SLUG["device-disabled"],
            "This device is disabled; an administrator of its organisation can enable it.",
        )
    return dict(device)


def _certificate_identity() -> tuple[str, str] | None:
    """(device id, serial) of a client certificate, when a trusted proxy verified one."""
    peer = parse_address(str(request.environ.get(PEER_KEY) or ""))
    if peer is None or not is_trusted(peer, current_app.config["TRUSTED_PROXIES"]):
        return None
    device_id = certificate_device(
        request.headers.get(CERT_VERIFY_HEADER), request.headers.get(CERT_DN_HEADER)
    )
    serial = certificate_serial(request.headers.get(CERT_SERIAL_HEADER))
    if device_id is None or serial is None:
        return None
    return device_id, serial


def _claim(conn: Conn, req: _Request) -> Response | None:
    """None: this request is the first with its key. Otherwise the first one's answer (or a
    refusal, if the key came with another body)."""
    digest = body_digest(req.kind, req.body)
    params = {"device_key": req.device["device_key"], "key": req.key, "body_sha256": digest}
    if conn.execute(QUERIES["claim_key"], params).fetchone() is not None:
        return None
    stored = conn.execute(QUERIES["stored_key"], params).fetchone()
    if stored is None:  # pruned between the two statements: too old to be a retry anyway
        return None
    if bytes(stored["body_sha256"]) != digest:
        return problem_response(
            problems.BY_SLUG["idempotency-key-reused"],
            "This Idempotency-Key was used for another request body; use a new key for new data.",
        )
    response = _answer(int(stored["status"]), stored["response"])
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _refuse(conn: Conn, req: _Request, exc: DecodeError) -> tuple[int, dict[str, Any]]:
    """A payload the bridge would dead-letter: dead-lettered, nothing else written."""
    document = problems.body(
        problems.BY_SLUG["dead-letter"],
        f"Nothing of this request was stored: {exc.detail}.",
        extensions={"reason": exc.reason},
    )
    with conn.pipeline():
        _dead_letter(conn, req, exc.reason, exc.detail)
        _finish(conn, req, 422, document)
    return 422, document


def _store(
    conn: Conn, req: _Request, decoded: list[Reading], *, staged: bool
) -> tuple[int, dict[str, Any]]:
    """Write one request's readings inside the caller's transaction: (status, answer)."""
    key = int(req.device["device_key"])
    messages: list[readings.Message] = [(key, decoded)]
    if staged:
        readings.create_staging(conn)
    written = readings.write(conn, messages, staged=staged, savepoint=False)
    counts = {"stored": written.inserted, "duplicates": written.duplicates}
    status, document = 200, dict[str, Any](counts)
    detail = ""
    if written.conflicts:
        detail = readings.conflict_detail(written.conflicts)
        status, document = (
            409,
            problems.body(
                problems.BY_SLUG["reading-conflict"],
                detail + ".",
                extensions={"reason": "conflict", "conflicts": len(written.conflicts), **counts},
            ),
        )
    # Pipelined, as the bridge does: one round trip for the rest of the request.
    with conn.pipeline():
        readings.upsert_latest(conn, readings.newest(messages, skip=written.conflicts))
        conn.execute(readings.QUERIES["mark_seen"], {"keys": [key], "times": [req.received_at]})
        conn.execute(readings.QUERIES["notify_telemetry"], {"payloads": [str(key)]})
        if written.conflicts:
            _dead_letter(conn, req, "conflict", detail)
        _finish(conn, req, status, document)
    return status, document


def _finish(conn: Conn, req: _Request, status: int, document: dict[str, Any]) -> None:
    """Keep the answer with the request's Idempotency-Key, in the same transaction."""
    if req.key is not None:
        conn.execute(
            QUERIES["finish_key"],
            {
                "device_key": req.device["device_key"],
                "key": req.key,
                "status": status,
                "response": orjson.dumps(document).decode(),
            },
        )


def _dead_letter(conn: Conn, req: _Request, reason: str, detail: str) -> None:
    conn.execute(
        QUERIES["insert_dead_letter"],
        {
            "received_at": req.received_at,
            "device_id": req.device["device_id"],
            "device_key": req.device["device_key"],
            "topic": _TOPIC_OF[req.kind],
            "reason": reason,
            "detail": detail,
            "payload": req.body,
        },
    )


def _answer(status: int, document: dict[str, Any]) -> Response:
    mimetype = "application/json" if status < 400 else PROBLEM_JSON
    return current_app.response_class(orjson.dumps(document), status=status, mimetype=mimetype)


def _unauthorized(detail: str) -> Response:
    response = problem_response(problems.BY_SLUG["device-unauthorized"], detail)
    response.headers["WWW-Authenticate"] = 'Basic realm="fieldhub devices", charset="UTF-8"'
    return response


def _too_many(detail: str, wait_s: int) -> Response:
    response = problem_response(problems.BY_SLUG["too-many-requests"], detail)
    response.headers["Retry-After"] = str(wait_s)
    return response


__all__ = ["bp", "init_app"]
