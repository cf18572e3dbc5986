"""The auth sync's reload: only files the broker parses as meant, retried until the broker runs
with them, and never a signal to anything but a running broker.

The retry tests run their own Mosquitto (stopped and started, its pid file moved away), so the
session's broker is not disturbed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldhub.broker.auth_files import acl_file_problems, password_file_problems
from fieldhub.broker.auth_sync import (
    InvalidAuthFiles,
    check_operator_rules,
    operator_rule_files,
    reload_if_due,
    sync_once,
)
from fieldhub.broker.mosquitto import (
    DEVICE_ACL_FILE,
    DEVICE_PASSWORD_FILE,
    SERVICE_ACL_FILE,
    BrokerNotRunning,
    MosquittoBroker,
    auth_dir_problems,
    broker_process,
)
from fieldhub.broker.reload_state import MAX_RETRY_S, START_MARGIN_S, PendingReload, started_after
from fieldhub.core import registry
from fieldhub.core.passwords import hash_secret
from fieldhub.core.procs import free_port
from tests.support import TestStack, stop_process, unique_id, wait_for

GOOD_HASH = hash_secret("secret")


# -- what Mosquitto 2.0.11 refuses (pure) ------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("  # an indented comment", "first column"),
        ("topic\tread devices/+/status", "separated by spaces"),
        ("topic read", "needs an access"),
        ("topic", "without a topic filter"),
        ("topic readonly a/b", "must be one of"),
        ("topic read a+/b", "'+' must be a whole topic level"),
        ("pattern write devices/%u/#/x", "'#' must be the whole last topic level"),
        ("topic read " + "a/" * 201 + "b", "more than 200 levels"),
        ("user", "without a username"),
        ("users svc.a", "is not 'topic', 'pattern' or 'user'"),
    ],
)
def test_acl_lines_mosquitto_refuses_are_named(line: str, problem: str) -> None:
    found = acl_file_problems(f"# fine\nuser svc.a\n{line}\n")
    assert len(found) == 1
    assert found[0].startswith("line 3: ")
    assert problem in found[0]


def test_acl_lines_mosquitto_accepts_pass() -> None:
    text = (
        "# comment\n\nuser svc.a\ntopic read devices/+/status\n  topic   deny   #\n"
        "pattern write devices/%u/commands/+/ack\nuser svc.b\n"
    )
    assert acl_file_problems(text) == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("dev-a", "no ':'"),
        (":" + GOOD_HASH, "empty username"),
        ("dev-a:$6$abc$def", "$7$"),
        ("dev-a:$7$0$" + GOOD_HASH.split("$", 3)[3], "iteration count"),
        ("dev-a:$7$101$c2hvcnQ=$" + GOOD_HASH.rsplit("$", 1)[1], "salt"),
        ("dev-a:" + GOOD_HASH[:-4], "does not decode to 64 bytes"),
    ],
)
def test_password_lines_that_would_lock_an_account_out_are_named(line: str, problem: str) -> None:
    found = password_file_problems(f"dev-ok:{GOOD_HASH}\n{line}\n")
    assert len(found) == 1
    assert found[0].startswith("line 2: ")
    assert problem in found[0]
    assert password_file_problems(f"dev-ok:{GOOD_HASH}\nsvc.b:{GOOD_HASH}\n") == []


def test_operator_files_are_normalised_and_checked_with_the_brokers_rules(
    tmp_path: Path,
) -> None:
    (tmp_path / "10-indented.acl").write_text("  # about it\n  user svc.a\n    topic read a\n")
    (tmp_path / "20-bad-filter.acl").write_text("user svc.b\ntopic read b+/c\n")
    files = operator_rule_files(tmp_path)
    assert [f.name for f in files] == ["10-indented.acl"]
    assert files[0].services == "# about it\nuser svc.a\ntopic read a\n"
    assert check_operator_rules("user svc.b\ntopic read b+/c\n") == [
        "line 2: '+' must be a whole topic level in 'b+/c'"
    ]


def test_pending_files_are_retried_with_a_short_backoff() -> None:
    pending = PendingReload()
    assert not pending.due(0.0)
    pending.files_written(1000.0, now=5.0)
    assert pending.due(5.0)
    waits = [pending.failed(5.0) for _ in range(6)]
    assert waits == [0.5, 1.0, 2.0, 4.0, MAX_RETRY_S, MAX_RETRY_S]
    assert pending.wait_s(5.0, sweep_s=30.0) == MAX_RETRY_S
    pending.applied()
    assert not pending.pending
    assert pending.wait_s(5.0, sweep_s=30.0) == 30.0
    # A broker that started after the write read the files at its start.
    assert started_after(1000.5, 1000.0)
    assert not started_after(1000.05, 1000.0)
    assert not started_after(999.0, 1000.0)


# -- against real files and processes ------------------------------------------------------


@pytest.mark.integration
def test_a_render_the_broker_would_misread_is_not_written(stack: TestStack) -> None:
    before = (stack.broker.auth_dir / SERVICE_ACL_FILE).read_text()
    # Past the registry's own checks (registry.check_acl_rule), as a hand edit would be.
    stack.conn.execute(
        "INSERT INTO service_accounts (username, password_hash, acl)"
        " VALUES ('svc.broken', %s, ARRAY['read a+/b'])",
        (GOOD_HASH,),
    )
    with pytest.raises(InvalidAuthFiles, match=r"services.acl: line \d+: '\+' must be a whole"):
        sync_once(stack.conn, stack.broker.auth_dir)
    assert (stack.broker.auth_dir / SERVICE_ACL_FILE).read_text() == before


@pytest.mark.integration
def test_files_that_would_break_the_broker_on_disk_are_not_reloaded(
    stack: TestStack, tmp_path: Path
) -> None:
    auth_dir = tmp_path / "auth"
    shutil.copytree(stack.broker.auth_dir, auth_dir)
    assert auth_dir_problems(auth_dir) == ""
    (auth_dir / DEVICE_ACL_FILE).write_text("  # indented\n")
    (auth_dir / DEVICE_PASSWORD_FILE).unlink()
    problems = auth_dir_problems(auth_dir)
    assert "passwords: cannot be read" in problems
    assert "acl: line 1: a comment must start in the first column" in problems
    pending = PendingReload()
    pending.files_written(time.time(), time.monotonic())
    # The broker would get no signal at all: the files are checked first.
    assert not reload_if_due(pending, stack.broker.pid_file, auth_dir)
    assert pending.failures == 1


@pytest.mark.integration
def test_a_stale_pid_file_never_signals_another_process(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        comm = Path(f"/proc/{other.pid}/comm")
        wait_for(lambda: comm.read_text().strip() == "sleep", what="sleep to run")
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{other.pid}\n")
        with pytest.raises(BrokerNotRunning, match="is 'sleep', not mosquitto"):
            broker_process(pid_file)
        pending = PendingReload()
        pending.files_written(time.time(), time.monotonic())
        assert not reload_if_due(pending, pid_file, tmp_path)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


# -- retries, against a broker of this test's own ------------------------------------------


class PrivateBroker:
    def __init__(self, tls_dir: Path) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="fieldhub-test-reload-"))
        self.base.chmod(0o755)
        self.broker = MosquittoBroker(
            self.base / "broker", tls_dir, free_port(), free_port(), free_port()
        )
        self.log = self.base / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.broker.start(self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_broker(broker: MosquittoBroker) -> Iterator[PrivateBroker]:
    running = PrivateBroker(broker.tls_dir)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(running.base, ignore_errors=True)


@pytest.fixture
def private_stack(database_url: str, private_broker: PrivateBroker) -> Iterator[TestStack]:
    private_broker.start()
    with TestStack(database_url, private_broker.broker) as test_stack:
        yield test_stack


def _auth_sync(stack: TestStack, broker: MosquittoBroker, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": stack.database_url,
        "FIELDHUB_MOSQUITTO_DIR": str(broker.base_dir),
        "FIELDHUB_MOSQUITTO_PID_FILE": str(broker.pid_file),
        "FIELDHUB_ACL_DIR": str(broker.base_dir / "no-acl.d"),
        "FIELDHUB_LOG_LEVEL": "DEBUG",
    }
    with log.open("ab") as out:
        # A long sweep: only the retry may bring the broker up to date.
        return subprocess.Popen(
            [sys.executable, "-m", "fieldhub.cli", "auth-sync", "--sweep", "600"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _change_unapplied(stack: TestStack, broker: MosquittoBroker, log: Path) -> tuple[str, str]:
    """A new device, written to the files by auth-sync, whose reload fails for want of a pid
    file: (device id, secret)."""
    device_id = unique_id()
    secret = registry.create_device(stack.conn, device_id, org=stack.org).password
    passwords = broker.auth_dir / DEVICE_PASSWORD_FILE
    wait_for(lambda: device_id in passwords.read_text(), timeout=30, what="the new files")
    wait_for(
        lambda: "broker not reloaded yet (no pid file" in log.read_text(),
        what="the failed reload",
    )
    return device_id, secret


@pytest.mark.integration
def test_a_failed_reload_is_retried_until_the_broker_has_the_files(
    private_stack: TestStack, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    broker = private_broker.broker
    aside = tmp_path / "mosquitto.pid"
    log = tmp_path / "auth-sync.log"
    sync = _auth_sync(private_stack, broker, log)
    try:
        wait_for(lambda: ") reloaded" in log.read_text(), timeout=30, what="auth-sync to start")
        # The broker runs on, but its pid file is gone: the next reload cannot be sent.
        broker.pid_file.rename(aside)
        device_id, secret = _change_unapplied(private_stack, broker, log)
        assert not private_stack.can_login(device_id, secret)
        # The pid file is back; no registry change follows, the retry alone must do it.
        aside.rename(broker.pid_file)
        wait_for(
            lambda: private_stack.can_login(device_id, secret),
            timeout=MAX_RETRY_S + 5,
            what="the retried reload to admit the new device",
        )
        assert "failed tries" in log.read_text()
    finally:
        stop_process(sync)
    assert "Traceback" not in log.read_text()


@pytest.mark.integration
def test_a_broker_started_after_the_files_were_written_is_up_to_date(
    private_stack: TestStack, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    broker = private_broker.broker
    log = tmp_path / "auth-sync.log"
    private_broker.stop()
    assert not broker.pid_file.exists()
    sync = _auth_sync(private_stack, broker, log)
    try:
        device_id, secret = _change_unapplied(private_stack, broker, log)
        passwords = broker.auth_dir / DEVICE_PASSWORD_FILE
        # Start times are known to 10 ms; a start within the margin counts as "maybe before".
        wait_for(
            lambda: time.time() > passwords.stat().st_mtime + START_MARGIN_S,
            what="the margin to pass",
        )
        # The broker starts, reads the files as they are now and writes its pid file.
        private_broker.start()
        assert private_stack.can_login(device_id, secret)
        wait_for(
            lambda: "started after the auth files were written" in log.read_text(),
            timeout=MAX_RETRY_S + 5,
            what="auth-sync to see the broker is up to date",
        )
        assert ") reloaded" not in log.read_text().split("started after the auth files")[1]
    finally:
        stop_process(sync)
    assert "Traceback" not in log.read_text()
