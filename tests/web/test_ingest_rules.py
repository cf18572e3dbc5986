"""HTTP ingest's pure rules (fieldhub.web.ingest_rules)."""

from __future__ import annotations

import base64

import pytest

from fieldhub.web.ingest_rules import (
    basic_credentials,
    body_digest,
    certificate_device,
    certificate_serial,
    retry_after_s,
    valid_idempotency_key,
)


def _basic(text: bytes) -> str:
    return "Basic " + base64.b64encode(text).decode()


def test_basic_credentials() -> None:
    assert basic_credentials(_basic(b"dev-1:s3:cret")) == ("dev-1", "s3:cret")
    assert basic_credentials("basic " + base64.b64encode(b"a:").decode()) == ("a", "")
    for header in (
        None,
        "",
        "Bearer abc",
        "Basic",
        "Basic !!",
        _basic(b"no-colon"),
        _basic(b"\xff:x"),
    ):
        assert basic_credentials(header) is None, header


@pytest.mark.parametrize(
    ("verify", "dn", "expected"),
    [
        ("SUCCESS", "CN=dev-1,O=fieldhub", "dev-1"),
        ("SUCCESS", "O=fieldhub,cn=dev-1", "dev-1"),
        ("SUCCESS", "CN=dev-1,CN=dev-2", None),
        ("SUCCESS", "CN=Dev 1", None),
        ("SUCCESS", r"CN=dev-1\,O=x", None),
        ("SUCCESS", "O=fieldhub", None),
        ("FAILED:certificate has expired", "CN=dev-1", None),
        ("NONE", "CN=dev-1", None),
        (None, "CN=dev-1", None),
        ("SUCCESS", None, None),
    ],
)
def test_certificate_device(verify: str | None, dn: str | None, expected: str | None) -> None:
    assert certificate_device(verify, dn) == expected


def test_certificate_serials_as_the_registry_writes_them() -> None:
    assert certificate_serial("00B97699") == "b97699"
    assert certificate_serial(" 0a ") == "a"
    assert certificate_serial("00") == "0"
    for header in (None, "", "xyz", "0x12", "1" * 41):
        assert certificate_serial(header) is None, header


def test_idempotency_keys() -> None:
    assert valid_idempotency_key("0b5d2c1e-8f0a-4c55-9d5e-3c1f2a7b9e10")
    assert valid_idempotency_key("x" * 255)
    for key in ("", "x" * 256, "has space", "tab\t", "ünïcode"):
        assert not valid_idempotency_key(key), key


def test_body_digest_names_the_endpoint() -> None:
    assert body_digest("telemetry", b"{}") == body_digest("telemetry", b"{}")
    assert body_digest("telemetry", b"{}") != body_digest("senml", b"{}")
    assert body_digest("telemetry", b"{}") != body_digest("telemetry", b"{} ")


def test_retry_after_is_whole_seconds_never_zero() -> None:
    assert retry_after_s(0.0) == 1
    assert retry_after_s(-0.2) == 1
    assert retry_after_s(0.3) == 1
    assert retry_after_s(1.2) == 2
    assert retry_after_s(899.5) == 900
