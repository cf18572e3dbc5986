"""Session-wide real servers for integration tests.

One PostgreSQL+TimescaleDB cluster and one Mosquitto broker per test session, each on free
loopback ports and started by the same code as `fieldhub up`. Every test gets a fresh database
cloned from a migrated template (fast: a file copy, not a re-migration)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.core.migrate import apply_migrations
from fieldhub.core.procs import free_port, wait_until
from fieldhub.stack.postgres import PostgresCluster
from tests.support import TestStack, loopback_broker

TEMPLATE_DB = "fieldhub_template"


def _scratch_dir(prefix: str) -> Path:
    # Not tmp_path: pytest's base temp dir is private to root, and the postgres/mosquitto
    # system users need to traverse into their data directories.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    base = _scratch_dir("fieldhub-test-pg-")
    cluster = PostgresCluster(base / "cluster", free_port(), base / "password", fast_unsafe=True)
    cluster.init()
    cluster.start()
    try:
        cluster.create_database(TEMPLATE_DB)
        apply_migrations(cluster.url(TEMPLATE_DB))
        _close_template(cluster)
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


def _close_template(cluster: PostgresCluster) -> None:
    """CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template, and
    TimescaleDB's background scheduler connects to every database that has the extension.
    Forbid new connections and end the existing ones; clones still accept connections."""
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{TEMPLATE_DB}" WITH ALLOW_CONNECTIONS false'.encode())
        wait_until(
            lambda: (
                not conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s",
                    (TEMPLATE_DB,),
                ).fetchone()[0]  # type: ignore[index]
            ),
            timeout=10,
            what="the template database to have no connections",
        )


@pytest.fixture
def database_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"'.encode())
    yield pg_cluster.url(name)
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


class SessionBroker:
    """The session's Mosquitto and its process, restarted if it died.

    Mosquitto 2.0.11 has crashed here (a segfault in session expiry handling, seen a handful
    of times over hundreds of bridge restarts); one crash must fail only the test it happened
    in, not every test after it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.broker = loopback_broker(base, autosave_interval=5)
        self.log_file = base / "mosquitto.log"
        self.proc = self.broker.start(self.log_file)

    def ensure_running(self) -> None:
        if self.proc.poll() is None:
            return
        print(
            f"\n[conftest] mosquitto exited with {self.proc.returncode}; restarting it "
            f"(log: {self.log_file})",
            file=sys.stderr,
        )
        self.proc = self.broker.start(self.log_file)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        """A fresh process: what earlier tests left in its memory (see the class docstring)
        goes with it."""
        self.stop()
        self.proc = self.broker.start(self.log_file)


@pytest.fixture(scope="session")
def session_broker() -> Iterator[SessionBroker]:
    base = _scratch_dir("fieldhub-test-mqtt-")
    running = SessionBroker(base)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def broker(session_broker: SessionBroker) -> MosquittoBroker:
    session_broker.ensure_running()
    return session_broker.broker


@pytest.fixture
def stack(database_url: str, broker: MosquittoBroker) -> Iterator[TestStack]:
    """The registry of this test's database, synced into the session's broker."""
    with TestStack(database_url, broker) as test_stack:
        yield test_stack
