"""A Mosquitto broker rendered from `mosquitto.conf.template` beside this module, and the names
of the auth files the broker auth sync writes for it."""

from __future__ import annotations

import dataclasses
import os
import signal
import string
import subprocess
import time
from pathlib import Path

from fieldhub.broker.auth_files import acl_file_problems, password_file_problems
from fieldhub.core.device_ca import CA_CERT as DEVICE_CA_CERT
from fieldhub.core.device_ca import ensure_device_ca, render_crl
from fieldhub.core.procs import (
    chown,
    chown_tree,
    port_open,
    require_binary,
    wait_until,
)

TEMPLATE = Path(__file__).with_name("mosquitto.conf.template")
BROKER_USER = "mosquitto"  # Mosquitto drops to this user when started as root

# The auth files under auth/, written by the broker auth sync. Devices and service accounts
# have separate files so each listener admits only its own kind of client (docs/security.md).
DEVICE_PASSWORD_FILE = "passwords"  # noqa: S105 - a file name
DEVICE_ACL_FILE = "acl"
SERVICE_PASSWORD_FILE = "services.passwords"  # noqa: S105 - a file name
SERVICE_ACL_FILE = "services.acl"
# The session reaper's listener (a unix socket beside auth/): one account, no rules.
REAPER_PASSWORD_FILE = "reaper.passwords"  # noqa: S105 - a file name
REAPER_ACL_FILE = "reaper.acl"
AUTH_FILES = (
    DEVICE_PASSWORD_FILE,
    DEVICE_ACL_FILE,
    SERVICE_PASSWORD_FILE,
    SERVICE_ACL_FILE,
    REAPER_PASSWORD_FILE,
    REAPER_ACL_FILE,
)
PASSWORD_FILES = (DEVICE_PASSWORD_FILE, SERVICE_PASSWORD_FILE, REAPER_PASSWORD_FILE)
REAPER_SOCKET = "reaper.sock"


def reaper_socket(auth_dir: Path) -> Path:
    """The reaper listener's unix socket of the broker whose auth files are in `auth_dir`."""
    return auth_dir.parent / REAPER_SOCKET


# The device CA's revocation list, for the certificate listener; the auth sync renders it from
# the registry (with the entries it lists, so an unchanged registry re-makes no CRL).
DEVICE_CRL_FILE = "device.crl"
DEVICE_CRL_ENTRIES_FILE = "device.crl.entries"
# The entries whose devices' connections auth-sync has ended (after the broker took the CRL).
DEVICE_CRL_CUT_FILE = "device.crl.cut"

# Certificate devices (docs/devices.md, "Certificate devices"): a listener of their own, since
# one listener cannot take both passwords and certificates (Mosquitto 2.0.11, measured).
CERT_LISTENER = """
# Devices with a client certificate from fieldhub's device CA: the certificate's CN is the
# username (and so the client id), and the same pattern ACL as for password devices applies.
# The password file is never consulted here. The CRL is re-read on SIGHUP, for new
# connections only.
listener ${port} ${bind}
protocol mqtt
use_identity_as_username true
use_username_as_clientid true
require_certificate true
allow_anonymous false
acl_file ${acl_file}
cafile ${cafile}
crlfile ${crlfile}
certfile ${certfile}
keyfile ${keyfile}
tls_version tlsv1.2
"""


def auth_file_problems(name: str, text: str) -> list[str]:
    """What Mosquitto 2.0.11 would refuse in the auth file `name` holding `text`."""
    if name in PASSWORD_FILES:
        return password_file_problems(text)
    return acl_file_problems(text)


def auth_dir_problems(auth_dir: Path) -> str:
    """The auth files as they are on disk, checked before the broker is told to read them: a
    missing password file disconnects every client of its listener and a missing or broken
    ACL file turns ACL checking off (docs/security.md). Empty if all of them are good."""
    problems: dict[str, list[str]] = {}
    for name in AUTH_FILES:
        try:
            problems[name] = auth_file_problems(name, (auth_dir / name).read_text())
        except (OSError, UnicodeDecodeError) as exc:
            problems[name] = [f"cannot be read: {exc}"]
    return describe_problems(problems)


