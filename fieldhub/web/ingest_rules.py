"""HTTP ingest's pure rules: who a request says it is, which Idempotency-Keys are acceptable,
and how long a device over its budget waits. fieldhub.web.ingest applies them.

Decisions (docs/devices.md, "HTTP ingest"):
- HTTP Basic carries the device id and its secret, as MQTT's username and password do. A
  header that is not Basic, not base64 or not UTF-8 is simply no credentials (401), never a
  500.
- A client certificate is believed only as nginx reports it (`X-SSL-Client-Verify: SUCCESS`,
  the subject in `X-SSL-Client-DN`, the serial in `X-SSL-Client-Serial`), and only when the
  request's direct peer is a trusted proxy: anyone else could send those headers. The device
  id is the subject's CN, and the serial must be the device's active certificate in the
  registry: a rotated, revoked or unknown certificate is refused at once, whatever CRL nginx
  has loaded.
- An Idempotency-Key is 1-255 printable ASCII characters (what the IETF draft's clients send:
  UUIDs, ULIDs, counters); anything else is refused before anything is written."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re

from fieldhub.core.cert_rules import subject_cns
from fieldhub.core.decode import valid_device_id

IDEMPOTENCY_KEY_RE = re.compile(r"\A[\x21-\x7e]{1,255}\Z")

CERT_VERIFY_HEADER = "X-SSL-Client-Verify"
CERT_DN_HEADER = "X-SSL-Client-DN"
CERT_SERIAL_HEADER = "X-SSL-Client-Serial"
_SERIAL_RE = re.compile(r"\A[0-9A-Fa-f]{1,40}\Z")


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic ...` header, or None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = text.partition(":")
    if not colon:
        return None
    return user, password


def certificate_device(verify: str | None, subject_dn: str | None) -> str | None:
    """The device id of a client certificate nginx verified, or None.

    Only `SUCCESS` counts (nginx also reports `NONE` and `FAILED:<reason>`); the CN must be a
    valid device id, and a subject with several CNs names nobody (which one would it be?)."""
    if verify != "SUCCESS" or not subject_dn:
        return None
    names = subject_cns(subject_dn)
    if len(names) != 1 or not valid_device_id(names[0]):
        return None
    return names[0]


def certificate_serial(header: str | None) -> str | None:
    """nginx's $ssl_client_serial (upper-case hex, maybe with leading zeros) as the registry
    writes serials (fieldhub.core.device_ca): lower case, no leading zeros."""
    if header is None or not _SERIAL_RE.match(header.strip()):
        return None
    return header.strip().lower().lstrip("0") or "0"


def valid_idempotency_key(key: str) -> bool:
    return IDEMPOTENCY_KEY_RE.match(key) is not None


def body_digest(kind: str, body: bytes) -> bytes:
    """What a retry must repeat: the same body to the same endpoint."""
    return hashlib.sha256(kind.encode() + b"\0" + body).digest()


def retry_after_s(seconds_left: float) -> int:
    """Retry-After is whole seconds; never 0 (a client would come straight back)."""
    return max(1, math.ceil(seconds_left))
