"""`fieldhub bench hosts`, short: 30 devices on eleven namespace hosts, a bridge host and a web
host killed, every acknowledged reading stored once, and nothing of the lab left afterwards.

The same code as the benchmark, with a few devices and steps of seconds (about two minutes,
plus about 35 s to build and install the wheel when the sources changed)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fieldhub.bench import netlab
from tests.support import NEEDS_NETNS

pytestmark = NEEDS_NETNS
HOSTS = {"db", "broker-1", "broker-2", "bridge-1", "bridge-2", "web-1", "web-2", "nginx",
         "worker", "load", "ops"}  # fmt: skip


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.timeout(900)
def test_a_bridge_host_and_a_web_host_die_and_nothing_is_lost() -> None:
    # Not tmp_path: the postgres, mosquitto and www-data users must enter the hosts' dirs.
    workdir = Path(tempfile.mkdtemp(prefix="fieldhub-test-hosts-"))
    workdir.chmod(0o755)
    bench: subprocess.Popen[str] | None = None
    try:
        bench = subprocess.Popen(
            [
                sys.executable, "-m", "fieldhub", "bench", "hosts", "--json",
                "--devices", "30", "--interval", "1", "--steady", "4", "--down", "6",
                "--command-every", "1", "--workdir", str(workdir), "--keep",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        stdout, stderr = bench.communicate(timeout=840)
        lines = stdout.strip().splitlines()
        assert bench.returncode in (0, 1), f"exit {bench.returncode}:\n{stderr[-5000:]}"
        assert len(lines) == 1, "--json prints exactly one JSON object"
        result = json.loads(lines[0])

        hosts = {host["name"]: host for host in result["hosts"]}
        assert hosts.keys() >= HOSTS
        for host in hosts.values():
            assert ipaddress.ip_address(host["address"]) in netlab.BENCH_NETWORK
        assert hosts["bridge-2"]["roles"] == ["bridge@broker-1-2", "bridge@broker-2-2"]

        assert result["devices"] == 30
        assert result["published"] > 30 * 10
        assert result["lost"] == 0, result
        assert result["doubled"] == 0, result
        assert result["stored"] >= result["published"]
        assert result["user_errors"] == []

        steady, bridge, web, drain = result["steps"]
        assert steady["name"] == "steady"
        assert steady["commands"]["succeeded"] >= 1

        assert bridge["name"] == "bridge-host-killed"
        assert bridge["killed_processes"] >= 2
        # While bridge-1 was down its sessions kept their share of every broker's traffic,
        # waiting for it: bridge-2 stored only part of what was published meanwhile.
        assert 0 < bridge["while_down"]["stored_share"] < 0.85, bridge
        assert bridge["recovery_s"] is not None, "the queued half never drained"

        assert web["name"] == "web-host-killed"
        assert web["live_view_served_by"] == ["web-1"]
        assert web["live_reconnected_s"] is not None, "the live view never came back"
        assert web["live_readings_again_s"] is not None
        assert web["commands"]["succeeded"] >= 1, "no command got through after web-1 died"

        assert drain["settled_s"] is not None

        # Everything the lab made is gone: namespaces, and every process it started.
        assert netlab.lab_namespaces(f"{netlab.NAME_PREFIX}{bench.pid}-") == []
        assert _processes_mentioning(str(workdir)) == []
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
        shutil.rmtree(workdir, ignore_errors=True)
