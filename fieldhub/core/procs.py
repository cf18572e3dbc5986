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


def free_port() -> int:
    """A TCP port that is free on loopback right now (tests start servers on these)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
