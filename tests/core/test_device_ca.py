"""fieldhub's device CA with the real openssl: the CRL it makes and what it refuses."""

from __future__ import annotations

import base64
import datetime
import subprocess
from pathlib import Path

import pytest

from fieldhub.core import device_ca
from fieldhub.core.cert_rules import CertificateRequestError, Revocation, index_line


def test_the_crl_lists_what_it_is_given_and_is_checked(tmp_path: Path) -> None:
    device_ca.ensure_device_ca(tmp_path)
    issued = device_ca.issue(tmp_path, "dev-1")
    now = datetime.datetime.now(datetime.UTC)
    crl = device_ca.render_crl(
        tmp_path, [Revocation(issued.serial, "dev-1", issued.not_after, now, "certificateHold")]
    )
    assert device_ca.crl_problem(tmp_path, crl) is None
    (tmp_path / "crl.pem").write_text(crl)
    (tmp_path / "dev.crt").write_text(issued.certificate)
    verify = subprocess.run(
        ["openssl", "verify", "-crl_check", "-CRLfile", str(tmp_path / "crl.pem"),
         "-CAfile", str(tmp_path / "device-ca.crt"), str(tmp_path / "dev.crt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "certificate revoked" in verify.stdout + verify.stderr
    # Too short a life left, another CA's CRL, or no CRL at all: never shown to the broker.
    short = device_ca.render_crl(tmp_path, [], hours=24)
    assert "less than" in (device_ca.crl_problem(tmp_path, short) or "")
    other = tmp_path / "other"
    device_ca.ensure_device_ca(other)
    foreign = device_ca.render_crl(other, [])
    assert device_ca.crl_problem(tmp_path, foreign) == "not a CRL signed by the device CA"
    assert device_ca.crl_problem(tmp_path, "junk") == "not a CRL signed by the device CA"


def test_half_a_ca_is_refused_not_replaced(tmp_path: Path) -> None:
    device_ca.ensure_device_ca(tmp_path)
    before = (tmp_path / device_ca.CA_CERT).read_text()
    (tmp_path / device_ca.CA_KEY).unlink()
    with pytest.raises(RuntimeError, match="copy both"):
        device_ca.ensure_device_ca(tmp_path)
    assert (tmp_path / device_ca.CA_CERT).read_text() == before
    assert not device_ca.has_device_ca(tmp_path)


def test_index_lines_are_what_openssl_ca_reads() -> None:
    when = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
    line = index_line(Revocation("abc", "dev-1", when, when, "superseded"))
    assert line == "R\t261201120000Z\t261201120000Z,superseded\t0ABC\tunknown\t/CN=dev-1\n"
    with pytest.raises(ValueError, match="not a CRL reason"):
        index_line(Revocation("ab", "dev-1", when, when, "keyCompromise"))


def test_a_request_whose_signature_does_not_verify_is_refused(tmp_path: Path) -> None:
    device_ca.ensure_device_ca(tmp_path)
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "k"), "-out", str(tmp_path / "r.csr"),
         "-subj", "/CN=dev-1"],
        capture_output=True, check=True,
    )  # fmt: skip
    pem = (tmp_path / "r.csr").read_text()
    assert device_ca.sign_csr(tmp_path, "dev-1", pem).key == "EC P-256"
    lines = pem.strip().splitlines()
    der = bytearray(base64.b64decode("".join(lines[1:-1])))
    der[-5] ^= 0x55  # inside the signature
    body = base64.encodebytes(bytes(der)).decode()
    tampered = f"{lines[0]}\n{body}{lines[-1]}\n"
    with pytest.raises(CertificateRequestError, match="valid signature"):
        device_ca.sign_csr(tmp_path, "dev-1", tampered)
