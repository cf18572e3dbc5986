"""A three-node Patroni cluster for failover tests: on loopback with a single-member etcd, or
one node per host address (a network-namespace lab's hosts) each with its etcd member.

The production layout (three hosts, three etcd members) is deploy/patroni/; this is the same
Patroni configuration, either on free loopback ports, so tests can kill the primary's processes
and watch fieldhub carry on, or with `addresses` on the production ports of three hosts whose
processes the caller starts (`etcd_argv`, `patroni_argv`, `process_env`) inside those hosts, so
a host's death is a dead host, not a killed process whose sockets get a RST.

The settings are the ones measured in docs/scaling.md ("Database failover"): strict
synchronous mode, ttl 10 / loop_wait 2 / retry_timeout 4, wal_retrieve_retry_interval 1s,
pg_rewind, fast basebackup, the etcd3 API. Authentication is `trust` from loopback (or the
lab's own network, which nothing outside the lab reaches): test clusters only.

Every process is started here and ended here by its pid (and a node's by its postmaster's pid
file), never by name."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psycopg

from fieldhub.core.procs import chown_tree, free_port, running_as_root, tail, wait_until
from fieldhub.stack.postgres import PG_USER, pg_bindir

SCOPE = "fieldhub"
# Patroni logs at INFO: what it decided each loop (follow, rewind, reinitialise) is what a
# failover that goes wrong is read from, and these logs live only as long as a run's directory.
_NODE_TEMPLATE = """\
scope: {scope}
name: {name}
log: {{level: INFO}}
restapi:
  listen: {address}:{rest_port}
  connect_address: {address}:{rest_port}
etcd3:
  hosts: {etcd_hosts}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: {sync}
    synchronous_mode_strict: {sync}
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      remove_data_directory_on_rewind_failure: true
      remove_data_directory_on_diverged_timelines: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 200
        shared_buffers: 64MB
        shared_preload_libraries: timescaledb
        timescaledb.telemetry_level: "off"
        wal_retrieve_retry_interval: 1s
  initdb:
    - encoding: UTF8
    - data-checksums
  pg_hba:
    - local all all trust
    - host replication replicator {network} trust
    - host all all {network} trust
postgresql:
  listen: {address}:{pg_port}
  connect_address: {address}:{pg_port}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  basebackup:
    - checkpoint: fast
  pgpass: {base}/pgpass-{name}
  authentication:
    replication: {{username: replicator, password: rep}}
    superuser: {{username: postgres, password: pg}}
    rewind: {{username: rewinder, password: rw}}
  parameters:
    unix_socket_directories: {base}/sock-{name}
    shared_preload_libraries: timescaledb
