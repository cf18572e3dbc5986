"""What the local stack runs: a process spec for each server and fieldhub process, with the
ports, environment and readiness probe each one gets. Building them starts nothing."""

from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Callable

from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.core import endpoints
from fieldhub.core.config import Settings, bridge_metrics_port
from fieldhub.core.procs import port_open
from fieldhub.stack import cluster as cluster_mod
from fieldhub.stack.postgres import PG_USER, PostgresCluster, pg_bindir
from fieldhub.stack.probes import http_answers, postgres_accepts
from fieldhub.stack.supervisor import ProcessSpec


def fieldhub_argv(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "fieldhub", *args)


def postgres_spec(
    cluster: PostgresCluster,
    name: str = "postgres",
    ready: Callable[[], bool] | None = None,
) -> ProcessSpec:
    """A PostgreSQL server of the stack; ready when it accepts connections, unless `ready`
    says otherwise (a replica: once it has started streaming)."""
    return ProcessSpec(
        name=name,
        argv=(str(pg_bindir() / "postgres"), "-D", str(cluster.pgdata)),
        ready=ready or postgres_accepts(cluster),
        ready_timeout=60,
        user=PG_USER,
        # SIGINT is PostgreSQL's fast shutdown (what `pg_ctl stop -m fast` sends).
        stop_signal=signal.SIGINT,
        stop_timeout=60,
        cwd=cluster.pgdata,
    )


def mosquitto_spec(broker: MosquittoBroker, name: str = "mosquitto") -> ProcessSpec:
    return ProcessSpec(
        name=name,
        argv=tuple(broker.command()),
        ready=lambda: (
            port_open(broker.mqtt_services, broker.bind)
            and port_open(broker.mqtt_devices, broker.bind)
        ),
        ready_timeout=30,
    )


def service_specs(
    settings: Settings,
    *,
    demo: bool,
    cluster: bool = False,
    read_database_url: str | None = None,
) -> list[ProcessSpec]:
    """The fieldhub processes of the stack; cluster mode runs bridges and web servers twice
    (nginx, which fronts the web servers, is started by the caller once they answer).

    With several brokers there is one auth-sync per broker and one bridge process per
    (instance, broker) pair: a bridge instance is the group of its per-broker processes."""
    urls = endpoints.stack_urls(settings)
    specs = []
    brokers = settings.broker_names
    several = len(brokers) > 1
    # Children see the same broker list as this process, however it was decided (--cluster).
    broker_env = {"FIELDHUB_LOCAL_BROKERS": str(settings.local_brokers)}

    def add(
        name: str,
        argv: tuple[str, ...],
        probe: Callable[[], bool] | None = None,
        timeout: float = 0,
        env: dict[str, str] | None = None,
        metrics_url: str | None = None,
    ) -> None:
        specs.append(
            ProcessSpec(
                name=name,
                argv=argv,
                ready=probe,
                ready_timeout=timeout,
                essential=False,
                env={**broker_env, **(env or {})},
                metrics_url=metrics_url,
            )
        )

    for broker in brokers:
        if not several:
            add("auth-sync", fieldhub_argv("auth-sync"))
            continue
        add(
            f"auth-sync-{broker}",
            fieldhub_argv("auth-sync", "--broker", broker),
            env=local_broker_env(settings, broker),
        )
    # Each process is ready when its /readyz says so (503 until then).
    instances = bridge_instances(cluster)
    for n in range(1, instances + 1):
        for broker in brokers:
            port = bridge_metrics_port(settings, broker, n)
            name = "bridge" if instances == 1 and not several else f"bridge-{n}"
            argv = ["bridge", "--instance", str(n), "--metrics-port", str(port)]
            if several:
                name += f"-{broker}"
                argv += ["--broker", broker]
            add(
                name,
                fieldhub_argv(*argv),
                http_answers(f"http://127.0.0.1:{port}/readyz"),
                30,
                metrics_url=f"http://127.0.0.1:{port}/metrics",
            )
    worker_port = settings.ports.worker_metrics
    add(
        "worker",
        fieldhub_argv("worker", "--metrics-port", str(worker_port)),
        http_answers(f"http://127.0.0.1:{worker_port}/readyz"),
        30,
        metrics_url=f"http://127.0.0.1:{worker_port}/metrics",
    )
    web_env = {"READ_DATABASE_URL": read_database_url} if read_database_url else {}
    if cluster:
        # nginx reaches the instances over loopback and says who the client is.
        proxies = [str(n) for n in settings.trusted_proxies] + list(cluster_mod.NGINX_PEERS)
        for n, port in enumerate(cluster_mod.web_instance_ports(settings), start=1):
            metrics_port = settings.ports.web_metrics + n - 1
            add(
                f"web-{n}",
                fieldhub_argv(
                    "web", "--bind", f"127.0.0.1:{port}", "--metrics-port", str(metrics_port)
                ),
                http_answers(f"http://127.0.0.1:{port}/readyz"),
                60,
                {**web_env, "FIELDHUB_TRUSTED_PROXIES": ",".join(dict.fromkeys(proxies))},
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            )
    else:
        add(
            "web",
            fieldhub_argv("web"),
            http_answers(f"{urls['web_url']}readyz"),
            60,
            web_env,
            metrics_url=f"http://127.0.0.1:{settings.ports.web_metrics}/metrics",
        )
    if demo:
        from fieldhub.sim.demo import DEMO_DEVICES, DEMO_INTERVAL_S, DEMO_ORG

        specs.append(
            ProcessSpec(
                name="simulate",
                argv=fieldhub_argv(
                    "simulate",
                    "--devices",
                    str(DEMO_DEVICES),
                    "--interval",
                    str(DEMO_INTERVAL_S),
                    "--org",
                    DEMO_ORG,
                    "--prefix",
                    DEMO_ORG,
                ),
                # Each simulated device connects to the broker it is homed on.
                env=broker_env,
            )
        )
    return specs


def bridge_instances(cluster: bool) -> int:
    """How many bridge instances the stack runs (each has its own broker account)."""
    return cluster_mod.BRIDGES if cluster else 1


def local_broker_env(settings: Settings, broker: str) -> dict[str, str]:
    """Where auth-sync finds one local broker's files (broker-1 keeps the configured ones)."""
    if broker == settings.broker_names[0]:
        return {}
    directory = endpoints.local_broker_dir(settings, broker)
    return {
        "FIELDHUB_MOSQUITTO_DIR": str(directory),
        "FIELDHUB_MOSQUITTO_PID_FILE": str(directory / "mosquitto.pid"),
    }


def local_brokers(settings: Settings) -> list[tuple[str, MosquittoBroker]]:
    return [
        (
            name,
            MosquittoBroker(
                endpoints.local_broker_dir(settings, name),
                settings.tls_dir,
                endpoints.local_broker_ports(settings, name).devices,
                endpoints.local_broker_ports(settings, name).devices_tls,
                endpoints.local_broker_ports(settings, name).services,
                mqtt_devices_cert=endpoints.local_broker_ports(settings, name).devices_cert,
            ),
        )
        for name in settings.broker_names
    ]


def with_cluster_brokers(settings: Settings) -> Settings:
    """`--cluster` runs at least two local brokers (unless the brokers are configured)."""
    if settings.brokers or settings.mqtt_url or settings.local_brokers >= cluster_mod.BROKERS:
        return settings
    return dataclasses.replace(settings, local_brokers=cluster_mod.BROKERS)
