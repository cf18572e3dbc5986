"""`fieldhub bench failover`: the database primary lost, and the bridge cut from the
database, under load (`--scenario all`, the default, runs both; `--json` prints
`{"scenarios": [{"name", "recovery_s", "acked", "stored", "lost", "doubled", ...}]}` as its
last line).

Load in both: the load generator of `fieldhub bench ingest` publishes QoS 1 telemetry for
`--devices` devices at `--rate` msg/s through a Mosquitto broker to one `fieldhub bridge`, each
message with its own (device, ts, seq), so every acknowledged message has exactly three rows to
find. acked: messages the broker acknowledged to the publishers (all of them: the publishers
wait for every PUBACK); stored: messages whose rows are in the database; lost = acked -
stored; doubled: rows stored more than once (the reading identity makes it 0 by construction;
counted anyway).

`database-primary`: four network-namespace hosts (fieldhub/bench/netlab.py): db1-db3 each run
an etcd member and a Patroni node (PostgreSQL + TimescaleDB, as postgres) with the production
settings (fieldhub/stack/patroni.py, deploy/patroni/); `app` runs the broker, the bridge, the
load and the commands, the bridge's DATABASE_URL naming the three hosts. After `--before`
seconds the primary's host dies: its link goes down and every process of it gets SIGKILL (no
RST reaches anyone). promoted_s: from the kill to a standby out of recovery (Patroni's part);
recovery_s: to the first rows committed on the promoted node (the bridge's part added);
rejoin_s: from the link coming back and the host's etcd and then Patroni being started again
(as systemd would) to the old primary streaming as a standby (pg_rewind, no manual step); null if
it did not within REJOIN_TIMEOUT_S, and then rejoin_log holds the end of its Patroni log.
`--throughput N` first measures the bridge's rate with synchronous and asynchronous
replication, alternated on one cluster on loopback (patronictl switches it from here).

`bridge-database-link`: two network-namespace hosts (fieldhub/bench/netlab.py), `db`
(PostgreSQL) and `app` (broker, bridge, load); db's link goes down for `--cut` seconds (no
RST: tcp_user_timeout and keepalives are what the bridge notices it by). recovery_s: from the
link coming back to the bridge's first commit (its fieldhub_bridge_rows_total grows);
drained_s: to the last row stored. `--keep` keeps the scratch directory with the bridge's,
broker's and PostgreSQL's logs; a bridge that exits meanwhile fails the run at once with its
exit status and the end of its log.

Commands in both (fieldhub/bench/command_load.py): `--command-devices` real device clients
answer commands that a sender on the app host queues twice a second throughout, retrying a
send that failed on a new connection as a web request would; commands_sent,
commands_succeeded, commands_failed, commands_lost and command_latency_max_s say whether
commands continued.

`broker`: broker-1's host lost on the eleven hosts of `fieldhub bench hosts`, with the user
sending commands through the API; fieldhub/bench/failover_broker.py says what it measures."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg

from fieldhub.bench import failover_broker
from fieldhub.bench.command_load import CommandLoad
from fieldhub.bench.harness import settled
from fieldhub.bench.ingest import (
    BENCH_ORG,
    VALUES_PER_MESSAGE,
    BridgeRunner,
    LoadGenerator,
    _prepare,
    progress,
)
from fieldhub.bench.netlab import Host, Lab
from fieldhub.bench.registry import Servers, scratch_servers
from fieldhub.core import db
from fieldhub.core.config import Settings
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.procs import free_port, tail, wait_until
from fieldhub.stack.patroni import Node, PatroniCluster
from fieldhub.stack.postgres import PG_USER, PostgresCluster, pg_bindir

DATABASE = "fieldhub"
# How long the old primary gets to stream again after its restart (measured: 4-27 s).
REJOIN_TIMEOUT_S = 300


def register(bench_subparsers: Any) -> None:
    parser = bench_subparsers.add_parser(
        "failover",
        help="lose the database primary's host, a broker host or the database link (root)",
    )
    parser.add_argument("--rate", type=int, default=2000, help="msg/s published")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=2, help="load generator processes")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=30.0, help="seconds of load after")
    parser.add_argument(
        "--scenario",
        choices=("all", "database-primary", "bridge-database-link", "broker"),
        default="all",
    )
    parser.add_argument("--cut", type=float, default=60.0, help="bridge-database-link: seconds")
    parser.add_argument(
        "--asynchronous", action="store_true", help="asynchronous replication (to compare)"
    )
    parser.add_argument(
        "--throughput",
        type=int,
        default=0,
        metavar="MESSAGES",
        help="first measure the bridge's rate with sync and async replication, 4 rounds",
    )
    parser.add_argument(
        "--command-devices",
        type=int,
        default=20,
        help="devices that answer commands, one command sent every 0.5 s to them in turn",
    )
    failover_broker.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch directory (the bridge's, broker's and PostgreSQL's logs; "
        "database-primary: etcd's and Patroni's) and print its path",
    )
    parser.set_defaults(handler=cmd_bench_failover)


def _rows(url: str) -> int:
    """Rows on the current primary (-1 while there is none)."""
    try:
        with db.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) AS n FROM readings").fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row["n"]) if row else -1


def _load_and_bridge(
    servers: Servers, args: argparse.Namespace
) -> tuple[LoadGenerator, BridgeRunner]:
    """The devices and accounts registered, the load generator, and one bridge started."""
    device_ids, bridge_password, loadgen_password = _prepare(
        servers, args.devices, args.publishers, 1
    )
    loadgen = LoadGenerator(
        servers.broker.mqtt_services, loadgen_password, device_ids, args.publishers
    )
    return loadgen, BridgeRunner(servers, bridge_password, instance=1)


def _accepts(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _reached(url: str, rows: int) -> bool:
    return _rows(url) >= rows


def _wait_for_bridge(
    bridge: BridgeRunner, url: str, condition: Callable[[], bool], *, timeout: float, what: str
) -> None:
    """wait_until(condition) that fails at once with BridgeGone (the exit status) if the bridge
    process ends meanwhile (nothing drains then: waiting out the timeout only hides why), and
    whose TimeoutError says how far it got; both end with the last lines of the bridge's log."""

    def stored() -> str:
        rows = _rows(url)
        return f"{rows:,} rows stored" if rows >= 0 else "the database does not answer"

    def holds() -> bool:
        code = bridge.child.proc.poll() if bridge.child.proc is not None else None
        if code is not None:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            raise BridgeGone(
                f"the bridge exited with {how} while waiting for {what} ({stored()}); last "
                f"lines of its log:\n{tail(bridge.child.log_path, 30)}"
            )
        return condition()

    try:
        wait_until(holds, timeout=timeout, interval=0.2, what=what)
    except TimeoutError as exc:
        raise TimeoutError(
            f"{exc} ({stored()}; the bridge is still running); last lines of its log:\n"
            f"{tail(bridge.child.log_path, 30)}"
        ) from None


