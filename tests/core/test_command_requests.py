"""The shared command API against the real database: validation, cap, scoping, timeline, CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.cli import main
from fieldhub.core import command_requests, registry
from fieldhub.core.command_requests import (
    MAX_PENDING_PER_DEVICE,
    CommandRequestError,
    NotFound,
    cancel_command,
    get_command,
    list_commands,
    send_command,
)
from fieldhub.core.db import Conn

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        registry.create_org(connection, "acme")
        registry.create_org(connection, "globex")
        registry.create_device(connection, "pump-1", org="acme")
        registry.create_device(connection, "pump-2", org="acme")
        registry.create_device(connection, "rival-1", org="globex")
        yield connection


def org_id(conn: Conn, name: str) -> int:
    return int(registry.get_org(conn, name)["id"])


def send(
    conn: Conn, device_id: str = "pump-1", name: str = "reboot", **kwargs: Any
) -> dict[str, Any]:
    kwargs.setdefault("params", {})
    kwargs.setdefault("ttl_s", 60)
    return send_command(conn, device_id=device_id, name=name, **kwargs)


def test_send_stores_a_queued_command(conn: Conn) -> None:
    command = send(conn, name="set_interval", params={"seconds": 30}, ttl_s=120)
    assert uuid.UUID(command["id"])
    assert command["status"] == "queued"
    assert command["params"] == {"seconds": 30}
    assert (command["expires_at"] - command["created_at"]).total_seconds() == 120
    stored = get_command(conn, command["id"])
    assert stored["status"] == "queued"
    assert [event["status"] for event in stored["timeline"]] == ["queued"]


def test_default_ttl_is_an_hour(conn: Conn) -> None:
    command = send(conn, ttl_s=None)
    assert (command["expires_at"] - command["created_at"]).total_seconds() == 3600


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device_id": "nope"}, "unknown device 'nope'"),
        ({"name": "bad name"}, "command name 'bad name' must be 1-64 characters"),
        ({"name": "_hidden"}, "starting with a letter or digit"),
        ({"name": "x" * 65}, "must be 1-64 characters"),
        ({"params": [1, 2]}, "params must be a JSON object, not list"),
        ({"params": "{}"}, "params must be a JSON object, not str"),
        ({"params": {"blob": "x" * 8200}}, "the limit is 8192"),
        ({"params": {"v": float("nan")}}, "NaN or infinite"),
        ({"params": {1: "x"}}, "not plain JSON"),
        ({"ttl_s": 9}, "time to live 9 s is out of bounds; use 10 s to 2592000 s"),
        ({"ttl_s": 30 * 86400 + 1}, "out of bounds"),
        ({"ttl_s": 10.5}, "whole number of seconds"),
        ({"ttl_s": "60"}, "must be a number of seconds"),
        ({"ttl_s": True}, "must be a number of seconds"),
    ],
)
def test_invalid_requests_get_a_clear_error_and_store_nothing(
    conn: Conn, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(CommandRequestError, match=message.replace("(", r"\(")):
        send(conn, **kwargs)
    assert list_commands(conn) == []


def test_params_at_the_limit_are_accepted(conn: Conn) -> None:
    # {"blob":"..."} is 11 bytes of framing around the string.
    command = send(conn, params={"blob": "x" * (8192 - 11)})
    assert len(command["params"]["blob"]) == 8181


def test_unknown_device_is_not_found(conn: Conn) -> None:
    with pytest.raises(NotFound):
        send(conn, device_id="ghost")


def test_disabled_device_is_refused(conn: Conn) -> None:
    registry.set_enabled(conn, "pump-2", False)
    with pytest.raises(CommandRequestError, match="device 'pump-2' is disabled"):
        send(conn, device_id="pump-2")


def test_pending_cap_per_device(conn: Conn) -> None:
    first = None
    for _ in range(MAX_PENDING_PER_DEVICE):
        command = send(conn)
        first = first or command
    assert first is not None
    with pytest.raises(CommandRequestError, match="already has 100 pending commands"):
        send(conn)
    # Other devices are not affected, and finishing one frees a slot.
    send(conn, device_id="pump-2")
    cancel_command(conn, first["id"])
    send(conn)


def test_created_at_increases_within_one_transaction(conn: Conn) -> None:
    with conn.transaction():
        ids = [send(conn, name=f"step{i}")["id"] for i in range(3)]
    rows = conn.execute(
        "SELECT id::text FROM commands ORDER BY created_at", prepare=False
    ).fetchall()
    assert [row["id"] for row in rows] == ids


def test_org_scoping_hides_other_organisations(conn: Conn) -> None:
    acme, globex = org_id(conn, "acme"), org_id(conn, "globex")
    with pytest.raises(NotFound, match="unknown device 'rival-1'"):
        send(conn, device_id="rival-1", org_id=acme)
    theirs = send(conn, device_id="rival-1", org_id=globex)
    ours = send(conn, device_id="pump-1", org_id=acme)
    with pytest.raises(NotFound):
        get_command(conn, theirs["id"], org_id=acme)
    with pytest.raises(NotFound):
        cancel_command(conn, theirs["id"], org_id=acme)
    assert [c["id"] for c in list_commands(conn, org_id=acme)] == [ours["id"]]
    assert [c["id"] for c in list_commands(conn, org_id=globex)] == [theirs["id"]]
    assert get_command(conn, theirs["id"])["status"] == "queued"  # untouched


def test_cancel_records_the_timeline_and_refuses_a_second_time(conn: Conn) -> None:
    command = send(conn)
    cancelled = cancel_command(conn, command["id"])
    assert cancelled["status"] == "cancelled"
    timeline = get_command(conn, command["id"])["timeline"]
    assert [event["status"] for event in timeline] == ["queued", "cancelled"]
    assert timeline[0]["at"] <= timeline[1]["at"]
    with pytest.raises(CommandRequestError, match="already cancelled"):
        cancel_command(conn, command["id"])


def test_cancel_of_a_finished_command_is_refused(conn: Conn) -> None:
    command = send(conn)
    conn.execute(
        "UPDATE commands SET status = 'succeeded' WHERE id = %s", (command["id"],), prepare=False
    )
    with pytest.raises(CommandRequestError, match="already succeeded"):
        cancel_command(conn, command["id"])
    assert get_command(conn, command["id"])["status"] == "succeeded"


def test_unknown_and_malformed_command_ids(conn: Conn) -> None:
    with pytest.raises(NotFound, match="unknown command"):
        get_command(conn, str(uuid.uuid4()))
    with pytest.raises(NotFound, match="command ids are UUIDs"):
        get_command(conn, "not-a-uuid")
    with pytest.raises(NotFound):
        cancel_command(conn, "42")


def test_list_filters(conn: Conn) -> None:
    a = send(conn, device_id="pump-1")
    b = send(conn, device_id="pump-2")
    c = send(conn, device_id="pump-2")
    cancel_command(conn, c["id"])
    assert [x["id"] for x in list_commands(conn)] == [c["id"], b["id"], a["id"]]
    assert [x["id"] for x in list_commands(conn, device_id="pump-2")] == [c["id"], b["id"]]
    assert [x["id"] for x in list_commands(conn, status="cancelled")] == [c["id"]]
    assert [x["id"] for x in list_commands(conn, limit=1)] == [c["id"]]
    with pytest.raises(CommandRequestError, match="unknown command status 'done'"):
        list_commands(conn, status="done")
    with pytest.raises(CommandRequestError, match="limit must be between 1 and 1000"):
        list_commands(conn, limit=0)


def test_expire_commands_moves_only_open_commands_past_their_time(conn: Conn) -> None:
    stale = send(conn)
    fresh = send(conn)
    done = send(conn)
    conn.execute(
        "UPDATE commands SET status = 'succeeded' WHERE id = %s", (done["id"],), prepare=False
    )
    conn.execute(
        "UPDATE commands SET created_at = created_at - interval '2 hours', "
        "expires_at = now() - interval '1 second' WHERE id = ANY(%s::uuid[])",
        ([stale["id"], done["id"]],),
        prepare=False,
    )
    row = conn.execute("SELECT expire_commands() AS n", prepare=False).fetchone()
    assert row is not None
    assert row["n"] == 1
    assert get_command(conn, stale["id"])["status"] == "expired"
    assert get_command(conn, fresh["id"])["status"] == "queued"
    assert get_command(conn, done["id"])["status"] == "succeeded"


# -- the command line ---------------------------------------------------------------------
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, *argv: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("DATABASE_URL", url)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_send_show_list_cancel(
    conn: Conn,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        database_url,
        "command",
        "send",
        "pump-1",
        "set_interval",
        "--params",
        '{"seconds": 30}',
        "--ttl",
        "300",
        "--json",
    )
    assert code == 0
    sent = json.loads(out)
    assert sent["status"] == "queued"
    assert sent["params"] == {"seconds": 30}
    command_id = sent["id"]

    code, out, _ = run_cli(monkeypatch, capsys, database_url, "command", "show", command_id)
    assert code == 0
    assert "status:   queued" in out
    assert "timeline:" in out

    code, out, _ = run_cli(
        monkeypatch, capsys, database_url, "command", "list", "--device", "pump-1"
    )
    assert code == 0
    assert command_id in out

    code, out, _ = run_cli(monkeypatch, capsys, database_url, "command", "cancel", command_id)
    assert code == 0
    assert f"cancelled {command_id}" in out

    code, out, _ = run_cli(
        monkeypatch, capsys, database_url, "command", "show", command_id, "--json"
    )
    shown = json.loads(out)
    assert shown["status"] == "cancelled"
    assert [event["status"] for event in shown["timeline"]] == ["queued", "cancelled"]

    code, out, _ = run_cli(
        monkeypatch, capsys, database_url, "command", "list", "--status", "queued"
    )
    assert out.strip() == "no commands"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["command", "send", "ghost", "reboot"], "unknown device 'ghost'"),
        (["command", "send", "pump-1", "reboot", "--params", "{oops"], "not valid JSON"),
        (["command", "send", "pump-1", "reboot", "--ttl", "5"], "out of bounds"),
        (["command", "show", "nope"], "unknown command 'nope'"),
    ],
)
def test_cli_errors_are_one_line(
    conn: Conn,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    code, _, err = run_cli(monkeypatch, capsys, database_url, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert command_requests.list_commands(conn) == []
