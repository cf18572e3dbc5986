"""A project-local PostgreSQL cluster with TimescaleDB preloaded.

PostgreSQL refuses to run as root; when we are root the cluster's files belong to the
`postgres` system user and every server command runs as that user."""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

from fieldhub.core.config import Settings
from fieldhub.core.endpoints import (
    LOCAL_DB_HOST,
    LOCAL_DB_NAME,
    LOCAL_DB_SUPERUSER,
    local_db_password_file,
)
from fieldhub.core.procs import (
    as_user,
    chown,
    chown_tree,
    port_open,
    run_checked,
    running_as_root,
    wait_until,
)

PG_USER = "postgres"  # the system user that owns clusters when we run as root


def pg_bindir() -> Path:
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda p: int(p.parent.parent.name),
    )
    if not versions:
        raise FileNotFoundError("PostgreSQL server binaries not found: run scripts/setup first")
    return versions[-1].parent


def local_cluster(settings: Settings) -> PostgresCluster:
    """The local stack's cluster under $FIELDHUB_HOME (endpoints.database_url connects to it)."""
    return PostgresCluster(
        settings.home / "postgres",
        settings.ports.postgres,
        local_db_password_file(settings),
    )


@dataclasses.dataclass
class PostgresCluster:
    data_dir: Path
    port: int
    password_file: Path
    host: str = LOCAL_DB_HOST
    # Test clusters trade durability for speed; a real stack never does.
    fast_unsafe: bool = False
    extra_settings: dict[str, str] = dataclasses.field(default_factory=dict)
    # pg_hba.conf lines added to initdb's (which admit loopback only): a database on its own
    # host names its application hosts' network here.
    hba_rules: tuple[str, ...] = ()
    # The role initdb creates (the local stack's own; a database host keeps Debian's postgres).
    superuser: str = LOCAL_DB_SUPERUSER

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def url(self, dbname: str = LOCAL_DB_NAME) -> str:
        password = quote(self.password, safe="")
        return f"postgresql://{self.superuser}:{password}@{self.host}:{self.port}/{dbname}"

    @property
    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "socket"

    def init(self) -> None:
        """Create the cluster if it does not exist yet (data persists across down/up)."""
        if self.initialised:
            return
        self.password_file.parent.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
            self.password_file.chmod(0o600)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        chown_tree(self.data_dir, PG_USER)
        # initdb reads the password from a file the postgres user can read; it is removed at once.
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir, delete=False) as pw:
            pw.write(self.password + "\n")
        pw_path = Path(pw.name)
        chown(pw_path, PG_USER)
        try:
            run_checked(
                as_user(
                    PG_USER,
                    [
                        str(pg_bindir() / "initdb"),
                        "-D",
                        str(self.pgdata),
                        "-U",
                        self.superuser,
                        f"--pwfile={pw_path}",
                        "--auth-host=scram-sha-256",
                        "--auth-local=peer",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                    ],
                )
            )
        finally:
            pw_path.unlink()
        self.socket_dir.mkdir(exist_ok=True)
        chown(self.socket_dir, PG_USER)
        self._write_settings()
        if self.hba_rules:
            with (self.pgdata / "pg_hba.conf").open("a") as hba:
                hba.write("# fieldhub: application hosts\n")
                hba.writelines(f"{rule}\n" for rule in self.hba_rules)

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "shared_preload_libraries": "'timescaledb'",
            "timescaledb.telemetry_level": "off",
            "max_connections": "300",
            "shared_buffers": "'512MB'",
            "work_mem": "'16MB'",
            "maintenance_work_mem": "'256MB'",
            "max_wal_size": "'4GB'",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "log_min_duration_statement": "1000",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        if self.fast_unsafe:
            settings.update(
                fsync="off",
                synchronous_commit="off",
                full_page_writes="off",
                shared_buffers="'128MB'",
            )
        settings.update(self.extra_settings)
        conf = self.pgdata / "postgresql.auto.conf"
        lines = [f"{key} = {value}\n" for key, value in settings.items()]
        with conf.open("a") as handle:
            handle.write("# fieldhub settings\n")
            handle.writelines(lines)

    def start(self, log_file: Path | None = None) -> None:
        if self.running():
            return
        log_file = log_file or self.data_dir / "postgres.log"
        if running_as_root() and not log_file.exists():
            log_file.touch()
            chown(log_file, PG_USER)
        run_checked(
            as_user(
                PG_USER,
                [
                    str(pg_bindir() / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(log_file),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )
        )
        wait_until(lambda: port_open(self.port, self.host), timeout=30, what="PostgreSQL port")

    def stop(self, mode: str = "fast") -> None:
        if not self.initialised:
            return
        subprocess.run(
            as_user(
                PG_USER,
                [str(pg_bindir() / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
            ),
            capture_output=True,
            check=False,
        )

    def running(self) -> bool:
        if not self.initialised:
            return False
        result = subprocess.run(
            as_user(PG_USER, [str(pg_bindir() / "pg_ctl"), "-D", str(self.pgdata), "status"]),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def create_database(self, name: str, template: str | None = None) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists:
                return
            sql = f'CREATE DATABASE "{name}"'
            if template:
                sql += f' TEMPLATE "{template}"'
            conn.execute(sql.encode())
