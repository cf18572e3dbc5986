"""fieldhub as an operator installs it: `python -m build`, then the wheel in a clean virtualenv
that holds only requirements/runtime.txt.

The clean virtualenv is the proof that nothing imports a development package at start-up (it
has none to import). It is kept under var/cache, keyed by the runtime lock's hash, so only the
first run after a lock change downloads wheels; the fieldhub wheel itself is reinstalled every
time. Every role process is then started from it, outside the checkout."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from fieldhub.broker.mosquitto import MosquittoBroker
from fieldhub.cli.bench import BENCHES
from fieldhub.core import registry
from fieldhub.core.procs import free_port
from fieldhub.stack.postgres import PostgresCluster
from tests.support import DeviceClient, TestStack, http_status, wait_for

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DEV_ONLY = ("pytest", "requests", "hypothesis", "playwright", "schemathesis", "mypy", "ruff")


def test_every_benchmark_is_declared_with_its_module_and_help() -> None:
    declared: dict[str, str] = {}
    for module_name in {module for module, _ in BENCHES.values()}:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module_name).register(sub)
        for action in sub._choices_actions:
            declared[action.dest] = f"{module_name}: {action.help}"
    assert declared == {name: f"{module}: {text}" for name, (module, text) in BENCHES.items()}


def _source_copy(target: Path) -> Path:
    """The files of the checkout a build reads, without build leftovers."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    vendor = "fieldhub/web/static/vendor"
    for name in [n.decode() for n in tracked if n] + [
        f"{vendor}/{f.name}" for f in (ROOT / vendor).iterdir()
    ]:
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _build(source: Path, out: Path, *kinds: str) -> subprocess.CompletedProcess[str]:
    # No isolation: the dev lock pins setuptools and wheel, so the build needs no download.
    return subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", *kinds, "--outdir", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_the_build_refuses_without_the_vendored_front_end(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    shutil.rmtree(source / "fieldhub" / "web" / "static" / "vendor")
    result = _build(source, tmp_path / "dist", "--sdist")
    assert result.returncode != 0
    assert "run scripts/setup" in result.stdout + result.stderr
    assert not list((tmp_path / "dist").glob("*.tar.gz"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` as a release does it: the sdist, then the wheel built from the sdist."""
    base = tmp_path_factory.mktemp("build")
    source = _source_copy(base / "src")
    result = _build(source, base / "dist")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base / "dist"


def test_the_wheel_and_sdist_carry_what_the_runtime_reads(dist: Path) -> None:
    (wheel,) = dist.glob("fieldhub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "fieldhub"
    needed = [
        p
        for pattern in ("**/*.sql", "**/*.template", "**/acl.base", "web/templates/**/*")
        for p in package.glob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    ]
    needed += list((package / "web" / "static").rglob("*.*"))
    expected = {str(p.relative_to(ROOT)) for p in needed}
    assert {
        "fieldhub/web/static/vendor/uPlot.iife.min.js",
        "fieldhub/web/static/vendor/uPlot.min.css",
    } <= expected
    assert any(name.startswith("fieldhub/core/migrations/0001_") for name in expected)
    assert expected - names == set()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text or "License: Apache-2.0" in text
    runtime_requires = [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert any(r.startswith("gunicorn") for r in runtime_requires)
    for gone in ("flask-wtf", "psutil", "matplotlib", *DEV_ONLY):
        assert not [r for r in runtime_requires if r.startswith(gone)], gone

    (sdist,) = dist.glob("fieldhub-*.tar.gz")
    listing = subprocess.run(["tar", "tzf", str(sdist)], capture_output=True, text=True).stdout
    for member in (
        "LICENSE",
        "requirements/runtime.txt",
        "fieldhub/web/static/vendor/uPlot.LICENSE",
    ):
        assert f"/{member}\n" in listing, member


def runtime_venv() -> Path:
    """A virtualenv with exactly requirements/runtime.txt (hash-checked), cached per lock."""
    digest = hashlib.sha256(RUNTIME_LOCK.read_bytes()).hexdigest()[:16]
    cache = ROOT / "var" / "cache"
    venv = cache / f"runtime-venv-{digest}"
    marker = venv / ".complete"
    if marker.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    wheelhouse = cache / f"wheelhouse-{digest}"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *pip,
            "download",
            "--require-hashes",
            "--no-deps",
            "--only-binary=:all:",
            "-r",
            str(RUNTIME_LOCK),
            "--dest",
            str(wheelhouse),
        ],
        check=True,
        timeout=600,
    )
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "--disable-pip-version-check",
            "-q",
            "install",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--require-hashes",
            "-r",
            str(RUNTIME_LOCK),
        ],
        check=True,
        timeout=600,
    )
    marker.write_text(digest + "\n")
    return venv


@pytest.fixture(scope="module")
def installed(dist: Path) -> Path:
    """The runtime virtualenv with this build's wheel installed; returns its bin/ folder."""
    venv = runtime_venv()
    (wheel,) = dist.glob("fieldhub-*.whl")
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "--disable-pip-version-check",
            "-q",
            "install",
            "--no-deps",
            "--force-reinstall",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return venv / "bin"


def _run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "fieldhub"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd="/",  # nowhere near the checkout
    )


@pytest.mark.integration
def test_the_installed_wheel_starts_without_development_packages(installed: Path) -> None:
    freeze = subprocess.run(
        [str(installed / "pip"), "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for dev in DEV_ONLY:
        assert f"\n{dev}==" not in "\n" + freeze, f"{dev} is in the runtime virtualenv"

    version = _run(installed, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "fieldhub 0.1.0"

    helped = _run(installed, "--help")
    assert helped.returncode == 0, helped.stderr
    for role in ("migrate", "web", "bridge", "worker", "auth-sync", "status", "bench"):
        assert role in helped.stdout
    for role in ("migrate", "web", "bridge", "worker", "auth-sync", "status"):
        sub = _run(installed, role, "--help")
        assert sub.returncode == 0, (role, sub.stderr)

    # A benchmark that needs a development package says so in one line instead of a traceback.
    bench = _run(installed, "bench", "web", "--help")
    assert bench.returncode == 2
    assert "needs the development packages (requests is missing)" in bench.stderr
    assert "Traceback" not in bench.stderr

    # The package finds its data next to its modules, not in a checkout.
    located = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "from fieldhub.core.migrate import discover, SCHEMA_DIR; "
            "print(SCHEMA_DIR); print(len(discover()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.split()
    assert "/site-packages/fieldhub/" in located[0]
    assert int(located[1]) == len(list((ROOT / "fieldhub/core/migrations").glob("*.sql")))


@pytest.fixture
def empty_database(pg_cluster: PostgresCluster) -> Iterator[str]:
    name = f"install_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    yield pg_cluster.url(name)
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.mark.integration
def test_every_role_runs_from_the_installed_wheel(
    installed: Path, empty_database: str, broker: MosquittoBroker, tmp_path: Path
) -> None:
    """migrate, web, bridge, worker and auth-sync, started from the runtime virtualenv
    outside the checkout, each as its systemd unit runs it (but on free ports)."""
    tmp_path.chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FIELDHUB_", "PYTHON"))},
        "FIELDHUB_HOME": str(tmp_path / "home"),
        "DATABASE_URL": empty_database,
        "FIELDHUB_SECRET_KEY": "k" * 40,
        "FIELDHUB_LOG_FORMAT": "json",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(installed / "fieldhub"), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            cwd="/",
        )

    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_registry" in migrated.stdout
    assert run("migrate").stdout.strip() == "schema is up to date"

    stack = TestStack(empty_database, broker)
    instance = free_port()  # a bridge session (and account) of its own on the shared broker
    bridge_user = stack.ensure_bridge_account(instance)
    env["MQTT_URL"] = (
        f"mqtt://{registry.BRIDGE_ACCOUNT_BASE}:{quote(stack.bridge_password, safe='')}"
        f"@127.0.0.1:{broker.mqtt_services}"
    )
    mosquitto_dir = tmp_path / "broker"
    (mosquitto_dir / "auth").mkdir(parents=True)
    (mosquitto_dir / "mosquitto.pid").write_text(f"{broker.pid_file.read_text()}")
    web_port, web_metrics, worker_port, bridge_port = (free_port() for _ in range(4))
    commands = {
        "web": [
            "web",
            "--bind",
            f"127.0.0.1:{web_port}",
            "--metrics-port",
            str(web_metrics),
            "--workers",
            "1",
        ],
        "bridge": ["bridge", "--name", f"broker-1-{instance}", "--metrics-port", str(bridge_port)],
        "worker": ["worker", "--metrics-port", str(worker_port)],
        "auth-sync": ["auth-sync", "--broker", "broker-1", "--sweep", "1"],
    }
    role_env = {
        "auth-sync": {
            "FIELDHUB_MOSQUITTO_DIR": str(mosquitto_dir),
            "FIELDHUB_MOSQUITTO_PID_FILE": str(mosquitto_dir / "mosquitto.pid"),
        }
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    try:
        for name, args in commands.items():
            with logs[name].open("wb") as log:
                processes[name] = subprocess.Popen(
                    [str(installed / "fieldhub"), *args],
                    env={**env, **role_env.get(name, {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                )
        ready = {
            "web": f"http://127.0.0.1:{web_port}/readyz",
            "bridge": f"http://127.0.0.1:{bridge_port}/readyz",
            "worker": f"http://127.0.0.1:{worker_port}/readyz",
        }
        for name, url in ready.items():

            def ready_now(url: str = url, name: str = name) -> bool:
                return processes[name].poll() is None and http_status(url) == 200

            wait_for(
                ready_now,
                timeout=60,
                interval=0.2,
                what=f"{name} from the wheel to be ready",
            )
        assert http_status(f"http://127.0.0.1:{web_metrics}/metrics") == 200
        wait_for(
            lambda: bridge_user in (mosquitto_dir / "auth" / "services.passwords").read_text(),
            timeout=30,
            what="auth-sync from the wheel to write the broker's files",
        )
    finally:
        for proc in processes.values():
            proc.terminate()
        for proc in processes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        stack.conn.close()
        # The bridge's durable session would take a share of every later test's messages.
        forget = DeviceClient(
            broker.mqtt_services, bridge_user, stack.bridge_password, clean_start=True
        )
        with contextlib.suppress(AssertionError, OSError):
            forget.connect()
            forget.close()
    # FIELDHUB_LOG_FORMAT=json reaches every process, gunicorn's logs included, from start to
    # (clean) stop: each line one JSON object naming the process's role.
    for name, log_path in logs.items():
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        assert lines, name
        roles = {json.loads(line)["role"] for line in lines}
        assert roles == {name}, (name, roles)
