"""Several hosts on one machine: Linux network namespaces joined by a switch.

A `Lab` (run as root) creates:
- a *switch*: a network namespace of its own holding one bridge device;
- per host, a network namespace whose only link, `eth0`, is one end of a veth pair; the other
  end is a port of the switch's bridge. Each host gets one address from 198.18.0.0/15, the
  range reserved for benchmarks (RFC 2544), and its own loopback.

Both ends of every veth are created directly inside their namespaces, so the machine's own
(root) namespace gets no interface, address or route, and nothing outside the lab's
namespaces and their loopbacks is ever addressed.

What it does to hosts, for failure scenarios:
- `start` runs a process inside a host (`nsenter --net`), with exactly the environment given
  (what systemd hands a unit: its EnvironmentFile plus a plain PATH), output to a log file;
- `kill_host` SIGKILLs every process whose network namespace is the host's, until none is
  left: the tracked ones and anything they forked (PostgreSQL backends, gunicorn workers);
  this is the host losing power, not a clean stop;
- `link_down` / `link_up` take the host's switch port down (the cable pulled) and up;
- `partition` moves the ports of each further group of hosts to a bridge of its own, so
  groups reach nothing of each other while staying connected within; `heal` undoes it;
- `call` runs a Python function in a thread that has entered a host's namespace, so the
  harness probes ports, HTTP endpoints and the database as that host would, without a
  process per probe (setns(2) with CLONE_NEWNET moves only the calling thread).

`close` (also on exceptions, and from `with Lab(...)`) stops every process, deletes the
namespaces (which destroys their veths) and checks that nothing is left; `leftovers()`
reports what a run left behind. Namespaces are named `fhlab<pid>-<host>`, so a later lab
removes those of a harness that was killed before it could clean up.

There is no netem here (and no ping): delays and losses are not simulated, links are up or
down."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import grp
import ipaddress
import logging
import multiprocessing.resource_tracker
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("fieldhub.bench.netlab")

BENCH_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "fhlab"
SWITCH = "switch"
BRIDGE = "br0"
CLONE_NEWNET = 0x40000000
# What a systemd unit's process gets besides its EnvironmentFile.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
STOP_TIMEOUT_S = 20.0

T = TypeVar("T")


class LabError(Exception):
    """The lab cannot be built or a host operation failed; the message says why."""


def unavailable() -> str | None:
    """Why this machine cannot run a lab (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root)"
    for binary in ("ip", "nsenter", "setpriv"):
        if shutil.which(binary) is None:
            return f"`{binary}` is not installed (iproute2 / util-linux)"
    probe = f"{NAME_PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    address: str
    netns: str  # the namespace's name under /run/netns
    port: str  # its veth end on the switch

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns


