"""A Mosquitto broker rendered from `mosquitto.conf.template` beside this module, and the names
of the auth files the broker auth sync writes for it."""

from __future__ import annotations

import dataclasses
import os
import signal
import string
import subprocess
from pathlib import Path

from fieldhub.core.procs import (
    chown,
    chown_tree,
    port_open,
    require_binary,
    running_as_root,
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
AUTH_FILES = (DEVICE_PASSWORD_FILE, DEVICE_ACL_FILE, SERVICE_PASSWORD_FILE, SERVICE_ACL_FILE)


@dataclasses.dataclass
class MosquittoBroker:
    base_dir: Path  # holds mosquitto.conf, auth/, data/
    tls_dir: Path
    mqtt_devices: int
    mqtt_devices_tls: int
    mqtt_services: int
    bind: str = "127.0.0.1"
    tls_bind: str = "0.0.0.0"  # noqa: S104 - devices in the field reach the TLS listener
    autosave_interval: int = 30
    connection_messages: bool = False

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
            "data_dir": str(self.data_dir),
            "pid_file": str(self.pid_file),
            "tls_dir": str(self.tls_dir),
            "mqtt_devices": str(self.mqtt_devices),
            "mqtt_devices_tls": str(self.mqtt_devices_tls),
            "mqtt_services": str(self.mqtt_services),
            "devices_bind": self.bind,
            "devices_tls_bind": self.tls_bind,
            "services_bind": self.bind,
            "autosave_interval": str(self.autosave_interval),
            "connection_messages": "true" if self.connection_messages else "false",
        }
        self.conf_file.write_text(string.Template(TEMPLATE.read_text()).substitute(values))
        # Mosquitto drops privileges before it re-reads the auth files on SIGHUP, so they
        # must belong to its user; the TLS key likewise.
        chown_tree(self.base_dir, BROKER_USER)
        for name in ("server.key", "server.crt", "ca.crt"):
            if (self.tls_dir / name).exists():
                chown(self.tls_dir / name, BROKER_USER)

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

    def reload(self) -> None:
        """SIGHUP: re-read all listeners' password and ACL files and re-check connected
        clients."""
        pid = int(self.pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)


def owner_fix(path: Path) -> None:
    """Give a file the broker writes or reads to the broker's user (when we are root)."""
    if running_as_root():
        chown(path, BROKER_USER)