def describe_problems(problems: dict[str, list[str]], shown: int = 3) -> str:
    """'file: problem; problem (and N more)' for each file that has any."""
    parts = []
    for name, found in problems.items():
        if found:
            more = f" (and {len(found) - shown} more)" if len(found) > shown else ""
            parts.append(f"{name}: {'; '.join(found[:shown])}{more}")
    return " | ".join(parts)


@dataclasses.dataclass
class MosquittoBroker:
    base_dir: Path  # holds mosquitto.conf, auth/, data/
    tls_dir: Path
    mqtt_devices: int
    mqtt_devices_tls: int
    mqtt_services: int
    bind: str = "127.0.0.1"
    tls_bind: str = "0.0.0.0"  # noqa: S104 - devices in the field reach the TLS listener
    # The bridges' listener; a broker host binds it to its private address (default: bind).
    services_bind: str | None = None
    autosave_interval: int = 30
    connection_messages: bool = False
    # The certificate devices' TLS listener (0: none), on tls_bind.
    mqtt_devices_cert: int = 0

    @property
    def auth_dir(self) -> Path:
        return self.base_dir / "auth"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def conf_file(self) -> Path:
        return self.base_dir / "mosquitto.conf"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "mosquitto.pid"

    def render(self) -> None:
        """Write the config; create empty auth files so the broker can start before the sync."""
        for directory in (self.base_dir, self.auth_dir, self.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for name in AUTH_FILES:
            path = self.auth_dir / name
            if not path.exists():
                path.write_text("")
            path.chmod(0o600)
        values = {
            "device_password_file": str(self.auth_dir / DEVICE_PASSWORD_FILE),
            "device_acl_file": str(self.auth_dir / DEVICE_ACL_FILE),
            "service_password_file": str(self.auth_dir / SERVICE_PASSWORD_FILE),
            "service_acl_file": str(self.auth_dir / SERVICE_ACL_FILE),
            "reaper_password_file": str(self.auth_dir / REAPER_PASSWORD_FILE),
            "reaper_acl_file": str(self.auth_dir / REAPER_ACL_FILE),
            "reaper_socket": str(reaper_socket(self.auth_dir)),
            "data_dir": str(self.data_dir),
            "pid_file": str(self.pid_file),
            "tls_dir": str(self.tls_dir),
            "mqtt_devices": str(self.mqtt_devices),
            "mqtt_devices_tls": str(self.mqtt_devices_tls),
            "mqtt_services": str(self.mqtt_services),
            "devices_bind": self.bind,
            "devices_tls_bind": self.tls_bind,
            "services_bind": self.services_bind or self.bind,
            "autosave_interval": str(self.autosave_interval),
            "connection_messages": "true" if self.connection_messages else "false",
            "cert_listener": self._cert_listener(),
        }
        self.conf_file.write_text(string.Template(TEMPLATE.read_text()).substitute(values))
        # Mosquitto drops privileges before it re-reads the auth files on SIGHUP, so they
        # must belong to its user; the TLS key likewise.
        chown_tree(self.base_dir, BROKER_USER)
        for name in ("server.key", "server.crt", "ca.crt", DEVICE_CA_CERT):
            if (self.tls_dir / name).exists():
                chown(self.tls_dir / name, BROKER_USER)

    def _cert_listener(self) -> str:
        """The certificate listener's block, with the device CA and a CRL in place: the
        broker refuses to start without them. The first CRL lists nothing; the auth sync
        replaces it with the registry's at its first run."""
        if not self.mqtt_devices_cert:
            return ""
        ensure_device_ca(self.tls_dir)
        crl = self.auth_dir / DEVICE_CRL_FILE
        if not crl.exists():
            crl.write_text(render_crl(self.tls_dir, []))
        return string.Template(CERT_LISTENER).substitute(
            port=self.mqtt_devices_cert,
            bind=self.tls_bind,
            acl_file=self.auth_dir / DEVICE_ACL_FILE,
            cafile=self.tls_dir / DEVICE_CA_CERT,
            crlfile=crl,
            certfile=self.tls_dir / "server.crt",
            keyfile=self.tls_dir / "server.key",
        )

    def command(self) -> list[str]:
        return [require_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(self.conf_file)]

    def start(self, log_file: Path) -> subprocess.Popen[bytes]:
        """Start in the foreground of a child process (the caller supervises it)."""
        self.render()
        log = log_file.open("ab")
        proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_until(
            lambda: proc.poll() is not None or port_open(self.mqtt_services, self.bind),
            timeout=15,
            what="Mosquitto to listen",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited {proc.returncode}; see {log_file}")
        return proc

    def reload(self, timeout: float = 15.0) -> None:
        """SIGHUP: re-read all listeners' password and ACL files and re-check connected
        clients. Refuses files the broker would misread; waits (up to `timeout`) until the
        broker is far enough into its start to survive the signal."""
        problems = auth_dir_problems(self.auth_dir)
        if problems:
            raise RuntimeError(f"not reloading the broker: {problems}")
        found: list[BrokerProcess] = []

        def ready() -> bool:
            try:
                process = broker_process(self.pid_file)
            except BrokerNotRunning:
                return False
            found[:] = [process]
            return process.catches_sighup

        wait_until(ready, timeout=timeout, what=f"the broker of {self.pid_file} to take SIGHUP")
        send_reload(found[0])


class BrokerNotRunning(Exception):
    """No Mosquitto process behind the pid file; the message says why."""


@dataclasses.dataclass(frozen=True)
class BrokerProcess:
    """The running broker as /proc describes it."""

    pid: int
    started_at: float  # wall clock, to 10 ms
    # Mosquitto installs its SIGHUP handler last in its start (src/mosquitto.c: after writing
    # its pid file, loading mosquitto.db and the auth files, and opening its listeners); a
    # SIGHUP before that takes the default action and kills it.
    catches_sighup: bool


SIGHUP_MASK = 1 << (signal.SIGHUP - 1)


def broker_process(pid_file: Path) -> BrokerProcess:
    """The Mosquitto process named by `pid_file`, or BrokerNotRunning.

    A pid file can outlive its broker (kill -9) and its pid can be reused by anything else,
    which SIGHUP would kill: the process must be a mosquitto."""
    try:
        text = pid_file.read_text().strip()
    except OSError as exc:
        raise BrokerNotRunning(f"no pid file {pid_file} ({exc.strerror})") from None
    if not text.isdigit():
        raise BrokerNotRunning(f"{pid_file} does not hold a process id") from None
    pid = int(text)
    proc = Path("/proc") / str(pid)
    try:
        name = (proc / "comm").read_text().strip()
        stat = (proc / "stat").read_text()
        status = (proc / "status").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except FileNotFoundError:
        raise BrokerNotRunning(f"no process {pid} (stale pid file {pid_file})") from None
    except OSError as exc:
        raise BrokerNotRunning(f"cannot inspect process {pid}: {exc}") from None
    if name != "mosquitto":
        raise BrokerNotRunning(f"process {pid} of {pid_file} is {name!r}, not mosquitto")
    # Field 22 of /proc/PID/stat, counted after the parenthesised command name (field 2).
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    started_at = time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    caught = next(
        (line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0"
    )
    return BrokerProcess(pid, started_at, bool(int(caught, 16) & SIGHUP_MASK))


def send_reload(process: BrokerProcess) -> None:
    os.kill(process.pid, signal.SIGHUP)
