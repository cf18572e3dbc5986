"""The hosts harness itself: namespaces joined by a switch, processes on a host, killing a
host, its link down and up, a partition between groups, and a teardown that leaves nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldhub.bench import netlab
from fieldhub.bench.netlab import Host, Lab, LabError
from tests.support import NEEDS_NETNS, wait_for

pytestmark = NEEDS_NETNS


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip() for line in out.stdout.splitlines()}


def _connects(address: str, port: int) -> bool:
    netlab.require_lab_netns()
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as made:
        yield made


def _serve(lab: Lab, host: Host, tmp_path: Path) -> None:
    """A TCP server on the host's address, port 8000 (and a forked child that only sleeps)."""
    lab.start(
        host,
        "server",
        [sys.executable, "-m", "http.server", "8000", "--bind", host.address],
        env={},
        log_path=tmp_path / f"{host.name}.log",
    )
    lab.start(host, "forks", ["sh", "-c", "sleep 600 & sleep 600"], env={},
              log_path=tmp_path / f"{host.name}.log")  # fmt: skip


def test_hosts_reach_each_other_and_only_through_the_switch(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    assert a.address.startswith("198.18.")
    assert a.address != b.address
    _serve(lab, a, tmp_path)
    assert wait_for(lambda: lab.call(b, _connects, a.address, 8000), what="a's server from b")
    # The harness's own thread is in the root namespace: probing from there is refused, since
    # the root namespace's default route would make such a probe meaningless.
    with pytest.raises(LabError, match="inside a lab host"):
        _connects(a.address, 8000)
    # Each host sees only its loopback and its one link.
    links = lab.call(a, lambda: sorted(name for _, name in socket.if_nameindex()))
    assert links == ["eth0", "lo"]


def test_kill_host_leaves_no_process_of_it_and_others_run_on(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    _serve(lab, a, tmp_path)
    _serve(lab, b, tmp_path)
    for host in (a, b):

        def started(h: Host = host) -> bool:
            return len(lab.pids(h)) >= 4

        wait_for(started, what="a server, sh and its two sleeps")
    before_b = sorted(lab.pids(b))
    killed = lab.kill_host(a)
    assert killed >= 4  # the forked sleeps too, not only what the lab started
    assert lab.pids(a) == []
    assert lab.processes_of(a) == []
    assert sorted(lab.pids(b)) == before_b
    assert not lab.call(b, _connects, a.address, 8000)
    # The host itself is still there: its roles can start again.
    _serve(lab, a, tmp_path)
    assert wait_for(lambda: lab.call(b, _connects, a.address, 8000), what="a serving again")


def test_link_down_and_up_and_a_partition_between_groups(lab: Lab, tmp_path: Path) -> None:
    a, b, c, d = (lab.add_host(name) for name in "abcd")
    for host in (a, c):
        _serve(lab, host, tmp_path)
    wait_for(lambda: lab.call(b, _connects, a.address, 8000), what="a from b")
    wait_for(lambda: lab.call(d, _connects, c.address, 8000), what="c from d")

    lab.link_down(a)
    assert not lab.call(b, _connects, a.address, 8000)
    assert lab.call(d, _connects, c.address, 8000)
    lab.link_up(a)
    assert wait_for(lambda: lab.call(b, _connects, a.address, 8000), what="a back after link up")

    with lab.partitioned([a, b], [c, d]):
        assert lab.call(b, _connects, a.address, 8000)  # within a group: fine
        assert lab.call(d, _connects, c.address, 8000)
        assert not lab.call(b, _connects, c.address, 8000)  # across: cut
        assert not lab.call(d, _connects, a.address, 8000)
    assert wait_for(lambda: lab.call(d, _connects, a.address, 8000), what="a from d, healed")


def test_teardown_leaves_nothing_even_after_a_failure(tmp_path: Path) -> None:
    links = _root_links()
    seen: dict[str, object] = {}

    def failing_run() -> None:
        with Lab(tmp_path / "lab") as lab:
            for name in ("a", "b"):
                _serve(lab, lab.add_host(name), tmp_path)
            wait_for(lambda: all(len(lab.pids(h)) >= 4 for h in lab.hosts.values()),
                     what="processes on both hosts")  # fmt: skip
            seen["pids"] = [pid for host in lab.hosts.values() for pid in lab.pids(host)]
            seen["prefix"] = lab.prefix
            raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError, match="the run failed"):
        failing_run()
    pids = seen["pids"]
    assert isinstance(pids, list)
    assert netlab.lab_namespaces(str(seen["prefix"])) == []
    assert _root_links() == links  # no veth ever appeared in the machine's own namespace
    assert [pid for pid in pids if netlab.process_alive(pid)] == []


def test_a_killed_harness_namespaces_are_removed_by_the_next_lab(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the harness that "crashed"
    stale = f"{netlab.NAME_PREFIX}{dead.pid}-orphan"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    sleeper = subprocess.Popen(["nsenter", f"--net=/run/netns/{stale}", "sleep", "600"])
    try:
        wait_for(lambda: stale in netlab.lab_namespaces(), what="the stale namespace")
        with Lab(tmp_path / "lab"):
            assert stale not in netlab.lab_namespaces()
        assert sleeper.wait(10) == -signal.SIGKILL
    finally:
        if sleeper.poll() is None:
            os.kill(sleeper.pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, check=False)


def test_the_lab_refuses_addresses_outside_the_benchmark_range(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"outside 198\.18\.0\.0/15"):
        Lab(tmp_path / "lab", subnet="10.0.0.0/24")
    assert netlab.lab_namespaces(f"{netlab.NAME_PREFIX}{os.getpid()}-") == []