"""


# The production ports (deploy/patroni/), used when every node has a host of its own.
PG_PORT, REST_PORT, ETCD_PORT, ETCD_PEER_PORT = 5432, 8008, 2379, 2380


@dataclasses.dataclass
class Node:
    name: str
    pg_port: int
    rest_port: int
    config: Path
    data_dir: Path
    agent: subprocess.Popen[bytes] | None = None
    address: str = "127.0.0.1"


class PatroniCluster:
    """etcd + three Patroni nodes under `base`; `start()`, `stop()`, and the faults.

    With `addresses` (one per node, e.g. network-namespace hosts) each node listens on its
    address with the production ports, each host runs an etcd member of a three-member etcd,
    and `network` is what pg_hba trusts; the caller starts the processes inside the hosts
    (`write_configs`, `etcd_argv`, `patroni_argv`, `process_env`). Without, everything runs
    here on loopback with a single-member etcd (`start`)."""

    def __init__(
        self,
        base: Path,
        *,
        synchronous: bool = True,
        nodes: int = 3,
        addresses: Sequence[str] = (),
        network: str = "127.0.0.1/32",
    ) -> None:
        self.base = base
        self.synchronous = synchronous
        self.network = network
        self.etcd: subprocess.Popen[bytes] | None = None
        if addresses:
            self.etcd_port, self.etcd_peer_port = ETCD_PORT, ETCD_PEER_PORT
            self.nodes = [
                Node(
                    f"pg{n}",
                    PG_PORT,
                    REST_PORT,
                    base / f"pg{n}.yml",
                    base / f"pg{n}",
                    address=address,
                )
                for n, address in enumerate(addresses, start=1)
            ]
        else:
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
            self.nodes = [
                Node(f"pg{n}", free_port(), free_port(), base / f"pg{n}.yml", base / f"pg{n}")
                for n in range(1, nodes + 1)
            ]
        self.hosted = bool(addresses)
        self._logs: list[IO[bytes]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def write_configs(self) -> None:
        """Every node's Patroni YAML under `base`, owned by postgres."""
        self.base.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            (self.base / f"sock-{node.name}").mkdir(exist_ok=True)
            node.config.write_text(
                _NODE_TEMPLATE.format(
                    scope=SCOPE,
                    name=node.name,
                    address=node.address,
                    rest_port=node.rest_port,
                    etcd_hosts=",".join(self._etcd_members().values()),
                    sync="true" if self.synchronous else "false",
                    network=self.network,
                    pg_port=node.pg_port,
                    data_dir=node.data_dir,
                    bin_dir=pg_bindir(),
                    base=self.base,
                )
            )
        chown_tree(self.base, PG_USER)

    def _etcd_members(self) -> dict[str, str]:
        """etcd member name -> its client address: one per node host, or one on loopback."""
        if self.hosted:
            return {f"e{node.name}": f"{node.address}:{self.etcd_port}" for node in self.nodes}
        return {"e1": f"127.0.0.1:{self.etcd_port}"}

    def etcd_argv(self, node: Node | None = None) -> list[str]:
        """The command line of the etcd member on `node`'s host (None: the loopback one)."""
        name, address = (f"e{node.name}", node.address) if node else ("e1", "127.0.0.1")
        peers = ",".join(
            f"{member}=http://{client.rsplit(':', 1)[0]}:{self.etcd_peer_port}"
            for member, client in self._etcd_members().items()
        )
        return [
            "etcd",
            "--name",
            name,
            "--data-dir",
            str(self.base / f"etcd-{name}"),
            "--listen-client-urls",
            f"http://{address}:{self.etcd_port}",
            "--advertise-client-urls",
            f"http://{address}:{self.etcd_port}",
            "--listen-peer-urls",
            f"http://{address}:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls",
            f"http://{address}:{self.etcd_peer_port}",
            "--initial-cluster",
            peers,
            "--initial-cluster-token",
            f"{SCOPE}-etcd",
            "--initial-cluster-state",
            "new",  # ignored once the member has a data directory (a restart)
        ]

    def patroni_argv(self, node: Node) -> list[str]:
        return ["patroni", str(node.config)]

    def process_env(self) -> dict[str, str]:
        """Exactly what etcd and Patroni need: PostgreSQL's binaries first on the PATH."""
        return {
            "PATH": f"{pg_bindir()}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.base),
        }

    def start(self, timeout: float = 180.0) -> None:
        """Start the loopback cluster here (hosted clusters are started by the caller)."""
        if self.hosted:
            raise RuntimeError("a cluster on hosts is started inside the hosts, not here")
        self.write_configs()
        self.etcd = self._spawn(self.etcd_argv(), "etcd")
        self.start_node(self.nodes[0])
        wait_until(lambda: self.primary() is not None, timeout=timeout, what="a Patroni leader")
        for node in self.nodes[1:]:
            self.start_node(node)
        wait_until(self.healthy, timeout=timeout, interval=0.5, what="two streaming standbys")

    def start_node(self, node: Node) -> None:
        if self.hosted:
            raise RuntimeError(f"{node.name} runs on its host: start it there (patroni_argv)")
        node.agent = self._spawn(self.patroni_argv(node), node.name)

    def stop(self) -> None:
        """Kill everything this cluster started, by pid, and remove its files."""
        for node in self.nodes:
            self._kill(self.node_pids(node))
        if self.etcd is not None:
            self._kill({self.etcd.pid})
        for handle in self._logs:
            handle.close()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- state -------------------------------------------------------------------------------
    def url(self, dbname: str, *, reverse: bool = False) -> str:
        """All three nodes in one URL, the way fieldhub is configured against Patroni
        (`reverse`: the other way round, e.g. for a read URL that differs from the write
        URL)."""
        nodes = self.nodes[::-1] if reverse else self.nodes
        hosts = ",".join(f"{node.address}:{node.pg_port}" for node in nodes)
        return f"postgresql://postgres:pg@{hosts}/{dbname}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE on the leader; the database's URL naming every node."""
        leader = self.primary()
        if leader is None:
            raise RuntimeError("the Patroni cluster has no leader")
        with psycopg.connect(self.node_url(leader), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def node_url(self, node: Node, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:pg@{node.address}:{node.pg_port}/{dbname}"

    def query(self, node: Node, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]] | None:
        try:
            with psycopg.connect(self.node_url(node, dbname), connect_timeout=2) as conn:
                return conn.execute(sql.encode()).fetchall()
        except psycopg.Error:
            return None

    def primary(self, *, besides: Node | None = None) -> Node | None:
        """The node out of recovery; `besides` is not asked (a dead host would cost a
        connect timeout per call)."""
        for node in self.nodes:
            if besides is not None and node.name == besides.name:
                continue
            rows = self.query(node, "SELECT pg_is_in_recovery()")
            if rows and rows[0][0] is False:
                return node
        return None

    def etcd_ready(self, node: Node) -> bool:
        """The etcd member on the node's host answers /health, a quorum read: it has joined the
        cluster and caught up. Until then it serves Patroni's reads (serializable, so from its
        own copy) from before its host went down; systemd starts Patroni only after it (etcd's
        unit is Type=notify, Patroni's drop-in After=etcd.service)."""
        url = f"http://{node.address}:{self.etcd_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def streaming(self, node: Node) -> bool:
        """The node is a standby receiving WAL from the primary."""
        rows = self.query(
            node,
            "SELECT pg_is_in_recovery()"
            " AND (SELECT status FROM pg_stat_wal_receiver) = 'streaming'",
        )
        return bool(rows and rows[0][0])

    def healthy(self) -> bool:
        primary = self.primary()
        if primary is None:
            return False
        rows = self.query(primary, "SELECT sync_state FROM pg_stat_replication")
        states = [row[0] for row in rows or []]
        if len(states) != len(self.nodes) - 1:
            return False
        return "sync" in states if self.synchronous else True

    def set_synchronous(self, synchronous: bool, timeout: float = 60.0) -> None:
        """Switch the live cluster between synchronous (strict) and asynchronous replication,
        and wait until the primary reports it."""
        value = "true" if synchronous else "false"
        subprocess.run(
            [
                "patronictl",
                "-c",
                str(self.nodes[0].config),
                "edit-config",
                "--force",
                "-s",
                f"synchronous_mode={value}",
                "-s",
                f"synchronous_mode_strict={value}",
            ],
            check=True,
            capture_output=True,
            **self._owner(),
        )
        self.synchronous = synchronous

        def applied() -> bool:
            primary = self.primary()
            if primary is None:
                return False
            rows = self.query(primary, "SELECT current_setting('synchronous_standby_names')")
            names = rows[0][0] if rows else ""
            return bool(names) == synchronous and self.healthy()

        wait_until(applied, timeout=timeout, interval=0.5, what="the replication mode")

    def healthy_enough(self) -> bool:
        """A primary with a synchronous standby: commits go through (in strict mode they wait
        until one is attached), whether or not a third node is back."""
        primary = self.primary()
        if primary is None:
            return False
        rows = self.query(primary, "SELECT sync_state FROM pg_stat_replication")
        states = [row[0] for row in rows or []]
        return "sync" in states if self.synchronous else True

    def report(self, lines: int = 40) -> str:
        """The end of each node's Patroni log and of etcd's (the loopback cluster's): what a
        failover that went wrong is read from, before `stop` removes them."""
        names = [node.name for node in self.nodes] + (["etcd"] if self.etcd else [])
        return "\n".join(
            f"--- {name}.log\n{tail(self.base / f'{name}.log', lines)}" for name in names
        )

    # -- faults ------------------------------------------------------------------------------
    def node_pids(self, node: Node) -> set[int]:
        """The node's Patroni, its postmaster and every child of either."""
        roots: set[int] = set()
        if node.agent is not None and node.agent.poll() is None:
            roots.add(node.agent.pid)
        pid_file = node.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            roots.add(int(pid_file.read_text().splitlines()[0]))
        return roots | _descendants(roots)

    def kill_node(self, node: Node) -> float:
        """SIGKILL every process of the node at once (a host's death, minus the network);
        the time just before the kill."""
        pids = self.node_pids(node)
        killed_at = time.time()
        self._kill(pids)
        if node.agent is not None:
            node.agent.wait(timeout=10)
        return killed_at

    # -- helpers -----------------------------------------------------------------------------
    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (self.base / f"{name}.log").open("ab")
        self._logs.append(log)
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(self.base),
            start_new_session=True,
            # Exactly what they need: PostgreSQL's binaries first on the PATH.
            env=self.process_env(),
            **self._owner(),
        )

    @staticmethod
    def _owner() -> dict[str, Any]:
        """Run as postgres when we are root (PostgreSQL refuses root)."""
        return {"user": PG_USER, "group": PG_USER} if running_as_root() else {}

    @staticmethod
    def _kill(pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=10, what="the kill")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
