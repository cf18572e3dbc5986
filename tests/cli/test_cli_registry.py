"""`fieldhub org ...` and `fieldhub device ...` against the test's own database."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from fieldhub.cli import main
from fieldhub.core.passwords import verify_secret
from tests.cli.conftest import DEVICE_URL, CliRunner, one_error_line
from tests.support import TestStack, unique_id, wait_for

pytestmark = pytest.mark.integration


def test_org_create_and_list(cli: CliRunner) -> None:
    cli("org", "create", "acme", "--display-name", "ACME Corp")
    out, _ = cli("org", "list", "--json")
    orgs = {o["name"]: o for o in json.loads(out)}
    assert orgs["acme"]["display_name"] == "ACME Corp"
    assert orgs["acme"]["devices"] == 0
    assert "already exists" in one_error_line(cli, "org", "create", "acme")
    assert "organisation name 'Bad Org'" in one_error_line(cli, "org", "create", "Bad Org")


def test_device_create_prints_credentials_once_and_stores_only_a_hash(cli: CliRunner) -> None:
    cli("org", "create", "acme")
    device_id = unique_id()
    out, _ = cli(
        "device", "create", device_id, "--org", "acme", "--name", "Boiler",
        "--label", "site=berlin", "--label", "floor=3", "--json",
    )  # fmt: skip
    creds = json.loads(out)
    assert creds["device_id"] == creds["username"] == device_id
    assert creds["mqtt_url"] == DEVICE_URL
    assert creds["mqtt_urls"] == [DEVICE_URL]
    assert creds["org"] == "acme"
    assert len(creds["password"]) >= 22
    row = cli.device_row(device_id)
    assert row is not None
    assert creds["password"] not in str(row)
    assert verify_secret(creds["password"], str(row["password_hash"]))
    assert row["labels"] == {"site": "berlin", "floor": "3"}

    out, _ = cli("device", "show", device_id, "--json")
    shown = json.loads(out)
    assert shown["display_name"] == "Boiler"
    assert shown["org"] == "acme"
    assert "password" not in out
    assert creds["password"] not in out

    out, _ = cli("device", "list", "--org", "acme", "--json")
    assert [d["device_id"] for d in json.loads(out)] == [device_id]
    out, _ = cli("device", "list")
    assert device_id in out


def test_device_create_refuses_bad_input_with_one_line(cli: CliRunner) -> None:
    cli("org", "create", "acme")
    assert "'/' (the MQTT topic level separator)" in one_error_line(
        cli, "device", "create", "a/b", "--org", "acme"
    )
    assert "MQTT wildcard" in one_error_line(cli, "device", "create", "a+b", "--org", "acme")
    assert "must not be empty" in one_error_line(cli, "device", "create", "", "--org", "acme")
    assert "no organisation named 'nope'" in one_error_line(
        cli, "device", "create", "dev-x", "--org", "nope"
    )
    assert "key=value" in one_error_line(
        cli, "device", "create", "dev-x", "--org", "acme", "--label", "oops"
    )
    device_id = unique_id()
    cli("device", "create", device_id, "--org", "acme")
    assert "already exists" in one_error_line(cli, "device", "create", device_id, "--org", "acme")
    assert cli.device_row("dev-x") is None
    # argparse's own refusals (missing --org, unknown action) also exit non-zero without a trace
    assert "--org" in cli.refused("device", "create", "dev-y")
    assert "invalid choice" in cli.refused("device", "explode", "dev-y")


def test_disable_enable_rotate_delete(cli: CliRunner) -> None:
    cli("org", "create", "acme")
    device_id = unique_id()
    first = json.loads(cli("device", "create", device_id, "--org", "acme", "--json")[0])

    cli("device", "disable", device_id)
    assert cli.device_row(device_id)["enabled"] is False  # type: ignore[index]
    cli("device", "enable", device_id)
    assert cli.device_row(device_id)["enabled"] is True  # type: ignore[index]

    rotated = json.loads(cli("device", "rotate", device_id, "--json")[0])
    assert rotated["password"] != first["password"]
    stored = str(cli.device_row(device_id)["password_hash"])  # type: ignore[index]
    assert verify_secret(rotated["password"], stored)
    assert not verify_secret(first["password"], stored)
    out, _ = cli("device", "rotate", device_id)
    assert "shown only this once" in out

    cli("device", "delete", device_id)
    assert cli.device_row(device_id) is None
    for action in ("disable", "enable", "rotate", "delete", "show"):
        assert f"no device '{device_id}'" in one_error_line(cli, "device", action, device_id)


def test_import_provisions_good_rows_reports_bad_ones_and_writes_private_credentials(
    cli: CliRunner, tmp_path: Path
) -> None:
    cli("org", "create", "acme")
    taken = unique_id()
    cli("device", "create", taken, "--org", "acme")
    ids = [unique_id() for _ in range(3)]
    source = tmp_path / "devices.csv"
    source.write_text(
        "device_id,name,labels\n"
        f"{ids[0]},Boiler,site=berlin;floor=3\n"
        "bad/id,,\n"
        f"{ids[1]}\n"
        f"{taken},already there\n"
        "\n"
        f"{ids[0]},duplicate in file\n"
        f"{ids[2]},,nolabel\n"
    )
    out_file = tmp_path / "creds.csv"
    out, err = cli("device", "import", str(source), "--org", "acme", "--out", str(out_file),
                   expect=1)  # fmt: skip
    assert "provisioned 2 devices" in out
    assert "4 rows refused" in out
    refused = {
        line.split(":")[1]: line for line in err.splitlines() if line.startswith(str(source))
    }
    assert set(refused) == {"3", "5", "7", "8"}
    assert "'/'" in refused["3"]
    assert "already exists" in refused["5"]
    assert "first on line 2" in refused["7"]
    assert "key=value" in refused["8"]

    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    with out_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["device_id"] for r in rows] == [ids[0], ids[1]]
    for row in rows:
        assert row["username"] == row["device_id"]
        assert row["mqtt_url"] == DEVICE_URL
        stored = cli.device_row(row["device_id"])
        assert stored is not None
        assert verify_secret(row["password"], str(stored["password_hash"]))
    assert cli.device_row(ids[0])["labels"] == {"site": "berlin", "floor": "3"}  # type: ignore[index]
    assert cli.device_row(ids[2]) is None

    # The credentials file is never overwritten, and nothing is provisioned when refused.
    another = unique_id()
    (tmp_path / "more.csv").write_text(f"{another}\n")
    line = one_error_line(
        cli, "device", "import", str(tmp_path / "more.csv"), "--org", "acme", "--out",
        str(out_file),
    )  # fmt: skip
    assert "never overwritten" in line
    assert cli.device_row(another) is None


def test_import_of_a_clean_file_exits_zero_with_default_output_name(
    cli: CliRunner, tmp_path: Path
) -> None:
    cli("org", "create", "acme")
    source = tmp_path / "fleet.csv"
    ids = [unique_id() for _ in range(5)]
    source.write_text("".join(f"{i}\n" for i in ids))
    out, _ = cli("device", "import", str(source), "--org", "acme")
    assert "provisioned 5 devices" in out
    written = tmp_path / "fleet-credentials.csv"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert len(written.read_text().splitlines()) == 6
    missing = one_error_line(cli, "device", "import", str(tmp_path / "nope.csv"), "--org", "acme")
    assert "cannot read" in missing


def test_entry_point_runs_as_a_process(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "fieldhub.cli", "device", "show", "no-such-device"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "fieldhub device: no device 'no-such-device'"


def test_auth_sync_refuses_to_start_without_the_broker_dir(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDHUB_MOSQUITTO_DIR", str(tmp_path / "nowhere"))
    assert "start the broker first" in one_error_line(cli, "auth-sync")
    monkeypatch.setenv("FIELDHUB_MOSQUITTO_DIR", str(tmp_path))
    (tmp_path / "auth").mkdir()
    assert "--sweep must be a positive" in one_error_line(cli, "auth-sync", "--sweep", "0")


def test_imported_credentials_log_in_at_the_broker(
    stack: TestStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", stack.database_url)
    ids = [unique_id("imp") for _ in range(3)]
    source = tmp_path / "fleet.csv"
    source.write_text("".join(f"{i}\n" for i in ids))
    assert main(["device", "import", str(source), "--org", stack.org]) == 0
    stack.sync()
    with (tmp_path / "fleet-credentials.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["username"] for r in rows) == sorted(ids)
    for row in rows:

        def logs_in(row: dict[str, str] = row) -> bool:
            return stack.can_login(row["username"], row["password"])

        wait_for(
            logs_in,
            what=f"{row['username']} to log in",
        )
    assert not stack.can_login(ids[0], rows[1]["password"])


def test_service_account_set_and_list(cli: CliRunner) -> None:
    out, _ = cli("service-account", "set", "svc.dashboard", "--rule", "read devices/+/status",
                 "--json")  # fmt: skip
    first = json.loads(out)
    assert first["username"] == "svc.dashboard"
    listed = json.loads(cli("service-account", "list", "--json")[0])
    assert [(a["username"], a["acl"]) for a in listed] == [
        ("svc.dashboard", ["read devices/+/status"])
    ]
    assert first["password"] not in json.dumps(listed)
    second = json.loads(cli("service-account", "set", "svc.dashboard", "--json")[0])
    assert second["password"] != first["password"]
    with psycopg.connect(cli.database_url) as conn:
        row = conn.execute(
            "SELECT password_hash, acl FROM service_accounts WHERE username = 'svc.dashboard'"
        ).fetchone()
    assert row is not None
    assert verify_secret(second["password"], row[0])
    assert row[1] == []
    assert "must start with 'svc.'" in one_error_line(cli, "service-account", "set", "dash")
    assert "whole topic level" in one_error_line(
        cli, "service-account", "set", "svc.x", "--rule", "read a+/b"
    )
