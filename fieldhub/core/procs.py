"""Small process helpers: root or not, file ownership, ports, polling, running a binary.

Shared by what starts servers: the local stack, a broker host's Mosquitto, TLS material, the
benchmarks and the tests."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def running_as_root() -> bool:
    return os.geteuid() == 0


def as_user(user: str, argv: Sequence[str]) -> list[str]:
    """Prefix argv so it runs as `user` when we are root (PostgreSQL refuses to run as root)."""
    if not running_as_root():
        return list(argv)
    return ["runuser", "-u", user, "--", *argv]


def chown_tree(path: Path, user: str) -> None:
    if not running_as_root():
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def chown(path: Path, user: str, group: str | None = None) -> None:
    """Give `path` to `user` and `group` (default: the user's own group), when we are root."""
    if running_as_root():
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
        os.chown(path, entry.pw_uid, gid)


def ephemeral_ports(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> range:
    """The ports the kernel picks from for outgoing connections and bind(0)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def port_order(ephemeral: range, pid: int) -> list[int]:
    """The ports free_port tries, in order: those below the ephemeral range (above it if that
    leaves too few), from a place of this process's own so that processes seldom try the same
    port at once, wrapping around."""
    pool = range(10000, ephemeral.start)
    if len(pool) < 2000:
        pool = range(ephemeral.stop, 65536)
    start = (pid * 7919) % len(pool)
    return [*pool[start:], *pool[:start]]


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that is free on loopback now and that this process has not handed out before
    (tests and benchmarks start servers on these).

    The port is released before the server binds it. A port bind(0) chose lies in the
    ephemeral range, where any outgoing connection may take it in between (a bridge once
    failed to bind its metrics port so); ports outside that range are taken only by servers."""
    for port in port_order(ephemeral_ports(), os.getpid()):
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port left outside the ephemeral range")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `condition` until it returns a true value and return that value; raise
    TimeoutError naming `what` if it never does (the tests' wait_for is this one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what or condition}")
        time.sleep(interval)


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log (read from its last 16 KB, so a long log costs nothing);
    empty if it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def require_binary(name: str, *candidates: str) -> str:
    for candidate in (*candidates, name):
        found = shutil.which(candidate)
        if found:
            return found
    raise FileNotFoundError(f"{name} not found: run scripts/setup first")


def run_checked(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output, which is what a person needs to see."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result  # type: ignore[no-any-return]


def open_file_target(soft: int, hard: int, needed: int) -> int:
    """The soft open-file limit to ask for: the hard limit, or `needed` when there is none.

    With no hard limit (RLIM_INFINITY) the soft limit cannot follow it: Linux refuses a
    NOFILE limit above fs.nr_open (EPERM), so ask for what is needed instead."""
    if soft == resource.RLIM_INFINITY:
        return soft
    if hard == resource.RLIM_INFINITY:
        return max(soft, needed)
    return max(soft, hard)


def raise_open_file_limit(needed: int) -> int:
    """Raise this process's open-file limit (children inherit it) and return the new one.

    A broker or simulator with 10,000 clients needs the descriptors; below `needed` a warning
    says how to raise the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = open_file_target(soft, hard, needed)
    if want != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want != resource.RLIM_INFINITY and want < needed:
        log.warning(
            "open-file limit %d is below the %d this process needs; raise it (ulimit -Hn)",
            want,
            needed,
        )
    return want
