"""The open-file limit (the hard limit when there is one, what is needed when there is none),
the ports servers in tests and benchmarks are started on, and the end of a log."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fieldhub.core import procs
from fieldhub.core.procs import ephemeral_ports, free_port, open_file_target, port_order

INFINITY = resource.RLIM_INFINITY


def test_the_soft_limit_rises_to_a_finite_hard_limit() -> None:
    assert open_file_target(1024, 524288, 10_064) == 524288
    assert open_file_target(1024, 4096, 10_064) == 4096


def test_with_no_hard_limit_the_soft_limit_rises_to_what_is_needed_not_to_infinity() -> None:
    # Linux refuses a soft NOFILE limit above fs.nr_open: asking for RLIM_INFINITY fails.
    assert open_file_target(1024, INFINITY, 10_064) == 10_064
    assert open_file_target(20_000, INFINITY, 10_064) == 20_000
    assert open_file_target(INFINITY, INFINITY, 10_064) == INFINITY


def test_a_process_with_a_low_soft_limit_gets_its_hard_limit() -> None:
    # In a child, so this test process keeps its own limit.
    script = (
        "import resource\n"
        "from fieldhub.core.procs import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "got = raise_open_file_limit(100)\n"
        "print(got, *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    got, soft, hard = (int(x) for x in out.stdout.split())
    _, parent_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == parent_hard
    assert got == soft == open_file_target(256, hard, 100)
    assert soft == (256 if hard == INFINITY else hard)


def test_ports_are_chosen_outside_the_ephemeral_range_from_a_place_of_each_process() -> None:
    ephemeral = range(32768, 61000)
    first, second = port_order(ephemeral, 1234), port_order(ephemeral, 1235)
    assert sorted(first) == list(range(10000, 32768))
    assert first[0] != second[0]
    # A range that leaves too little below it: the ports above it.
    assert sorted(port_order(range(11000, 50000), 7)) == list(range(50000, 65536))


def test_the_ephemeral_range_is_read_from_the_kernel_with_a_fallback(tmp_path: Path) -> None:
    setting = tmp_path / "ip_local_port_range"
    setting.write_text("40000\t50000\n")
    assert ephemeral_ports(setting) == range(40000, 50001)
    assert ephemeral_ports(tmp_path / "missing") == range(32768, 61000)


def test_a_free_port_is_bindable_never_ephemeral_and_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert not any(port in ephemeral_ports() for port in ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_a_server_listens_on_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        spare = free_port()
        monkeypatch.setattr(procs, "port_order", lambda ephemeral, pid: [taken, spare, spare + 1])
        assert free_port() == spare + 1  # taken is in use, spare was handed out already


def test_tail_is_the_last_lines_of_a_log_however_long(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {n}\n" for n in range(100_000)))
    assert procs.tail(log, 3) == "line 99997\nline 99998\nline 99999"
    assert procs.tail(tmp_path / "missing.log") == ""
