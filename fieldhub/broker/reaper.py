"""The session reaper: destroys a deleted device's stored broker session.

Mosquitto keeps a session (subscriptions, queued messages) by client id across all listeners,
and keeps it after the device's login is removed; a new device with the same id would get it
back with session_present=1 (measured, /work/research/mosquitto Q2/Q3). A login *as that client
id* with clean start and session expiry 0 on the broker's reaper listener (a unix socket,
mosquitto.conf.template) throws the old session away and leaves none behind; an online client
with that id is disconnected within milliseconds. The account, svc.session-reaper, lives only
in that listener's password file, with a secret the auth sync generates (ensure_reaper_files)
and an ACL file without rules: it can publish nothing and receive nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fieldhub.core.passwords import generate_secret, hash_secret, verify_secret

REAPER_ACCOUNT = "svc.session-reaper"
SECRET_FILE = "reaper.secret"  # noqa: S105 - a file name
REAPER_ACL = "# The session reaper may neither publish nor receive: no rules.\n"


class ReapFailed(Exception):
    """The reaper could not log in; the session is untouched (the next round retries)."""


def reaper_secret(auth_dir: Path) -> str:
    """The reaper account's secret, created on first use; only the auth sync reads it."""
    path = auth_dir / SECRET_FILE
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    secret = generate_secret()
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def reaper_password_file(auth_dir: Path, current: str) -> str:
    """The reaper listener's password file: `current` if it already admits the secret (a new
    hash would change the file and cost a reload), else a fresh line."""
    secret = reaper_secret(auth_dir)
    username, _, password_hash = current.strip().partition(":")
    if username == REAPER_ACCOUNT and password_hash and verify_secret(secret, password_hash):
        return current
    return f"{REAPER_ACCOUNT}:{hash_secret(secret)}\n"


def reap(socket_path: Path, secret: str, client_id: str, timeout: float = 5.0) -> None:
    """Log in as `client_id` with clean start and session expiry 0, then disconnect: the
    broker drops the stored session of that id (and kicks a client online with it)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        transport="unix",
    )
    client.username_pw_set(REAPER_ACCOUNT, secret)
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        outcome.append("" if not reason.is_failure else str(reason))
        answered.set()

    client.on_connect = on_connect
    try:
        # No Session Expiry Interval property: 0, so nothing stays behind after DISCONNECT.
        client.connect(str(socket_path), clean_start=True)
        client.loop_start()
        if not answered.wait(timeout):
            raise ReapFailed(f"no CONNACK on {socket_path} within {timeout} s")
        if outcome[0]:
            raise ReapFailed(f"the broker refused the reaper: {outcome[0]}")
        client.disconnect()
    except OSError as exc:
        raise ReapFailed(f"cannot reach the reaper listener {socket_path}: {exc}") from exc
    finally:
        client.loop_stop()


__all__ = ["REAPER_ACCOUNT", "REAPER_ACL", "ReapFailed", "reap", "reaper_password_file"]
