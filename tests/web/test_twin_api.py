"""/api/v1/devices/{id}/twin and /gateway: what callers of each role get."""

from __future__ import annotations

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.rows import dict_row

from fieldhub.core import registry
from tests.web.helpers import World, api_token, problem

pytestmark = pytest.mark.integration


def _client(app: Flask, world: World, role: str) -> tuple[FlaskClient, dict[str, str]]:
    return app.test_client(), {
        "Authorization": f"Bearer {api_token(world.database_url, world.emails[role])}"
    }


def test_read_patch_and_version_checks(app: Flask, world: World) -> None:
    device = world.devices["a"]
    client, member = _client(app, world, "a_member")
    url = f"/api/v1/devices/{device}/twin"
    empty = client.get(url, headers=member)
    assert empty.status_code == 200
    assert empty.headers["ETag"] == '"0"'
    assert empty.get_json()["desired"] == {"version": 0, "state": {}, "updated_at": None}
    assert empty.get_json()["delta"] == {"version": 0, "state": {}}

    first = client.patch(
        url, json={"desired": {"interval": 30, "led": {"on": True}}}, headers=member
    )
    assert first.status_code == 200, first.get_json()
    assert first.headers["ETag"] == '"1"'
    body = first.get_json()
    assert body["desired"]["state"] == {"interval": 30, "led": {"on": True}}
    assert body["delta"] == {"version": 1, "state": {"interval": 30, "led": {"on": True}}}
    assert body["reported"] == {"version": 0, "seq": None, "state": {}, "updated_at": None}

    stale = client.patch(
        url, json={"desired": {"interval": 5}}, headers={**member, "If-Match": '"0"'}
    )
    assert stale.status_code == 412
    assert problem(stale, 412, "precondition-failed")["current_version"] == 1
    ok = client.patch(url, json={"desired": {"led": None}}, headers={**member, "If-Match": '"1"'})
    assert ok.status_code == 200
    assert ok.get_json()["desired"] == {
        **ok.get_json()["desired"],
        "version": 2,
        "state": {"interval": 30},
    }
    # A change that changes nothing makes no version.
    same = client.patch(url, json={"desired": {"interval": 30}}, headers=member)
    assert same.headers["ETag"] == '"2"'

    history = client.get(f"{url}/history", headers=member).get_json()["changes"]
    assert [(c["version"], c["actor"], c["source"]) for c in history] == [
        (2, world.emails["a_member"], "api"),
        (1, world.emails["a_member"], "api"),
    ]


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        ({"interval": 3}, {}, 422, "interval is not a member of this object (and 1 more)"),
        ({"desired": {"a": 1}, "extra": 1}, {}, 422, "extra is not a member"),
        ({"desired": [1]}, {}, 422, "must be a JSON object"),
        ({"desired": {"a": "\u0000"}}, {}, 422, "NUL"),
        ({"desired": {"a": 1}}, {"If-Match": "abc"}, 400, "If-Match must name a desired version"),
    ],
)
def test_bad_patches_are_refused_and_change_nothing(
    app: Flask, world: World, body: object, headers: dict[str, str], status: int, says: str
) -> None:
    client, member = _client(app, world, "a_member")
    url = f"/api/v1/devices/{world.devices['a']}/twin"
    response = client.patch(url, json=body, headers={**member, **headers})
    assert response.status_code == status
    assert says in response.get_json()["detail"]
    assert client.get(url, headers=member).headers["ETag"] == '"0"'


def test_viewers_read_and_other_organisations_see_nothing(app: Flask, world: World) -> None:
    client, viewer = _client(app, world, "a_viewer")
    url = f"/api/v1/devices/{world.devices['a']}/twin"
    assert client.get(url, headers=viewer).status_code == 200
    assert client.patch(url, json={"desired": {"a": 1}}, headers=viewer).status_code == 403
    _, other = _client(app, world, "b_admin")
    assert client.get(url, headers=other).status_code == 404
    assert client.patch(url, json={"desired": {"a": 1}}, headers=other).status_code == 404
    assert client.get(f"{url}/history", headers=other).status_code == 404


def test_admins_attach_and_detach_gateways(app: Flask, world: World) -> None:
    child = world.devices["a"]
    client, admin = _client(app, world, "a_admin")
    _, member = _client(app, world, "a_member")
    url = f"/api/v1/devices/{child}/gateway"
    # A device of another organisation is no gateway for this one.
    refused = client.put(url, json={"gateway_id": world.devices["b"]}, headers=admin)
    assert refused.status_code == 422
    assert client.put(url, json={"gateway_id": child}, headers=admin).status_code == 422
    assert client.put(url, json={"gateway_id": "x"}, headers=member).status_code == 403
    with psycopg.connect(world.database_url, autocommit=True, row_factory=dict_row) as conn:
        registry.create_device(conn, "gw-api", org="org-a")
    attached = client.put(url, json={"gateway_id": "gw-api"}, headers=admin)
    assert attached.status_code == 200
    assert attached.get_json()["gateway_id"] == "gw-api"
    assert (
        client.get(f"/api/v1/devices/{child}", headers=admin).get_json()["gateway_id"] == "gw-api"
    )
    assert client.delete(url, headers=member).status_code == 403
    assert client.delete(url, headers=admin).status_code == 204
    assert client.get(f"/api/v1/devices/{child}", headers=admin).get_json()["gateway_id"] is None