@dataclasses.dataclass
class LabProcess:
    host: Host
    name: str
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class Lab:
    def __init__(self, workdir: Path, subnet: str = "198.18.0.0/24") -> None:
        network = ipaddress.IPv4Network(subnet)
        if not network.subnet_of(BENCH_NETWORK):
            raise LabError(f"{subnet} is outside {BENCH_NETWORK}, the benchmark range")
        reason = unavailable()
        if reason:
            raise LabError(reason)
        # multiprocessing starts its resource tracker on first need, from whichever thread
        # needs it; from a `call` thread the tracker would live in that host's namespace and
        # die with the host (its replacement then fails on every name the first one knew).
        multiprocessing.resource_tracker.ensure_running()
        self.workdir = workdir
        self.network = network
        self.prefix = f"{NAME_PREFIX}{os.getpid()}"
        self.hosts: dict[str, Host] = {}
        self.processes: list[LabProcess] = []
        self._addresses = iter(list(network.hosts())[9:])  # .10 onwards
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._partition_bridges: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        remove_stale_namespaces()
        self.switch = f"{self.prefix}-{SWITCH}"
        try:
            self._ip("netns", "add", self.switch)
            self._ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
            self._ip("-n", self.switch, "link", "set", BRIDGE, "up")
            self._ip("-n", self.switch, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    # -- building ---------------------------------------------------------------------------
    def add_host(self, name: str) -> Host:
        if name in self.hosts:
            raise LabError(f"host {name} exists already")
        if not name.replace("-", "").isalnum():
            raise LabError(f"host names are letters, digits and -, not {name!r}")
        try:
            address = str(next(self._addresses))
        except StopIteration:
            raise LabError(f"{self.network} has no address left for {name}") from None
        host = Host(name, address, f"{self.prefix}-{name}", f"h{len(self.hosts):03d}")
        self.hosts[name] = host  # before it exists: close() then removes a half-built host
        self._ip("netns", "add", host.netns)
        self._ip(
            "link", "add", "eth0", "netns", host.netns, "type", "veth",
            "peer", "name", host.port, "netns", self.switch,
        )  # fmt: skip
        self._ip("-n", self.switch, "link", "set", host.port, "master", BRIDGE)
        self._ip("-n", self.switch, "link", "set", host.port, "up")
        self._ip("-n", host.netns, "link", "set", "lo", "up")
        prefixlen = self.network.prefixlen
        self._ip("-n", host.netns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0")
        self._ip("-n", host.netns, "link", "set", "eth0", "up")
        return host

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise LabError(f"no host {name!r} in this lab") from None

    # -- processes --------------------------------------------------------------------------
    def start(
        self,
        host: Host,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        user: str | None = None,
        group: str | None = None,
        cwd: Path | None = None,
    ) -> LabProcess:
        """Run `argv` inside `host` with exactly `env` (plus BASE_ENV's PATH and LANG), as
        `user` (and `group`) if given, output appended to `log_path`."""
        command = [*_enter(host, user, group), *argv]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} start {' '.join(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                command,
                env={**BASE_ENV, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the harness only
            )
        process = LabProcess(host, name, tuple(argv), popen, log_path, time.time())
        with self._lock:
            self.processes.append(process)
        return process

    def run(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        timeout: float,
        user: str | None = None,
        group: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a one-shot command inside `host` and return its output (raises on failure)."""
        result = subprocess.run(
            [*_enter(host, user, group), *argv],
            env={**BASE_ENV, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} on {host.name} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def processes_of(self, host: Host) -> list[LabProcess]:
        with self._lock:
            return [p for p in self.processes if p.host == host]

    def pids(self, host: Host) -> list[int]:
        """Every process whose network namespace is the host's (what `ip netns pids` lists)."""
        try:
            inode = host.netns_path.stat().st_ino
        except FileNotFoundError:
            return []
        return pids_in_netns({inode})

    def stop_process(self, process: LabProcess, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it had to be killed)."""
        if process.alive():
            with contextlib.suppress(ProcessLookupError):
                process.popen.send_signal(signal.SIGTERM)
        try:
            return process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s on %s ignored SIGTERM for %.0f s", process.name, process.host.name, timeout
            )
            process.popen.kill()
            process.popen.wait()
            return None

    def kill_host(self, host: Host) -> int:
        """SIGKILL every process of the host until none is left; how many were killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + 10
        while True:
            pids = self.pids(host)  # zombies have no namespace left: they are not listed
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            if time.monotonic() > deadline:
                raise LabError(f"processes of {host.name} survive SIGKILL: {pids}")
            time.sleep(0.02)
        for process in self.processes_of(host):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(5)  # reap what we started
        with self._lock:
            self.processes = [p for p in self.processes if p.host != host]
        return len(killed)

    # -- links ------------------------------------------------------------------------------
    def link_down(self, host: Host) -> None:
        """The host's cable pulled: its switch port goes down (the host sees no carrier)."""
        self._ip("-n", self.switch, "link", "set", host.port, "down")

    def link_up(self, host: Host) -> None:
        self._ip("-n", self.switch, "link", "set", host.port, "up")

    def partition(self, *groups: Iterable[Host]) -> None:
        """Cut the network between groups: the first group stays on the main bridge, each
        further group gets a bridge of its own. Hosts in no group stay with the first."""
        self.heal()
        for index, group in enumerate(groups[1:], start=1):
            bridge = f"br{index}"
            self._ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
            self._ip("-n", self.switch, "link", "set", bridge, "up")
            self._partition_bridges.append(bridge)
            for host in group:
                self._ip("-n", self.switch, "link", "set", host.port, "master", bridge)

    def heal(self) -> None:
        """Every port back on the main bridge; the partition's bridges go."""
        if not self._partition_bridges:
            return
        for host in self.hosts.values():
            self._ip("-n", self.switch, "link", "set", host.port, "master", BRIDGE)
        for bridge in self._partition_bridges:
            self._ip("-n", self.switch, "link", "del", bridge)
        self._partition_bridges = []

    @contextlib.contextmanager
    def partitioned(self, *groups: Iterable[Host]) -> Iterator[None]:
        """`with lab.partitioned(a, b): time.sleep(n)` cuts a from b for the block."""
        self.partition(*groups)
        try:
            yield
        finally:
            self.heal()

    # -- running code as a host ---------------------------------------------------------------
    def call(self, host: Host, fn: Callable[..., T], *args: object, timeout: float = 60) -> T:
        """fn(*args) in a thread inside the host's network namespace (one thread per host, so
        calls on one host run one at a time)."""
        with self._lock:
            executor = self._executors.get(host.name)
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix=f"netns-{host.name}",
                    initializer=enter_netns,
                    initargs=(host.netns_path,),
                )
                self._executors[host.name] = executor
        return executor.submit(fn, *args).result(timeout=timeout)

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), delete every namespace, and check that
        nothing is left. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            processes = list(reversed(self.processes))
            executors = list(self._executors.values())
            self._executors.clear()
        for executor in executors:
            executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.alive():
                with contextlib.suppress(ProcessLookupError):
                    process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(max(0.1, deadline - time.monotonic()))
        for host in self.hosts.values():
            with contextlib.suppress(LabError):
                self.kill_host(host)
        remove_namespaces([*(h.netns for h in self.hosts.values()), self.switch])
        left = self.leftovers()
        if left:
            raise LabError("the lab left behind: " + "; ".join(left))

    def leftovers(self) -> list[str]:
        """What this lab left on the machine: namespaces, and processes in them."""
        left = [f"namespace {name}" for name in lab_namespaces(self.prefix)]
        with self._lock:
            alive = [p for p in self.processes if p.alive()]
        left += [f"process {p.name} (pid {p.pid}) on {p.host.name}" for p in alive]
        return left

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _enter(host: Host, user: str | None, group: str | None) -> list[str]:
    """The prefix that runs a command in the host's network namespace, as user:group (the
    user's own group by default). setpriv, like systemd's User=, changes the ids and execs:
    no PAM session, no extra parent process (runuser would leave one per role)."""
    command = ["nsenter", f"--net={host.netns_path}", "--"]
    if user:
        ids = [f"--reuid={user}", f"--regid={group or _primary_group(user)}", "--init-groups"]
        command += ["setpriv", *ids, "--"]
    return command


def _primary_group(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


# -- namespaces and processes, machine-wide -------------------------------------------------------
def enter_netns(path: Path) -> None:
    """Move the calling thread (only it) into the network namespace at `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def require_lab_netns() -> None:
    """Refuse to run in the machine's own namespace. A probe of a lab address from there does
    not fail as one would hope: it follows the default route, and on a machine behind a
    transparent proxy (as this one is) the connection even succeeds."""
    if os.stat("/proc/thread-self/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
        raise LabError("this code must run inside a lab host (Lab.call), not in the root namespace")


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Processes whose network namespace has one of these inodes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino in inodes:
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, a zombie, or a kernel thread
    return found


def lab_namespaces(prefix: str = NAME_PREFIX) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def remove_namespaces(names: Iterable[str]) -> None:
    """Kill whatever runs in these namespaces, then delete them (their veths go with them)."""
    paths = [NETNS_DIR / name for name in names if (NETNS_DIR / name).exists()]
    inodes = {path.stat().st_ino for path in paths}
    for _ in range(100):
        pids = pids_in_netns(inodes)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    for path in paths:
        subprocess.run(["ip", "netns", "del", path.name], capture_output=True, check=False)


def remove_stale_namespaces() -> None:
    """Namespaces of labs whose harness process is gone (killed before it could clean up)."""
    stale = []
    for name in lab_namespaces():
        owner = name.removeprefix(NAME_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not process_alive(int(owner)):
            stale.append(name)
    if stale:
        log.warning("removing %d namespaces left by an earlier run: %s", len(stale), stale)
        remove_namespaces(stale)


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
