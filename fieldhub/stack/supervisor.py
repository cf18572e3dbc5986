"""Process supervision for `fieldhub up`: a list of process specs, each kept running.

The stack is a list of `ProcessSpec`s started in order; each child gets its own session (so a
Ctrl-C in the terminal reaches only the supervisor, which then stops the children in reverse
order) and its own log file under home/log/. A child that dies is restarted with exponential
backoff, and the restart is logged with its exit code. The supervisor keeps a state file
(home/run/stack.json) with every pid, which `fieldhub status` and `fieldhub down` read; pids are
stored with their kernel start time so a recycled pid is never mistaken for one of ours.

Cluster mode is the same supervisor with more specs (several brokers, bridges, web servers).

Log files are rotated by size: every LOG_CHECK_S the supervisor copies each *.log under the
log folder that outgrew LOG_MAX_BYTES to NAME.log.1 (shifting older copies up to
NAME.log.LOG_KEEP, dropping the oldest) and truncates it. The children keep writing to the
file they opened; they opened it for appending, so after the truncation their next line lands
at the new end (logrotate's copytruncate: lines written between the copy and the truncation,
a few milliseconds, are lost, which beats restarting every process to reopen its log)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fieldhub.core.procs import tail

log = logging.getLogger("fieldhub.supervisor")

STATE_VERSION = 1
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 3
LOG_CHECK_S = 10.0


class StartupError(RuntimeError):
    """A process could not be brought up; the message says which and where its log is."""


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    # Polled after each start until true; None means "started" is enough.
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 60.0
    # A process whose readiness check is not essential (e.g. metrics of a bridge still being
    # built) only gets a warning when the check times out; an essential one fails `up`.
    essential: bool = True
    user: str | None = None  # run as this system user (only when we are root)
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 20.0
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cwd: Path | None = None
    # Where Prometheus scrapes it (its /healthz and /readyz are beside), for `fieldhub status`.
    metrics_url: str | None = None


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    # A process that ran this long before dying starts again from `initial`.
    stable_after: float = 30.0

    def delay(self, consecutive_failures: int) -> float:
        return float(min(self.maximum, self.initial * 2 ** max(0, consecutive_failures - 1)))


@dataclasses.dataclass
class _Child:
    spec: ProcessSpec
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # monotonic
    started_wall: float = 0.0
    pid_start_time: int | None = None
    restarts: int = 0
    consecutive_failures: int = 0
    last_exit: int | None = None
    restart_at: float | None = None  # monotonic time of the next start, while backing off
    state: str = "starting"


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone.

    Together with the pid it identifies one process for good: pids are recycled, start times
    of a recycled pid differ."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def same_process_alive(pid: int | None, start_time: int | None) -> bool:
    if not pid:
        return False
    current = process_start_time(pid)
    if current is None:
        return False
    if _is_zombie(pid):
        return False
    return start_time is None or current == start_time


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] == "Z"


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


class Supervisor:
    """Starts specs in order, restarts the ones that die, stops them all in reverse order."""

    def __init__(
        self,
        *,
        log_dir: Path,
        state_file: Path,
        info: Mapping[str, Any] | None = None,
        backoff: Backoff | None = None,
        base_env: Mapping[str, str] | None = None,
        poll_interval: float = 0.2,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_keep: int = LOG_KEEP,
        log_check_s: float = LOG_CHECK_S,
    ) -> None:
        self.log_dir = log_dir
        self.state_file = state_file
        self.info: dict[str, Any] = dict(info or {})
        self.backoff = backoff or Backoff()
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.poll_interval = poll_interval
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.log_check_s = log_check_s
        self._logs_checked = 0.0
        self.phase = "starting"
        self._children: dict[str, _Child] = {}
        self._order: list[str] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self._monitor: threading.Thread | None = None
        self.started_wall = time.time()
        log_dir.mkdir(parents=True, exist_ok=True)

    # -- starting ---------------------------------------------------------------------------
    def start(self, spec: ProcessSpec) -> None:
        """Start one process and wait until it is ready (or raise StartupError)."""
        if spec.name in self._children:
            raise ValueError(f"process {spec.name!r} is already supervised")
        child = _Child(spec, self.log_dir / f"{spec.name}.log")
        with self._lock:
            self._children[spec.name] = child
            self._order.append(spec.name)
            self._spawn(child)
        self._ensure_monitor()
        self._wait_ready(child)

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {**self.base_env, "PYTHONUNBUFFERED": "1", **spec.env}
        kwargs: dict[str, Any] = {}
        if spec.user is not None and os.geteuid() == 0:
            kwargs.update(user=spec.user, group=spec.user, extra_groups=[])
        with child.log_file.open("ab") as log_handle:
            log_handle.write(
                f"--- fieldhub supervisor: starting {spec.name} at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode()
            )
            log_handle.flush()
            child.proc = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=spec.cwd,
                **kwargs,
            )
        child.started_at = time.monotonic()
        child.started_wall = time.time()
        child.pid_start_time = process_start_time(child.proc.pid)
        child.restart_at = None
        child.state = "running"
        log.info("started %s (pid %d), log %s", spec.name, child.proc.pid, child.log_file)
        self.write_state()

    def _wait_ready(self, child: _Child) -> None:
        spec = child.spec
        if spec.ready is None:
            return
        deadline = time.monotonic() + spec.ready_timeout
        while True:
            with self._lock:
                restarts = child.restarts
            if restarts >= 3:
                message = (
                    f"{spec.name} keeps exiting (last exit code {child.last_exit}); "
                    f"see {child.log_file}"
                )
                if spec.essential:
                    raise StartupError(message + ":\n" + tail(child.log_file))
                log.warning("%s (continuing: it is restarted with backoff)", message)
                return
            try:
                if child.state == "running" and spec.ready():
                    return
            except Exception as exc:  # a readiness probe failing is "not ready yet"
                log.debug("readiness check of %s: %s", spec.name, exc)
            if time.monotonic() > deadline:
                message = (
                    f"{spec.name} was not ready after {spec.ready_timeout:.0f} s; "
                    f"see {child.log_file}"
                )
                if spec.essential:
                    raise StartupError(message + ":\n" + tail(child.log_file))
                log.warning("%s (continuing: it is not essential to start)", message)
                return
            if self._stop_requested.wait(0.1):
                raise StartupError(f"stopped while waiting for {spec.name}")

    # -- supervision ------------------------------------------------------------------------
    def _ensure_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(
                target=self._monitor_loop, name="supervisor", daemon=True
            )
            self._monitor.start()

    def _monitor_loop(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            with self._lock:
                for name in list(self._order):
                    if self._stopping.is_set():
                        break
                    self._check(self._children[name])
            if time.monotonic() - self._logs_checked >= self.log_check_s:
                self._logs_checked = time.monotonic()
                for path in sorted(self.log_dir.glob("*.log")):
                    try:
                        if rotate_if_large(path, self.log_max_bytes, self.log_keep):
                            log.info("rotated %s", path)
                    except OSError as exc:
                        log.warning("could not rotate %s: %s", path, exc)

    def _check(self, child: _Child) -> None:
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                try:
                    self._spawn(child)
                except OSError as exc:
                    child.consecutive_failures += 1
                    child.restart_at = now + self.backoff.delay(child.consecutive_failures)
                    log.error("could not restart %s: %s", child.spec.name, exc)
            return
        if child.proc is None or child.proc.poll() is None:
            return
        code = child.proc.returncode
        ran_for = now - child.started_at
        # Children of the dead one (gunicorn workers, PostgreSQL backends) would hold its
        # ports or shared memory and keep the restart from working.
        kill_group(child.proc.pid)
        if ran_for >= self.backoff.stable_after:
            child.consecutive_failures = 0
        child.consecutive_failures += 1
        child.restarts += 1
        child.last_exit = code
        delay = self.backoff.delay(child.consecutive_failures)
        child.restart_at = now + delay
        child.state = "backoff"
        log.warning(
            "%s (pid %d) exited with code %s after %.1f s; restarting in %.1f s (restart #%d)",
            child.spec.name,
            child.proc.pid,
            describe_exit(code),
            ran_for,
            delay,
            child.restarts,
        )
        self.write_state()

    # -- stopping ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Safe from a signal handler: make a start that waits for readiness give up."""
        self._stop_requested.set()

    def stop_all(self) -> None:
        """Stop every process, last started first; SIGKILL what ignores its stop signal."""
        self._stopping.set()
        self.phase = "stopping"
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        with self._lock:
            for name in reversed(self._order):
                child = self._children[name]
                child.restart_at = None
                if child.proc is not None:
                    stop_process(child.proc, child.spec.stop_signal, child.spec.stop_timeout)
                    log.info("stopped %s (exit %s)", name, describe_exit(child.proc.returncode))
                child.state = "stopped"
        self.phase = "stopped"
        self.write_state()

    # -- state ------------------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.write_state()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            processes = {}
            for name in self._order:
                child = self._children[name]
                processes[name] = {
                    "pid": child.proc.pid if child.proc else None,
                    "pid_start_time": child.pid_start_time,
                    "state": child.state,
                    "restarts": child.restarts,
                    "last_exit": child.last_exit,
                    "started_at": child.started_wall,
                    "log": str(child.log_file),
                    "argv": list(child.spec.argv),
                    "metrics_url": child.spec.metrics_url,
                    "stop_signal": int(child.spec.stop_signal),
                }
            return {
                "version": STATE_VERSION,
                "supervisor_pid": os.getpid(),
                "supervisor_start_time": process_start_time(os.getpid()),
                "started_at": self.started_wall,
                "phase": self.phase,
                "order": list(self._order),
                "processes": processes,
                **self.info,
            }

    def write_state(self) -> None:
        with self._lock:
            write_json_atomically(self.state_file, self.snapshot())

    def children(self) -> Iterator[tuple[str, int | None]]:
        with self._lock:
            for name in self._order:
                proc = self._children[name].proc
                yield name, proc.pid if proc else None