class BridgeGone(RuntimeError):
    """The bridge process ended during a scenario; the message has its exit status and log."""


def _doubled(url: str) -> int:
    with db.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) - count(DISTINCT (device_key, time, seq, metric, unit)) AS n"
            " FROM readings"
        ).fetchone()
    return int(row["n"]) if row else 0


def run_throughput(
    servers: Servers, cluster: PatroniCluster, loadgen: LoadGenerator, messages: int
) -> dict[str, Any]:
    """The bridge's rate with synchronous and with asynchronous replication, alternated on the
    same live cluster (sync, async, sync, async) so both see the same machine."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for round_number, synchronous in enumerate((True, False, True, False)):
        cluster.set_synchronous(synchronous)
        before = _rows(servers.database_url)
        target = before + messages * VALUES_PER_MESSAGE
        # A base of its own per round: every message of every round is a new reading.
        base_ms = int(time.time() * 1000) - 10**9 + round_number * 10**7
        start, procs = loadgen.run(messages, base_ms=base_ms)
        started = time.monotonic()
        start.set()
        wait_until(
            functools.partial(_reached, servers.database_url, target),
            timeout=600,
            interval=0.2,
            what="the round's rows",
        )
        elapsed = time.monotonic() - started
        for proc in procs:
            proc.join(timeout=60)
        rates[synchronous].append(messages / elapsed)
        mode = "synchronous" if synchronous else "asynchronous"
        progress(f"  {mode}: {messages / elapsed:,.0f} msg/s")
    cluster.set_synchronous(True)
    sync, asynchronous = sorted(rates[True]), sorted(rates[False])
    return {
        "messages": messages,
        "synchronous_msgs_per_s": [round(r) for r in rates[True]],
        "asynchronous_msgs_per_s": [round(r) for r in rates[False]],
        "ratio": round((sum(sync) / len(sync)) / (sum(asynchronous) / len(asynchronous)), 3),
    }


def run_database_primary(
    servers: Servers,
    cluster: PatroniCluster,
    loadgen: LoadGenerator,
    args: argparse.Namespace,
    *,
    kill: Callable[[Node], float],
    restart: Callable[[Node], None],
    commands: CommandLoad | None = None,
    node_logs: Path | None = None,
) -> dict[str, Any]:
    """The primary lost under load (`kill` it, returning the time just before), then brought
    back (`restart`, as systemd's Restart=always would) until it streams as a standby. If it
    does not, the end of its Patroni log (`node_logs`/<node>.log) says what it did instead."""
    total = int(args.rate * (args.before + args.after))
    # Rows of earlier runs (--throughput) are not this scenario's.
    rows_before = _rows(servers.database_url)
    doubled_before = _doubled(servers.database_url)
    start, procs = loadgen.run(total, rate=args.rate, base_ms=int(time.time() * 1000) - 10**8)
    start.set()
    if commands is not None:
        commands.start()
    time.sleep(args.before)  # the load's steady state before the fault is the point
    primary = cluster.primary()
    if primary is None:
        raise RuntimeError("no primary before the kill")
    before = _rows(servers.database_url)
    progress(f"killing every process of {primary.name} ({before:,} rows stored so far)")
    killed_at = kill(primary)
    # Polled on the survivors only: a probe of the dead host would spend its connect timeout
    # there and blur both figures by seconds.
    promoted = wait_until(
        functools.partial(cluster.primary, besides=primary),
        timeout=120,
        interval=0.1,
        what="a standby promoted",
    )
    promoted_s = time.time() - killed_at
    assert promoted is not None  # wait_until returns a true value
    wait_until(
        lambda: _rows(cluster.node_url(promoted, DATABASE)) > before,
        timeout=120,
        interval=0.1,
        what="rows on the new primary",
    )
    recovery_s = time.time() - killed_at
    progress(
        f"  {promoted.name} promoted after {promoted_s:.1f} s; writes resumed after "
        f"{recovery_s:.1f} s"
    )
    for proc in procs:
        proc.join(timeout=args.after + 120)
    acked = loadgen.sent()
    expected_rows = rows_before + acked * VALUES_PER_MESSAGE
    progress(f"  {acked:,} messages acknowledged by the broker; waiting for the backlog")
    settled(lambda: _rows(servers.database_url), still_s=15, enough=expected_rows)
    rows = _rows(servers.database_url)
    doubled = _doubled(servers.database_url) - doubled_before
    stored = (rows - rows_before - doubled) // VALUES_PER_MESSAGE
    sent = commands.settle() if commands is not None else {}
    progress("restarting the old primary's Patroni")
    restarted_at = time.monotonic()
    restart(primary)
    # A rejoin that does not happen is reported (rejoin_s null), not raised: the figures of the
    # failover itself stand on their own, and the run says what it saw.
    rejoin_s: float | None
    rejoin: dict[str, Any] = {}
    try:
        wait_until(lambda: cluster.streaming(primary), timeout=REJOIN_TIMEOUT_S, interval=0.5)
        rejoin_s = round(time.monotonic() - restarted_at, 1)
        progress(f"  {primary.name} streams as a standby after {rejoin_s:.1f} s")
    except TimeoutError:
        rejoin_s = None
        progress(f"  {primary.name} did not stream as a standby within {REJOIN_TIMEOUT_S} s")
        if node_logs is not None:
            rejoin["rejoin_log"] = tail(node_logs / f"{primary.name}.log", 40).splitlines()
    return {
        "name": "database-primary",
        "recovery_s": round(recovery_s, 1),
        "acked": acked,
        "stored": stored,
        "lost": acked - stored,
        "doubled": doubled,
        "promoted_s": round(promoted_s, 1),
        "rejoin_s": rejoin_s,
        **rejoin,
        "rate": args.rate,
        "devices": args.devices,
        "synchronous": not args.asynchronous,
        **sent,
    }


def run_bridge_database_link(args: argparse.Namespace) -> dict[str, Any]:
    """The link between the bridge and the database cut for `--cut` seconds.

    Two hosts of a network-namespace lab (fieldhub/bench/netlab.py): `db` runs PostgreSQL,
    `app` runs the broker, the bridge and the load generator. Taking db's link down cuts
    exactly the bridge-database path, and without a RST: the bridge's in-flight COMMIT and its
    idle connections find out through tcp_user_timeout and keepalives (db.TCP_DEFAULTS)."""
    workdir = Path(tempfile.mkdtemp(prefix="fieldhub-bench-link-"))
    workdir.chmod(0o755)
    try:
        with Lab(workdir / "lab") as lab:
            db_host, app = lab.add_host("db"), lab.add_host("app")
            cluster = PostgresCluster(
                workdir / "pg",
                free_port(),
                workdir / "pg.password",
                host=db_host.address,
                hba_rules=(f"host all all {lab.network} scram-sha-256",),
            )
            cluster.init()
            lab.start(
                db_host,
                "postgres",
                [str(pg_bindir() / "postgres"), "-D", str(cluster.pgdata)],
                env={},
                log_path=workdir / "postgres.log",
                user=PG_USER,
            )
            wait_until(
                lambda: lab.call(app, _accepts, cluster.url("postgres")),
                timeout=60,
                interval=0.5,
                what="PostgreSQL on the db host",
            )
            lab.call(app, cluster.create_database, DATABASE)
            url = cluster.url(DATABASE)
            lab.call(app, apply_migrations, url, timeout=300)
            timeout = args.before + args.cut + args.after + 600
            return lab.call(app, _link_scenario, lab, db_host, url, args, workdir, timeout=timeout)
    finally:
        if getattr(args, "keep", False):
            progress(f"kept the scratch directory: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@dataclasses.dataclass
class AppSide:
    """What a namespace scenario runs on its app host besides the fault."""

    servers: Servers
    loadgen: LoadGenerator
    bridge: BridgeRunner
    commands: CommandLoad


@contextlib.contextmanager
def _app_side(prefix: str, url: str, args: argparse.Namespace, workdir: Path) -> Iterator[AppSide]:
    """A broker, the load generator, a ready bridge and the command devices against `url`;
    on the way out the commands and the bridge stop and the bridge's and the broker's logs are
    copied to `workdir` (--keep keeps it)."""
    with scratch_servers(prefix) as scratch:
        servers = Servers(url, scratch.broker, scratch.workdir)
        loadgen, bridge = _load_and_bridge(servers, args)
        commands: CommandLoad | None = None
        try:
            commands = CommandLoad(servers, BENCH_ORG, devices=args.command_devices)
            bridge.wait_ready()
            yield AppSide(servers, loadgen, bridge, commands)
        finally:
            if commands is not None:
                commands.close()
            bridge.stop()
            for log_path in (bridge.child.log_path, scratch.workdir / "mosquitto.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(log_path, workdir)


def _link_scenario(
    lab: Lab, db_host: Host, url: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """Runs inside the app host's network namespace (Lab.call): everything it starts does."""
    with _app_side("fieldhub-bench-link-", url, args, workdir) as app:
        loadgen, bridge, commands = app.loadgen, app.bridge, app.commands
        total = int(args.rate * (args.before + args.cut + args.after))
        start, procs = loadgen.run(total, rate=args.rate, base_ms=int(time.time() * 1000) - 10**8)
        start.set()
        commands.start()
        time.sleep(args.before)  # steady state before the cut is the point
        progress(f"cutting the database host's link for {args.cut:.0f} s")
        lab.link_down(db_host)
        time.sleep(args.cut)  # the outage's length is the scenario
        backlog = bridge.metric("fieldhub_bridge_backlog_messages")
        # The bridge's own count of committed rows: the database cannot be asked while
        # the link is down, and a commit that reached it just before the cut may have
        # landed without the bridge knowing.
        committed = bridge.metric("fieldhub_bridge_rows_total")
        lab.link_up(db_host)
        restored_at = time.monotonic()
        progress(f"  link up; the bridge holds {backlog:,.0f} messages unacknowledged")
        _wait_for_bridge(
            bridge,
            url,
            lambda: bridge.metric("fieldhub_bridge_rows_total") > committed,
            timeout=120,
            what="writes",
        )
        recovery_s = time.monotonic() - restored_at
        progress(f"  writes resumed {recovery_s:.1f} s after the link came back")
        for proc in procs:
            proc.join(timeout=args.after + 300)
        acked = loadgen.sent()
        expected = acked * VALUES_PER_MESSAGE
        _wait_for_bridge(
            bridge,
            url,
            functools.partial(_reached, url, expected),
            timeout=300,
            what=f"the backlog to drain ({expected:,} rows)",
        )
        drained_s = time.monotonic() - restored_at
        rows, doubled = _rows(url), _doubled(url)
        sent = commands.settle()
    stored = (rows - doubled) // VALUES_PER_MESSAGE
    progress(f"  everything stored {drained_s:.1f} s after the link came back")
    return {
        "name": "bridge-database-link",
        "layout": "2 network-namespace hosts",
        "recovery_s": round(recovery_s, 1),
        "drained_s": round(drained_s, 1),
        "cut_s": args.cut,
        "backlog_at_restore": round(backlog),
        "acked": acked,
        "stored": stored,
        "lost": acked - stored,
        "doubled": doubled,
        "rate": args.rate,
        "devices": args.devices,
        **sent,
    }


def run_throughput_on_patroni(args: argparse.Namespace) -> dict[str, Any]:
    """--throughput: the bridge's rate with synchronous and asynchronous replication, on a
    scratch Patroni cluster on loopback (a rate is not a failure: loopback serves, and
    patronictl switches the mode from here)."""
    progress("starting Mosquitto and a 3-node Patroni cluster (etcd, loopback) ...")
    base = Path(tempfile.mkdtemp(prefix="fieldhub-bench-failover-"))
    base.chmod(0o755)
    cluster = PatroniCluster(base / "patroni", synchronous=not args.asynchronous)
    try:
        cluster.start()
        url = cluster.create_database(DATABASE)
        apply_migrations(url)
        with scratch_servers("fieldhub-bench-failover-") as scratch:
            servers = Servers(url, scratch.broker, scratch.workdir)
            loadgen, bridge = _load_and_bridge(servers, args)
            try:
                bridge.wait_ready()
                progress(f"throughput: {args.throughput:,} messages per round")
                throughput = run_throughput(servers, cluster, loadgen, args.throughput)
            finally:
                bridge.stop()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"throughput through the bridge: synchronous {throughput['synchronous_msgs_per_s']}"
        f" msg/s, asynchronous {throughput['asynchronous_msgs_per_s']} msg/s, "
        f"ratio {throughput['ratio']}"
    )
    return throughput


