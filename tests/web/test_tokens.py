"""API tokens that expire and can be listed and revoked (CLI, account page, admins' page), and
users that can be disabled, which ends their sessions and tokens (a password change does the
same: tests/web/test_auth.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.rows import dict_row

from fieldhub.core import users
from tests.web.helpers import PASSWORD, ROOT, World, csrf_from, login

pytestmark = pytest.mark.integration


def _cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fieldhub.cli", *args],
        capture_output=True,
        text=True,
        env={"DATABASE_URL": world.database_url, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        check=False,
    )


def _api(client: FlaskClient, token: str) -> tuple[int, dict[str, Any]]:
    response = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.get_json()


def _db(world: World) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row)


def test_parse_expires_in() -> None:
    assert users.parse_expires_in("12h") == timedelta(hours=12)
    assert users.parse_expires_in(" 30D ") == timedelta(days=30)
    assert users.parse_expires_in("2w") == timedelta(weeks=2)
    for bad, message in [
        ("30", "like 12h, 30d or 2w"),
        ("0d", "like 12h"),
        ("-1d", "like 12h"),
        ("1.5d", "like 12h"),
        ("3651d", "longer than the limit of 3650d"),
    ]:
        with pytest.raises(users.UserError, match=message):
            users.parse_expires_in(bad)


def test_cli_creates_lists_and_revokes_tokens(app: Flask, world: World) -> None:
    email = world.emails["a_viewer"]
    created = _cli(
        world, "token", "create", email, "--name", "export", "--expires-in", "30d", "--json"
    )
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["token"].startswith("fh_")
    assert token["name"] == "export"
    assert token["expires_at"] > token["created_at"]
    forever = json.loads(_cli(world, "token", "create", email, "--json").stdout)
    assert forever["expires_at"] is None

    client = app.test_client()
    assert _api(client, token["token"])[0] == 200
    listed = _cli(world, "token", "list", email, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [forever["id"], token["id"]]
    assert rows[1]["name"] == "export"
    assert rows[1]["last_used_at"] is not None  # the API call above
    assert rows[1]["expired"] is False
    assert not any("token" in r or "token_hash" in r for r in rows)

    revoked = _cli(world, "token", "revoke", str(token["id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked API token {token['id']} (export) of {email}" in revoked.stdout
    status, body = _api(client, token["token"])
    assert status == 401
    assert "revoked" in body["detail"]
    assert _api(client, forever["token"])[0] == 200
    again = _cli(world, "token", "revoke", str(token["id"]))
    assert again.returncode == 2
    assert f"no API token {token['id']}" in again.stderr

    bad = _cli(world, "token", "create", email, "--expires-in", "forever")
    assert bad.returncode == 2
    assert "like 12h, 30d or 2w" in bad.stderr


def test_an_expired_token_gets_401_and_stays_listed_as_expired(app: Flask, world: World) -> None:
    with _db(world) as conn:
        token, row = users.create_api_token(
            conn, world.emails["a_viewer"], expires_in=timedelta(hours=1)
        )
        client = app.test_client()
        assert _api(client, token)[0] == 200
        conn.execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = %s",
            (row["id"],),
        )
        status, body = _api(client, token)
        assert status == 401
        assert "expired at" in body["detail"]
        listed = users.list_api_tokens(conn, world.user_ids["a_viewer"])
        assert [(t["id"], t["expired"]) for t in listed] == [(row["id"], True)]
        # Housekeeping keeps it listed for 30 days, then deletes it.
        users.prune(conn)
        assert users.list_api_tokens(conn, world.user_ids["a_viewer"])
        conn.execute(
            "UPDATE api_tokens SET expires_at = now() - interval '31 days' WHERE id = %s",
            (row["id"],),
        )
        users.prune(conn)
        assert users.list_api_tokens(conn, world.user_ids["a_viewer"]) == []


def test_a_disabled_user_cannot_log_in_and_has_no_sessions_or_tokens(
    app: Flask, world: World
) -> None:
    email = world.emails["b_member"]
    browser = app.test_client()
    login(browser, email)
    with _db(world) as conn:
        token, _ = users.create_api_token(conn, email)
    disabled = _cli(world, "user", "disable", email)
    assert disabled.returncode == 0, disabled.stderr
    assert browser.get("/devices").status_code == 302  # the open session has ended
    assert _api(browser, token)[0] == 401
    fresh = app.test_client()
    page = fresh.get("/login")
    refused = fresh.post(
        "/login",
        data={"email": email, "password": PASSWORD, "csrf_token": csrf_from(page.text)},
    )
    assert refused.status_code == 403
    assert "disabled" in refused.get_data(as_text=True)
    # A wrong password does not reveal that the account exists and is disabled.
    wrong = fresh.post(
        "/login",
        data={"email": email, "password": "wrong password!", "csrf_token": csrf_from(page.text)},
    )
    assert wrong.status_code == 401
    assert "disabled" not in wrong.get_data(as_text=True)
    no_token = _cli(world, "token", "create", email)
    assert no_token.returncode == 2
    assert "is disabled" in no_token.stderr
    listed = json.loads(_cli(world, "user", "list", "--org", "org-b", "--json").stdout)
    assert [u["disabled_at"] is not None for u in listed if u["email"] == email] == [True]

    enabled = _cli(world, "user", "enable", email)
    assert enabled.returncode == 0, enabled.stderr
    login(app.test_client(), email)
    assert _api(browser, token)[0] == 401  # revoked tokens stay revoked


def _token_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-token-id="(\d+)"', html)]


def test_the_account_page_lists_creates_and_revokes_ones_own_tokens(
    app: Flask, world: World
) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    with _db(world) as conn:
        _, others = users.create_api_token(conn, world.emails["a_viewer"], name="not yours")
    assert _token_ids(client.get("/account").get_data(as_text=True)) == []
    assert client.post("/account/tokens", data={"name": "x"}).status_code == 400  # no CSRF
    made = client.post(
        "/account/tokens", data={"csrf_token": csrf, "name": "grafana", "expires_in": "30d"}
    )
    assert made.status_code == 200
    assert made.headers["Cache-Control"] == "no-store"
    token = re.search(r"fh_[A-Za-z0-9_-]+", made.get_data(as_text=True))
    assert token
    assert _api(client, token[0])[0] == 200
    page = client.get("/account").get_data(as_text=True)
    [token_id] = _token_ids(page)
    assert "grafana" in page
    assert "not yours" not in page
    never = client.post(
        "/account/tokens", data={"csrf_token": csrf, "name": "ci", "expires_in": "never"}
    )
    assert "never (until you revoke it)" in never.get_data(as_text=True)
    bad = client.post("/account/tokens", data={"csrf_token": csrf, "expires_in": "soon"})
    assert bad.status_code == 302

    # Another user's token cannot be revoked from here, whatever its id.
    assert (
        client.post(f"/account/tokens/{others['id']}/revoke", data={"csrf_token": csrf}).status_code
        == 404
    )
    assert client.post(f"/account/tokens/{token_id}/revoke").status_code == 400  # no CSRF
    revoked = client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert revoked.status_code == 302
    assert _api(client, token[0])[0] == 401
    assert token_id not in _token_ids(client.get("/account").get_data(as_text=True))


def test_admins_see_and_revoke_tokens_and_disable_users_in_their_scope(
    app: Flask, world: World
) -> None:
    with _db(world) as conn:
        member_token, member_row = users.create_api_token(conn, world.emails["a_member"], name="m")
        b_token, b_row = users.create_api_token(conn, world.emails["b_member"], name="b")
        op_token, _ = users.create_api_token(conn, world.emails["operator"], name="op")
    admin = app.test_client()
    csrf = login(admin, world.emails["a_admin"])
    member_id, b_member_id = world.user_ids["a_member"], world.user_ids["b_member"]
    operator_id = world.user_ids["operator"]

    page = admin.get(f"/admin/users/{member_id}/tokens")
    assert page.status_code == 200
    assert _token_ids(page.get_data(as_text=True)) == [member_row["id"]]
    # Another organisation's user does not exist for this admin; an operator is above them.
    assert admin.get(f"/admin/users/{b_member_id}/tokens").status_code == 404
    assert (
        admin.post(
            f"/admin/users/{b_member_id}/tokens/{b_row['id']}/revoke", data={"csrf_token": csrf}
        ).status_code
        == 404
    )
    # A token id of another organisation through an own user's URL: not found, not revoked.
    assert (
        admin.post(
            f"/admin/users/{member_id}/tokens/{b_row['id']}/revoke", data={"csrf_token": csrf}
        ).status_code
        == 404
    )
    assert (
        admin.post(f"/admin/users/{b_member_id}/disable", data={"csrf_token": csrf}).status_code
        == 404
    )
    assert _api(admin, b_token)[0] == 200

    revoked = admin.post(
        f"/admin/users/{member_id}/tokens/{member_row['id']}/revoke", data={"csrf_token": csrf}
    )
    assert revoked.status_code == 302
    assert _api(admin, member_token)[0] == 401

    member_browser = app.test_client()
    login(member_browser, world.emails["a_member"])
    assert admin.post(f"/admin/users/{member_id}/disable").status_code == 400  # no CSRF
    assert (
        admin.post(f"/admin/users/{member_id}/disable", data={"csrf_token": csrf}).status_code
        == 302
    )
    assert member_browser.get("/devices").status_code == 302
    listing = admin.get("/admin/users").get_data(as_text=True)
    assert re.search(rf'data-user="{re.escape(world.emails["a_member"])}">.*?disabled', listing)
    own = admin.post(f"/admin/users/{world.user_ids['a_admin']}/disable", data={"csrf_token": csrf})
    assert own.status_code == 302
    assert admin.get("/devices").status_code == 200  # refused: an admin cannot disable themself
    assert (
        admin.post(f"/admin/users/{member_id}/enable", data={"csrf_token": csrf}).status_code == 302
    )
    login(app.test_client(), world.emails["a_member"])

    operator = app.test_client()
    op_csrf = login(operator, world.emails["operator"])
    assert admin.get(f"/admin/users/{operator_id}/tokens").status_code in (403, 404)
    assert _token_ids(
        operator.get(f"/admin/users/{b_member_id}/tokens").get_data(as_text=True)
    ) == [b_row["id"]]
    assert (
        operator.post(
            f"/admin/users/{b_member_id}/tokens/{b_row['id']}/revoke", data={"csrf_token": op_csrf}
        ).status_code
        == 302
    )
    assert _api(operator, b_token)[0] == 401
    assert _api(operator, op_token)[0] == 200
