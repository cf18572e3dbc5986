"""What the device CA signs (fieldhub.core.cert_rules), on `openssl req -text` excerpts."""

from __future__ import annotations

import pytest

from fieldhub.core.cert_rules import CertificateRequestError, check_key, check_subject

RSA = "Public Key Algorithm: rsaEncryption\n    Public-Key: ({bits} bit)\n"
EC = "Public Key Algorithm: id-ecPublicKey\n    Public-Key: (256 bit)\n    ASN1 OID: {curve}\n"


def test_subject_must_name_the_device_once() -> None:
    check_subject("CN=dev-1", "dev-1")
    check_subject("CN=dev-1,O=acme,C=DE", "dev-1")
    for subject in ("CN=dev-2", "O=acme", "CN=dev-1,CN=dev-1", r"CN=dev-1\,O=x", ""):
        with pytest.raises(CertificateRequestError, match="one CN"):
            check_subject(subject, "dev-1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RSA.format(bits=2048), "RSA 2048"),
        (RSA.format(bits=4096), "RSA 4096"),
        (EC.format(curve="prime256v1"), "EC P-256"),
        (EC.format(curve="secp384r1"), "EC P-384"),
    ],
)
def test_keys_fieldhub_signs(text: str, expected: str) -> None:
    assert check_key(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        RSA.format(bits=1024),
        RSA.format(bits=16384),
        EC.format(curve="secp256k1"),
        "Public Key Algorithm: ED25519\n    ED25519 Public-Key:\n",
        "",
    ],
)
def test_keys_fieldhub_refuses(text: str) -> None:
    with pytest.raises(CertificateRequestError):
        check_key(text)
