"""fieldhub's device CA: client certificates whose CN is a device id (docs/devices.md,
"Certificate devices").

The CA lives beside the broker's TLS material, `$FIELDHUB_HOME/tls/device-ca.{crt,key}`, and is
separate from the server CA of `fieldhub tls ensure`: a device CA only ever signs device
identities, so trusting it for client authentication can never admit a server certificate
(and replacing the server certificate with an operator's own leaves device logins alone).
Made with the openssl command line, as fieldhub.core.tls is (no new Python dependency).

`issue` makes a key pair and a certificate (the private key is returned once and never
written anywhere); `sign_csr` signs a device's own request after fieldhub.core.cert_rules'
checks. Serials are 128 random bits (RFC 5280 asks for unpredictable serials)."""

from __future__ import annotations

import dataclasses
import datetime
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

from fieldhub.core.cert_rules import (
    CertificateRequestError,
    Revocation,
    check_key,
    check_subject,
    index_line,
)
from fieldhub.core.procs import run_checked

CA_DAYS = 3650
# Device certificates: 825 days, like server certificates; rotation re-issues before then.
DEVICE_DAYS = 825
CA_CERT = "device-ca.crt"
CA_KEY = "device-ca.key"
# The CRL's validity and when it is re-made although nothing changed. Mosquitto refuses every
# handshake once nextUpdate has passed (docs/security.md), so a CRL lives a week and is
# re-made when less than 6 days are left: the auth sync's 30 s sweep does it daily, and a
# week of the sync being down passes before devices are locked out.
CRL_HOURS = 7 * 24
CRL_RENEW_HOURS = 6 * 24
_CRL_CONFIG = """[ ca ]
default_ca = fieldhub
[ fieldhub ]
database = {index}
crlnumber = {crlnumber}
default_md = sha256
certificate = {certificate}
private_key = {private_key}
crl_extensions = crl_ext
[ crl_ext ]
authorityKeyIdentifier = keyid:always
"""


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    certificate: str  # PEM
    private_key: str | None  # PEM, only when fieldhub made the key; shown once, never stored
    ca: str  # PEM of the device CA, for the device's trust of nothing but its own chain
    serial: str  # lowercase hex, no leading zeros
    fingerprint: str  # SHA-256 of the DER certificate, lowercase hex
    not_after: datetime.datetime
    key: str  # "EC P-256", "RSA 2048"