def stop_process(proc: subprocess.Popen[bytes], stop_signal: int, timeout: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(stop_signal)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "pid %d ignored signal %d for %.0f s; killing it", proc.pid, stop_signal, timeout
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
    kill_group(proc.pid)


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a child's process group (its session leader is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_recorded(pid: int, start_time: int | None, stop_signal: int, timeout: float) -> bool:
    """Stop a process that is not our child (found in a state file); True if it was running."""
    if not same_process_alive(pid, start_time):
        _kill_orphaned_group(pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    deadline = time.monotonic() + timeout
    while same_process_alive(pid, start_time) and time.monotonic() < deadline:
        time.sleep(0.05)
    if same_process_alive(pid, start_time):
        log.warning("pid %d ignored signal %d for %.0f s; killing it", pid, stop_signal, timeout)
        kill_group(pid)
    _kill_orphaned_group(pid)
    return True


def _kill_orphaned_group(pgid: int) -> None:
    # Linux never hands out a pid that is still some process group's id, so a group with
    # this id whose leader is gone is the remains of our child, not a stranger's.
    if process_start_time(pgid) is None:
        kill_group(pgid)


def rotate_if_large(path: Path, max_bytes: int, keep: int) -> bool:
    """Copy-and-truncate `path` once it holds `max_bytes`, keeping `keep` old copies."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def describe_exit(code: int | None) -> str:
    if code is None:
        return "none"
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)