def run_database_primary_on_hosts(args: argparse.Namespace) -> dict[str, Any]:
    """The database-primary scenario on four network-namespace hosts: db1-db3 each run an
    etcd member and a Patroni node (PostgreSQL + TimescaleDB) as postgres, `app` runs the
    broker, the bridge, the load and the command traffic. The bridge's DATABASE_URL names the
    three hosts (`_hosts_url`). The fault is a host's death: its link goes down (so not even a
    RST leaves it) and every process of it gets SIGKILL; the bridge finds out through
    tcp_user_timeout and keepalives. Afterwards the link comes back and the host's etcd and
    Patroni are started again, as systemd would at boot."""
    workdir = Path(tempfile.mkdtemp(prefix="fieldhub-bench-primary-"))
    workdir.chmod(0o755)  # postgres traverses into it
    try:
        with Lab(workdir / "lab") as lab:
            db_hosts = [lab.add_host(f"db{n}") for n in (1, 2, 3)]
            app = lab.add_host("app")
            cluster = PatroniCluster(
                workdir / "patroni",
                synchronous=not args.asynchronous,
                addresses=[host.address for host in db_hosts],
                network=str(lab.network),
            )
            hosts = {node.name: host for node, host in zip(cluster.nodes, db_hosts, strict=True)}
            cluster.write_configs()

            def start_etcd(node: Node) -> None:
                lab.start(
                    hosts[node.name], "etcd", cluster.etcd_argv(node),
                    env=cluster.process_env(), log_path=workdir / f"etcd-{node.name}.log",
                    user=PG_USER,
                )  # fmt: skip

            def start_patroni(node: Node) -> None:
                lab.start(
                    hosts[node.name], "patroni", cluster.patroni_argv(node),
                    env=cluster.process_env(), log_path=workdir / f"{node.name}.log",
                    user=PG_USER, cwd=cluster.base,
                )  # fmt: skip

            def kill(node: Node) -> float:
                killed_at = time.time()
                lab.link_down(hosts[node.name])  # first: a dead host sends nothing, no RST
                killed = lab.kill_host(hosts[node.name])
                progress(f"  {node.name}'s link is down and its {killed} processes are killed")
                return killed_at

            def restart(node: Node) -> None:
                """The host back as systemd brings it up: etcd, and Patroni once etcd is
                ready (Patroni reads its own member, which serves the state from before the
                host went down until it has caught up)."""
                lab.link_up(hosts[node.name])
                start_etcd(node)
                wait_until(
                    lambda: cluster.etcd_ready(node),
                    timeout=60, interval=0.1, what=f"etcd on {node.name}'s host",
                )  # fmt: skip
                start_patroni(node)

            progress("a four-host lab: db1-db3 (etcd + Patroni each), app (broker, bridge, load)")
            for node in cluster.nodes:
                start_etcd(node)
            start_patroni(cluster.nodes[0])
            wait_until(
                lambda: lab.call(app, cluster.primary) is not None,
                timeout=180, interval=0.5, what="a Patroni leader",
            )  # fmt: skip
            for node in cluster.nodes[1:]:
                start_patroni(node)
            wait_until(
                lambda: lab.call(app, cluster.healthy),
                timeout=300, interval=0.5, what="two streaming standbys",
            )  # fmt: skip
            lab.call(app, cluster.create_database, DATABASE)
            url = _hosts_url(cluster)
            lab.call(app, apply_migrations, url, timeout=300)
            timeout = args.before + args.after + 900
            scenario: dict[str, Any] = lab.call(
                app, _primary_scenario, cluster, url, args, kill, restart, workdir,
                timeout=timeout,
            )  # fmt: skip
    finally:
        if args.keep:
            progress(f"kept the scratch directory: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    scenario["layout"] = "4 network-namespace hosts: db1-db3 (etcd + Patroni each), app"
    return scenario


def _hosts_url(cluster: PatroniCluster) -> str:
    """The cluster's multi-host URL with what every fieldhub process adds spelled out:
    target_session_attrs=read-write and the TCP settings that notice a dead host
    (db.TCP_DEFAULTS)."""
    params = {"target_session_attrs": "read-write", **db.TCP_DEFAULTS}
    return f"{cluster.url(DATABASE)}?{urlencode(params)}"


def _primary_scenario(
    cluster: PatroniCluster,
    url: str,
    args: argparse.Namespace,
    kill: Callable[[Node], float],
    restart: Callable[[Node], None],
    workdir: Path,
) -> dict[str, Any]:
    """Runs inside the app host's network namespace (Lab.call): everything it starts does."""
    with _app_side("fieldhub-bench-primary-", url, args, workdir) as app:
        return run_database_primary(
            app.servers, cluster, app.loadgen, args, kill=kill, restart=restart,
            commands=app.commands, node_logs=workdir,
        )  # fmt: skip


def cmd_bench_failover(settings: Settings | None, args: argparse.Namespace) -> int:
    if args.command_devices < 1:
        raise ValueError("--command-devices must be at least 1: the commands need devices")
    scenarios: list[dict[str, Any]] = []
    if args.scenario in ("all", "database-primary"):
        throughput = run_throughput_on_patroni(args) if args.throughput else None
        primary = run_database_primary_on_hosts(args)
        if throughput is not None:
            primary["throughput"] = throughput
        print(
            f"database-primary (namespace hosts): writes resumed {primary['recovery_s']} s "
            f"after the kill; {primary['acked']:,} acknowledged, {primary['stored']:,} stored, "
            f"{primary['lost']} lost, {primary['doubled']} doubled; commands "
            f"{primary['commands_succeeded']}/{primary['commands_sent']} succeeded (longest "
            f"{primary['command_latency_max_s']} s); old primary streaming "
            f"{primary['rejoin_s']} s after its restart"
        )
        scenarios.append(primary)
    if args.scenario in ("all", "bridge-database-link"):
        progress("a two-host lab: db (PostgreSQL) and app (broker, bridge, load) ...")
        link = run_bridge_database_link(args)
        print(
            f"bridge-database-link (2 namespace hosts): {link['cut_s']:.0f} s cut; writes "
            f"resumed {link['recovery_s']} s after the link came back, backlog drained after "
            f"{link['drained_s']} s; {link['acked']:,} acknowledged, {link['stored']:,} "
            f"stored, {link['lost']} lost, {link['doubled']} doubled"
        )
        scenarios.append(link)
    if args.scenario in ("all", "broker"):
        scenarios.append(failover_broker.run_from_args(args))
    if args.json:
        print(json.dumps({"scenarios": scenarios}))
    return 0
