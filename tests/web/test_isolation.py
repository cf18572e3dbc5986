"""Tenant isolation over EVERY route and API endpoint, enumerated from the URL map, and roles.

A new route with an object in its URL is covered automatically; a route whose parameter this
test does not know fails the test until someone says which object it names."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from tests.web.helpers import World, api_token, login, problem

pytestmark = pytest.mark.integration

# Public descriptions of the API (no objects, no data): the document, its rendering and the
# pages of the problem types.
SKIP_ENDPOINTS = {"static", "api.openapi", "api.docs", "api.problem_types", "api.problem_type"}
# Refused by role before the object is looked up (so a viewer learns nothing either way).
MEMBER_ENDPOINTS = {
    "pages.send_command",
    "pages.cancel_command",
    "pages.acknowledge_alert",
    "pages.set_desired",
}
# Endpoints without an object in the URL that create one: the probe's body is not a valid
# request for them, and what matters is that nothing of the other organisation shows.
CREATING_ENDPOINTS = {"api.create_alert_rule", "api.create_import", "api.put_webhook"}
# Parameters are checked before the object is looked up (the answer is the same whether it
# exists or not); valid ones make the request reach the lookup.
VALID_QUERIES = {"api.telemetry": {"metric": "temperature"}}
VALID_BODIES = {
    "api.update_alert_rule": {
        "name": "too hot",
        "metric": "temperature",
        "condition": "above",
        "threshold_high": 40,
        "device_id": "dev-b1",
    },
    "api.patch_twin": {"desired": {"a": 1}},
    "api.attach_gateway": {"gateway_id": "dev-b1"},
}


def _urls(app: Flask, world: World, org: str) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) for every route, with the objects of organisation `org`."""
    values: dict[str, Any] = {
        "device_id": world.devices[org],
        "command_id": world.commands[org],
        "alert_id": world.alerts[org],
        "user_id": world.user_ids[f"{org}_viewer"],
        "rule_id": world.rules[org],
        "import_id": world.imports[org],
        "token_id": world.tokens[org],
    }
    result = []
    with app.test_request_context():
        from flask import url_for

        for rule in app.url_map.iter_rules():
            if rule.endpoint in SKIP_ENDPOINTS:
                continue
            unknown = set(rule.arguments) - set(values)
            assert not unknown, f"{rule.rule}: teach test_isolation what {unknown} is"
            url = url_for(rule.endpoint, **{k: values[k] for k in rule.arguments})
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                result.append((rule.endpoint, method, url))
    return result


@pytest.mark.parametrize("role", ["a_admin", "a_member", "a_viewer"])
def test_every_page_of_another_org_is_404(app: Flask, world: World, role: str) -> None:
    client = app.test_client()
    csrf = login(client, world.emails[role])
    checked = 0
    for endpoint, method, url in _urls(app, world, "b"):
        if endpoint.startswith("api.") or "<" not in next(
            r.rule for r in app.url_map.iter_rules() if r.endpoint == endpoint
        ):
            continue
        response = client.open(
            url, method=method, data={"csrf_token": csrf}, headers={"X-CSRF-Token": csrf}
        )
        body = response.get_data(as_text=True)
        # Admin pages answer 403 to non-admins before looking anything up; everything else,
        # and admin pages for an admin, must not even admit the object exists.
        expected = {403} if endpoint.startswith("admin.") and role != "a_admin" else {404}
        if endpoint in MEMBER_ENDPOINTS and role == "a_viewer":
            expected = {403}
        assert response.status_code in expected, f"{role} {method} {url} -> {response.status_code}"
        assert world.devices["b"] not in body.replace(url, "")
        checked += 1
    assert checked >= 11


def test_pages_without_objects_show_nothing_of_another_org(app: Flask, world: World) -> None:
    client = app.test_client()
    login(client, world.emails["a_admin"])
    for path in (
        f"/devices/state.json?ids={world.devices['b']}",
        "/devices",
        "/alerts",
        "/admin/devices",
        "/admin/users",
        "/devices?q=dev",
        "/devices?label=site%3Db",
        "/admin/devices/import",
        "/imports",
        "/admin/rules",
        "/admin/webhook",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        body = response.get_data(as_text=True)
        assert world.devices["b"] not in body, path
        assert "b.example" not in body, path
        assert "org-b" not in body, path


def test_every_api_endpoint_of_another_org_is_404(app: Flask, world: World) -> None:
    client = app.test_client()
    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails["a_admin"])}
    checked = 0
    for endpoint, method, url in _urls(app, world, "b"):
        if not endpoint.startswith("api."):
            continue
        rule = next(r.rule for r in app.url_map.iter_rules() if r.endpoint == endpoint)
        # A valid body where one is needed, so the request reaches the lookup of the object.
        body_json = VALID_BODIES.get(endpoint, {"name": "reboot"} if method == "POST" else None)
        query = VALID_QUERIES.get(endpoint)
        response = client.open(
            url, method=method, headers=headers, json=body_json, query_string=query
        )
        text = response.get_data(as_text=True)
        if "<" in rule:
            problem(response, 404, "not-found")
        elif endpoint in CREATING_ENDPOINTS:
            assert response.status_code in (400, 415, 422), (
                f"{method} {url} -> {response.status_code}"
            )
        else:
            assert response.status_code in (200, 204), f"{method} {url} -> {response.status_code}"
        assert world.devices["b"] not in text
        checked += 1
    assert checked >= 10
    listing = client.get("/api/v1/alerts", headers=headers).get_json()
    assert {a["device_id"] for a in listing["alerts"]} == {world.devices["a"]}


def test_operator_sees_every_org(app: Flask, world: World) -> None:
    client = app.test_client()
    login(client, world.emails["operator"])
    body = client.get("/devices").get_data(as_text=True)
    assert world.devices["a"] in body
    assert world.devices["b"] in body
    assert client.get(f"/devices/{world.devices['b']}").status_code == 200
    assert client.get("/admin/orgs").status_code == 200


def test_viewer_cannot_send_or_cancel_commands(app: Flask, world: World) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_viewer"])
    device, command = world.devices["a"], world.commands["a"]
    assert (
        client.post(
            f"/devices/{device}/commands", data={"name": "reboot", "csrf_token": csrf}
        ).status_code
        == 403
    )
    assert (
        client.post(
            f"/devices/{device}/commands/{command}/cancel", data={"csrf_token": csrf}
        ).status_code
        == 403
    )
    assert "command-form" not in client.get(f"/devices/{device}").get_data(as_text=True)
    headers = {"Authorization": "Bearer " + api_token(world.database_url, world.emails["a_viewer"])}
    sent = app.test_client().post(
        f"/api/v1/devices/{device}/commands", json={"name": "reboot"}, headers=headers
    )
    problem(sent, 403, "forbidden")
    cancel = app.test_client().post(f"/api/v1/commands/{command}/cancel", headers=headers)
    assert cancel.status_code == 403


def test_member_cannot_reach_admin_pages(app: Flask, world: World) -> None:
    client = app.test_client()
    csrf = login(client, world.emails["a_member"])
    for endpoint, method, url in _urls(app, world, "a"):
        if endpoint.startswith("admin."):
            response = client.open(url, method=method, data={"csrf_token": csrf})
            assert response.status_code == 403, f"{method} {url} -> {response.status_code}"
    # An admin is not an operator: organisations are off limits.
    admin = app.test_client()
    login(admin, world.emails["a_admin"])
    assert admin.get("/admin/orgs").status_code == 403