def ensure_device_ca(tls_dir: Path) -> bool:
    """Create the device CA if it is missing; True if it was created."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    crt, key = tls_dir / CA_CERT, tls_dir / CA_KEY
    if crt.exists() and key.exists():
        return False
    if crt.exists() or key.exists():
        # Half a CA is a copy gone wrong: a new CA would orphan every issued certificate.
        raise RuntimeError(
            f"{tls_dir} has only one of {CA_CERT} and {CA_KEY}: copy both from the host that "
            "made the device CA"
        )
    run_checked(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(crt), "-days", str(CA_DAYS),
            "-subj", "/O=fieldhub/CN=fieldhub device CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )  # fmt: skip
    key.chmod(0o600)
    return True


def issue(tls_dir: Path, device_id: str) -> IssuedCertificate:
    """A new EC P-256 key and a certificate for `device_id`."""
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "device.key"
        csr = Path(tmp) / "device.csr"
        run_checked(
            [
                "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(csr),
                "-subj", f"/CN={device_id}",
            ]
        )  # fmt: skip
        issued = sign_csr(tls_dir, device_id, csr.read_text())
        return dataclasses.replace(issued, private_key=key.read_text())


def sign_csr(tls_dir: Path, device_id: str, csr_pem: str) -> IssuedCertificate:
    """Sign a device's own certificate request; CertificateRequestError says why not."""
    with tempfile.TemporaryDirectory() as tmp:
        csr = Path(tmp) / "device.csr"
        csr.write_text(csr_pem)
        verified = subprocess.run(
            ["openssl", "req", "-in", str(csr), "-noout", "-verify"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        # openssl 3.0 exits 0 after "verify failure": read what it says.
        if verified.returncode != 0 or "verify OK" not in verified.stdout + verified.stderr:
            raise CertificateRequestError("not a PEM certificate request with a valid signature")
        subject = _openssl(["req", "-in", str(csr), "-noout", "-subject", "-nameopt", "RFC2253"])
        text = _openssl(["req", "-in", str(csr), "-noout", "-text"])
        if subject is None or text is None:
            raise CertificateRequestError("the certificate request cannot be read")
        check_subject(subject.strip().removeprefix("subject="), device_id)
        key = check_key(text)
        ext = Path(tmp) / "ext.cnf"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=clientAuth\n"
        )
        crt = Path(tmp) / "device.crt"
        run_checked(
            [
                "openssl", "x509", "-req", "-in", str(csr),
                "-CA", str(tls_dir / CA_CERT), "-CAkey", str(tls_dir / CA_KEY),
                "-set_serial", "0x" + secrets.token_hex(16), "-days", str(DEVICE_DAYS),
                "-sha256", "-extfile", str(ext), "-out", str(crt),
            ]
        )  # fmt: skip
        facts = _openssl(
            ["x509", "-in", str(crt), "-noout", "-serial", "-enddate", "-fingerprint", "-sha256"]
        )
        assert facts is not None
        fields = dict(line.split("=", 1) for line in facts.strip().splitlines())
        return IssuedCertificate(
            certificate=crt.read_text(),
            private_key=None,
            ca=(tls_dir / CA_CERT).read_text(),
            serial=fields["serial"].lower().lstrip("0") or "0",
            fingerprint=fields["sha256 Fingerprint"].replace(":", "").lower(),
            not_after=datetime.datetime.strptime(
                fields["notAfter"], "%b %d %H:%M:%S %Y %Z"
            ).replace(tzinfo=datetime.UTC),
            key=key,
        )


def has_device_ca(tls_dir: Path) -> bool:
    return (tls_dir / CA_CERT).exists() and (tls_dir / CA_KEY).exists()


def render_crl(tls_dir: Path, entries: list[Revocation], *, hours: int = CRL_HOURS) -> str:
    """A CRL (PEM) of the device CA listing `entries`, valid for `hours`.

    The CRL number is the time in seconds, so CRLs made one after another (on any host with
    the CA) always count up."""
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index.txt"
        index.write_text("".join(index_line(e) for e in entries))
        crlnumber = Path(tmp) / "crlnumber"
        crlnumber.write_text(f"{int(time.time()):X}\n")
        config = Path(tmp) / "ca.cnf"
        config.write_text(
            _CRL_CONFIG.format(
                index=index,
                crlnumber=crlnumber,
                certificate=tls_dir / CA_CERT,
                private_key=tls_dir / CA_KEY,
            )
        )
        out = Path(tmp) / "crl.pem"
        run_checked(
            ["openssl", "ca", "-gencrl", "-config", str(config), "-crlhours", str(hours),
             "-out", str(out)]
        )  # fmt: skip
        return out.read_text()


def crl_next_update(tls_dir: Path, crl_pem: str) -> datetime.datetime | None:
    """The CRL's nextUpdate if it is a CRL the device CA signed, else None."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crl.pem"
        path.write_text(crl_pem)
        done = subprocess.run(
            ["openssl", "crl", "-in", str(path), "-CAfile", str(tls_dir / CA_CERT), "-noout",
             "-nextupdate"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    out = done.stdout
    # openssl 3.0 exits 0 after "verify failure" (a CRL of another CA): read what it says.
    if done.returncode != 0 or "verify OK" not in done.stderr or "nextUpdate=" not in out:
        return None
    stamp = out.strip().rsplit("nextUpdate=", 1)[1]
    return datetime.datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.UTC)


def crl_problem(tls_dir: Path, crl_pem: str, *, min_hours: int = CRL_RENEW_HOURS) -> str | None:
    """Why the broker must not be given this CRL, or None. A CRL the broker fails to load at
    SIGHUP turns revocation checking off, and an expired one refuses every device."""
    next_update = crl_next_update(tls_dir, crl_pem)
    if next_update is None:
        return "not a CRL signed by the device CA"
    left = next_update - datetime.datetime.now(datetime.UTC)
    if left < datetime.timedelta(hours=min_hours):
        return f"its nextUpdate ({next_update.isoformat()}) is less than {min_hours} h away"
    return None


def _openssl(args: list[str]) -> str | None:
    """openssl's stdout, or None when it fails (bad input, not a bug)."""
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None
