"""Logging in and out, sessions in the database, cookies, CSRF and login throttling."""

from __future__ import annotations

import psycopg
import pytest
from flask import Flask

from fieldhub.web import create_app
from tests.web.helpers import PASSWORD, World, api_token, csrf_from, login

pytestmark = pytest.mark.integration


def test_login_sets_a_server_side_session_with_safe_cookie_flags(app: Flask, world: World) -> None:
    client = app.test_client()
    assert client.get("/devices").status_code == 302
    page = client.get("/login")
    token = csrf_from(page.get_data(as_text=True))
    response = client.post(
        "/login",
        data={"email": world.emails["a_viewer"], "password": PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("fh_session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    with psycopg.connect(world.database_url) as conn:
        stored = conn.execute("SELECT token_hash FROM web_sessions").fetchall()
    assert len(stored) == 1
    assert value.encode() not in stored[0][0]
    assert client.get("/devices").status_code == 200


def test_cookie_is_secure_over_tls(app: Flask, world: World) -> None:
    client = app.test_client()
    page = client.get("/login", base_url="https://localhost")
    token = csrf_from(page.get_data(as_text=True))
    response = client.post(
        "/login",
        data={"email": world.emails["a_viewer"], "password": PASSWORD, "csrf_token": token},
        base_url="https://localhost",
    )
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("fh_session="))
    assert "Secure" in cookie


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(
    app: Flask, world: World
) -> None:
    client = app.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    wrong = client.post(
        "/login",
        data={"email": world.emails["a_viewer"], "password": "nope-nope-nope", "csrf_token": token},
    )
    unknown = client.post(
        "/login",
        data={"email": "nobody@x.example", "password": "nope-nope-nope", "csrf_token": token},
    )
    assert wrong.status_code == unknown.status_code == 401
    assert "do not match an account" in wrong.get_data(as_text=True)
    assert "do not match an account" in unknown.get_data(as_text=True)


def test_logout_ends_the_session_in_the_database(app: Flask, world: World) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    cookie = client.get_cookie("fh_session")
    assert cookie is not None
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    # Replaying the old cookie does not bring the session back.
    replay = app.test_client()
    replay.set_cookie("fh_session", cookie.value)
    assert replay.get("/devices").status_code == 302


def test_password_change_ends_every_session_and_token_of_the_user(app: Flask, world: World) -> None:
    mine = api_token(world.database_url, world.emails["a_admin"])
    theirs = api_token(world.database_url, world.emails["a_member"])
    first, second = app.test_client(), app.test_client()
    login(first, world.emails["a_admin"])
    csrf = login(second, world.emails["a_admin"])
    response = second.post(
        "/account/password",
        data={
            "csrf_token": csrf,
            "current_password": PASSWORD,
            "new_password": "a brand new secret",
            "confirm_password": "a brand new secret",
        },
    )
    assert response.status_code == 302
    assert first.get("/devices").status_code == 302
    assert second.get("/devices").status_code == 302
    login(first, world.emails["a_admin"], "a brand new secret")
    # A token made by whoever the change locks out would otherwise outlive it.
    bearer = {"Authorization": f"Bearer {mine}"}
    assert first.get("/api/v1/devices", headers=bearer).status_code == 401
    bearer = {"Authorization": f"Bearer {theirs}"}
    assert first.get("/api/v1/devices", headers=bearer).status_code == 200


def test_state_changing_requests_without_the_csrf_token_are_refused(
    app: Flask, world: World
) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    device = world.devices["a"]
    refused = client.post(f"/devices/{device}/commands", data={"name": "reboot"})
    assert refused.status_code == 400
    assert "expired" in refused.get_data(as_text=True)
    wrong = client.post(
        f"/devices/{device}/commands", data={"name": "reboot", "csrf_token": "x" * 43}
    )
    assert wrong.status_code == 400
    header = client.post(
        f"/devices/{device}/commands", json={"name": "reboot"}, headers={"X-CSRF-Token": csrf}
    )
    assert header.status_code == 201
    assert client.post("/logout").status_code == 400
    # The login form itself is protected too (no token, no login).
    fresh = app.test_client()
    fresh.get("/login")
    assert (
        fresh.post(
            "/login", data={"email": world.emails["a_member"], "password": PASSWORD}
        ).status_code
        == 400
    )


def _attempt(app: Flask, email: str, password: str) -> int:
    client = app.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post(
        "/login", data={"email": email, "password": password, "csrf_token": token}
    ).status_code


def test_login_throttling_is_shared_by_every_app_instance(world: World) -> None:
    # Two app instances stand for two gunicorn workers: all they share is the database.
    workers = [create_app({"DATABASE_URL": world.database_url, "TESTING": True}) for _ in range(2)]
    email = world.emails["b_viewer"]
    statuses = [_attempt(workers[i % 2], email, "wrong password!") for i in range(5)]
    assert statuses == [401] * 5
    # Even the right password is refused now, on either worker.
    assert _attempt(workers[0], email, PASSWORD) == 429
    assert _attempt(workers[1], email, PASSWORD) == 429
    # Another account from the same address is not locked out by this one.
    assert _attempt(workers[1], world.emails["b_admin"], PASSWORD) == 302
    for worker in workers:
        worker.extensions["fieldhub.pools"].close()
