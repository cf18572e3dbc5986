"""A fieldhub process (`python -m fieldhub.cli ROLE ...`) as a child, for benchmarks and tests.

The benchmarks and the integration tests both start bridges and web servers against scratch
servers, wait until they are ready, read their /metrics, and stop them with SIGTERM (a bridge
flushes, commits and acknowledges on it). One harness does that for both: the tests import it
(tests/support.py, tests/web/helpers.py), the benchmarks use it directly. Readiness is what
each role says it is: a bridge's `fieldhub_bridge_ready 1` on its metrics port, a web
server's login page answering 200."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fieldhub.core.procs import wait_until

# A checkout's root, where `python -m fieldhub.cli` finds the package even when it is not
# installed; None for an installed package.
_CHECKOUT = Path(__file__).resolve().parents[2]
ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").exists() else None


class ChildExited(RuntimeError):
    """The child stopped while it was expected to run; the message ends with its log."""


def settled(
    count: Callable[[], int],
    *,
    still_s: float,
    enough: int | None = None,
    timeout: float | None = None,
    poll_s: float = 0.5,
) -> None:
    """Poll `count` until it reaches `enough`, or has not moved for `still_s`, or `timeout`
    has passed: how a benchmark waits for a backlog to be stored without knowing when the
    last reading arrives."""
    started = time.monotonic()
    last, still_since = -1, started
    while time.monotonic() - still_since < still_s:
        if timeout is not None and time.monotonic() - started >= timeout:
            return
        now = count()
        if enough is not None and now >= enough:
            return
        if now != last:
            last, still_since = now, time.monotonic()
        time.sleep(poll_s)


def scrape(url: str) -> dict[str, float]:
    """name{labels} -> value from a Prometheus /metrics endpoint (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own URL
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def http_status(url: str, timeout: float = 5.0) -> int | None:
    """The HTTP status `url` answers with (errors included), or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Child:
    """`python -m fieldhub.cli ROLE ARGS...` with `env` on top of this process's environment,
    stdout and stderr appended to `log_path`.

    start() launches it; wait_ready(condition) polls until the condition holds and fails at
    once, with the log, if the child exits meanwhile; stop() sends SIGTERM and returns the
    exit code, or None when it had to be killed after `timeout` seconds."""

    def __init__(
        self,
        role: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        metrics_port: int | None = None,
    ) -> None:
        self.role = role
        self.argv = [sys.executable, "-m", "fieldhub.cli", role, *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.log_path = log_path
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def check_running(self) -> None:
        """Raise ChildExited (with the log) if the child is no longer running."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ChildExited(f"{self.role} exited {self.proc.returncode}:\n{self.log()}")

    def wait_ready(
        self, condition: Callable[[], object], *, timeout: float, what: str = ""
    ) -> None:
        """Poll `condition()` until it holds (TimeoutError after `timeout` seconds)."""

        def ready() -> bool:
            self.check_running()
            return bool(condition())

        wait_until(ready, timeout=timeout, interval=0.1, what=what or f"{self.role} to be ready")

    def metrics(self) -> dict[str, float]:
        """name{labels} -> value from the child's /metrics (empty if it does not answer yet)."""
        assert self.metrics_port is not None, f"{self.role} was started without a metrics port"
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, and the exit code; None when it ignored SIGTERM and was killed."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
