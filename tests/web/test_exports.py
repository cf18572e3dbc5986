"""The web export: the one export format, streamed on one connection, bounded per user.

The bound is counted in PostgreSQL, so two app instances (two pools, as two gunicorn workers
or hosts would have) share it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from fieldhub.cli import main
from fieldhub.web import create_app, exports
from tests.web.helpers import World, login

pytestmark = pytest.mark.integration


@pytest.fixture
def second_app(world: World) -> Iterator[Flask]:
    app = create_app({"DATABASE_URL": world.database_url, "TESTING": True})
    yield app
    app.extensions["fieldhub.live"].stop()
    app.extensions["fieldhub.pools"].close()


def _open_export(client: object, device_id: str) -> TestResponse:
    # buffered=False: the view has run (its slot and connection are taken) but the body is
    # not read, as while a slow client downloads.
    response: TestResponse = client.get(  # type: ignore[attr-defined]
        f"/devices/{device_id}/export.csv?range=1h", buffered=False
    )
    return response


def test_one_export_beyond_the_bound_is_refused_and_the_pool_serves_others(
    app: Flask, second_app: Flask, world: World
) -> None:
    device = world.devices["a"]
    # One user, two workers: the bound counts both.
    first, second = app.test_client(), second_app.test_client()
    login(first, world.emails["a_viewer"])
    login(second, world.emails["a_viewer"])
    bound = exports.DEFAULT_EXPORTS_PER_USER
    held = [_open_export(first if i % 2 else second, device) for i in range(bound)]
    assert [r.status_code for r in held] == [200] * bound
    refused = _open_export(first, device)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == exports.RETRY_AFTER_S
    refused.close()

    # Meanwhile another user of the same organisation exports and browses.
    other = app.test_client()
    login(other, world.emails["a_admin"])
    assert other.get(f"/devices/{device}").status_code == 200
    theirs = other.get(f"/devices/{device}/export.csv?range=1h")
    assert theirs.status_code == 200
    assert len(theirs.get_data(as_text=True).splitlines()) == 31

    # A held export still streams in full; once one ends, the user may start another.
    body = held[0].get_data(as_text=True)
    held[0].close()
    assert len(body.splitlines()) == 31
    again = _open_export(first, device)
    assert again.status_code == 200
    again.close()
    for response in held[1:]:
        response.close()
    # Every slot is back: the user can run the full bound again.
    after = [_open_export(first, device) for _ in range(bound)]
    assert [r.status_code for r in after] == [200] * bound
    for response in after:
        response.close()


@pytest.fixture
def small_app(world: World) -> Iterator[Flask]:
    app = create_app(
        {
            "DATABASE_URL": world.database_url,
            "TESTING": True,
            "DB_POOL_SIZE": 2,
            "EXPORT_POOL_SIZE": 2,
            "EXPORT_WAIT_S": 0.2,
        }
    )
    yield app
    app.extensions["fieldhub.live"].stop()
    app.extensions["fieldhub.pools"].close()


def test_exports_cannot_take_the_connections_pages_need(small_app: Flask, world: World) -> None:
    clients = {}
    for who in ("a_viewer", "a_admin", "b_viewer"):
        clients[who] = small_app.test_client()
        login(clients[who], world.emails[who])
    # Two users, one export each: every export connection of this process is taken.
    held = [_open_export(clients[who], world.devices["a"]) for who in ("a_viewer", "a_admin")]
    assert [r.status_code for r in held] == [200, 200]
    busy = _open_export(clients["b_viewer"], world.devices["b"])
    assert busy.status_code == 429
    assert "as many exports as it can" in busy.get_data(as_text=True)
    assert busy.headers["Retry-After"] == str(exports.RETRY_AFTER_S)
    # The pages' pool (two connections) is untouched: pages and the history still answer.
    for _ in range(3):
        assert clients["b_viewer"].get(f"/devices/{world.devices['b']}").status_code == 200
        history = clients["a_viewer"].get(
            f"/devices/{world.devices['a']}/history.json?metric=temperature&range=1h"
        )
        assert history.status_code == 200
    held[0].close()
    freed = _open_export(clients["b_viewer"], world.devices["b"])
    assert freed.status_code == 200
    assert len(freed.get_data(as_text=True).splitlines()) == 31
    freed.close()
    held[1].close()


def test_an_export_the_client_never_reads_gives_its_connection_back(
    app: Flask, world: World
) -> None:
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    for _ in range(exports.DEFAULT_EXPORTS_PER_USER * 3):
        response = _open_export(client, world.devices["a"])
        assert response.status_code == 200
        response.close()


def test_the_web_and_cli_exports_are_one_format(
    app: Flask, world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = app.test_client()
    login(client, world.emails["a_viewer"])
    device = world.devices["a"]
    web = client.get(f"/devices/{device}/export.csv?range=1h").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(web)))
    monkeypatch.setenv("DATABASE_URL", world.database_url)
    assert main(["export", device, "--from", rows[1][0]]) == 0
    assert capsys.readouterr().out == web
