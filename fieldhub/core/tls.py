"""TLS material for the device listener of the local stack.

`fieldhub tls ensure` (run by scripts/setup) creates a private CA and a server certificate
signed by it, once. Operators replace them by putting their own `ca.crt`, `server.crt` and
`server.key` in the TLS directory; existing files are never overwritten."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import tempfile
from pathlib import Path

from fieldhub.core.procs import run_checked

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest lifetime clients commonly accept for a server certificate


def ensure_tls(tls_dir: Path, hostnames: list[str] | None = None) -> bool:
    """Create CA and server certificate if missing; True if anything was created."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = tls_dir / "ca.key", tls_dir / "ca.crt"
    key, crt = tls_dir / "server.key", tls_dir / "server.crt"
    if crt.exists() and key.exists() and ca_crt.exists():
        return False
    names = hostnames or ["localhost", socket.gethostname()]
    if not ca_crt.exists():
        run_checked(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(ca_key),
                "-out",
                str(ca_crt),
                "-days",
                str(CA_DAYS),
                "-subj",
                "/O=fieldhub local stack/CN=fieldhub local CA",
            ]
        )
        ca_key.chmod(0o600)
    san = ",".join(
        [*(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names), "IP:127.0.0.1", "IP:::1"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        csr = Path(tmp) / "server.csr"
        ext = Path(tmp) / "ext.cnf"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
        run_checked(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(csr),
                "-subj",
                f"/CN={names[0]}",
            ]
        )
        run_checked(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca_crt),
                "-CAkey",
                str(ca_key),
                "-CAcreateserial",
                "-out",
                str(crt),
                "-days",
                str(SERVER_DAYS),
                "-extfile",
                str(ext),
            ]
        )
    key.chmod(0o600)
    return True


def _is_ip(name: str) -> bool:
    """A server reached by address (a broker at 10.0.0.5) needs an IP entry: TLS clients
    compare addresses only with IP entries of the certificate, never with DNS ones."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def fingerprint(crt: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(crt), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split("=", 1)[1]
