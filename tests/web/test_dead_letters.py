"""Dead letters shown to the people they concern: the API, the device page and the CLI.

Letters are matched by the device's key: a device created again with an old id never shows
its predecessor's letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from flask import Flask

from fieldhub.cli import main
from fieldhub.core import db, registry
from tests.web.helpers import World, api_token, login, problem

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
HTML = b'{"ts": 1, "values": {"t": "<script>alert(1)</script>"}}'
BINARY = b"\x00\xff\x1b[31mred\x1b[0m"


def _letter(
    conn: psycopg.Connection[Any],
    device_id: str,
    reason: str,
    payload: bytes,
    *,
    minutes_ago: int,
    detail: str = "",
) -> None:
    conn.execute(
        "INSERT INTO dead_letters (received_at, device_id, device_key, topic, reason, detail,"
        " payload) SELECT %s, device_id, device_key, 'devices/' || device_id || '/telemetry',"
        " %s, %s, %s FROM devices WHERE device_id = %s",
        (NOW - timedelta(minutes=minutes_ago), reason, detail, payload, device_id),
    )


@pytest.fixture
def letters(world: World) -> str:
    device = world.devices["a"]
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        _letter(conn, device, "ts_in_future", HTML, minutes_ago=3, detail="reading 0: 7200 s")
        _letter(conn, device, "invalid_utf8", BINARY, minutes_ago=2)
        _letter(conn, device, "bad_string", b"x" * 1000, minutes_ago=1)
        _letter(conn, world.devices["b"], "invalid_json", b"{", minutes_ago=1)
    return device


def _get(app: Flask, world: World, who: str, path: str) -> Any:
    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails[who])}
    return app.test_client().get(path, headers=headers)


def test_the_api_pages_a_devices_letters_for_its_admins_and_operators(
    app: Flask, world: World, letters: str
) -> None:
    path = f"/api/v1/devices/{letters}/dead-letters"
    first = _get(app, world, "a_admin", path + "?limit=2")
    assert first.status_code == 200, first.get_data(as_text=True)
    body = first.get_json()
    assert [d["reason"] for d in body["dead_letters"]] == ["bad_string", "invalid_utf8"]
    newest, binary = body["dead_letters"]
    assert newest["payload_truncated"] is True
    assert newest["payload_bytes"] == 1000
    assert newest["payload_preview"] == "x" * 256
    assert "NUL" in newest["explanation"]
    assert binary["payload_encoding"] == "hex"
    assert binary["payload_preview"] == BINARY.hex(" ")
    assert body["next"]
    rest = _get(app, world, "a_admin", body["next"].split("localhost", 1)[-1])
    assert rest.status_code == 200
    (oldest,) = rest.get_json()["dead_letters"]
    assert oldest["reason"] == "ts_in_future"
    assert oldest["detail"] == "reading 0: 7200 s"
    assert oldest["payload_preview"] == HTML.decode()
    assert oldest["topic"] == f"devices/{letters}/telemetry"
    assert rest.get_json()["next"] is None

    since = (NOW - timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
    recent = _get(app, world, "operator", f"{path}?since={since}").get_json()
    assert [d["reason"] for d in recent["dead_letters"]] == ["bad_string", "invalid_utf8"]

    for who in ("a_member", "a_viewer"):
        problem(_get(app, world, who, path), 403, "forbidden")
    problem(_get(app, world, "b_admin", path), 404, "not-found")
    problem(_get(app, world, "a_admin", path + "?limit=0"), 400, "invalid-parameter")


def test_the_device_page_says_why_in_words_and_never_renders_the_payload(
    app: Flask, world: World, letters: str
) -> None:
    admin = app.test_client()
    login(admin, world.emails["a_admin"])
    html = admin.get(f"/devices/{letters}").get_data(as_text=True)
    assert "Refused messages" in html
    assert "Kept 14 days" in html
    assert "more than an hour ahead of the server" in html  # ts_in_future, in words
    assert "reading 0: 7200 s" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert BINARY.hex(" ") in html
    assert "\x1b" not in html
    viewer = app.test_client()
    login(viewer, world.emails["a_viewer"])
    assert "Refused messages" not in viewer.get(f"/devices/{letters}").get_data(as_text=True)


def test_a_device_created_again_with_an_old_id_shows_none_of_its_predecessors_letters(
    app: Flask,
    world: World,
    letters: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with db.connect(world.database_url, autocommit=True) as conn:
        registry.delete_device(conn, letters)
        registry.create_device(conn, letters, org="org-a")
        _letter(conn, letters, "bad_topic", b"new", minutes_ago=0)
    body = _get(app, world, "a_admin", f"/api/v1/devices/{letters}/dead-letters").get_json()
    assert [d["reason"] for d in body["dead_letters"]] == ["bad_topic"]
    monkeypatch.setenv("DATABASE_URL", world.database_url)
    assert main(["dead-letters", "--device", letters, "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert [d["reason"] for d in shown] == ["bad_topic"]
    # Without --device an operator sees every letter, the old device's included.
    assert main(["dead-letters", "--json", "--limit", "10"]) == 0
    reasons = [d["reason"] for d in orjson.loads(capsys.readouterr().out)]
    assert sorted(reasons) == sorted(
        ["bad_topic", "bad_string", "invalid_utf8", "ts_in_future", "invalid_json"]
    )


def test_the_cli_table_spells_out_what_a_terminal_would_obey(
    world: World, letters: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", world.database_url)
    since = (NOW - timedelta(minutes=2, seconds=30)).isoformat()
    assert main(["dead-letters", "--device", letters, "--since", since]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "invalid_utf8" in out
    assert "bad_string" in out
    assert "ts_in_future" not in out  # before --since
    assert "hex 00 ff 1b" in out
    assert "payload (1000 bytes)" in out
    assert main(["dead-letters", "--device", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
