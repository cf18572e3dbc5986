"""`fieldhub twin ...` against the test's own database."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import CliRunner, one_error_line

pytestmark = pytest.mark.integration


def test_twin_set_and_show(cli: CliRunner) -> None:
    cli("org", "create", "acme")
    cli("device", "create", "boiler-1", "--org", "acme")
    out, _ = cli("twin", "show", "boiler-1")
    assert "desired:   v0  {}" in out
    assert "reported:  nothing yet" in out
    assert "delta:     none: in sync" in out

    out, _ = cli("twin", "set", "boiler-1", "--desired", '{"setpoint": 21.5, "eco": {"on": true}}')
    assert "desired state of boiler-1 is at version 1" in out
    out, _ = cli("twin", "set", "boiler-1", "--desired", '{"eco": null}', "--if-version", "1")
    assert "version 2" in out

    shown = json.loads(cli("twin", "show", "boiler-1", "--json")[0])
    assert shown["desired"]["version"] == 2
    assert shown["desired"]["state"] == {"setpoint": 21.5}
    assert shown["delta"] == {"version": 2, "state": {"setpoint": 21.5}}
    assert shown["reported"]["version"] == 0
    assert [h["version"] for h in shown["history"]] == [2, 1]
    assert shown["history"][0]["source"] == "cli"
    assert shown["history"][0]["actor"].startswith("command line (")
    assert shown["history"][0]["patch"] == {"eco": None}
    out, _ = cli("twin", "show", "boiler-1")
    assert "desired changed by:" in out
    assert '{"eco": null}' in out


def test_twin_set_refuses_bad_input_and_stale_versions_with_one_line(cli: CliRunner) -> None:
    cli("org", "create", "acme")
    cli("device", "create", "boiler-2", "--org", "acme")
    cli("twin", "set", "boiler-2", "--desired", '{"a": 1}')
    assert "at version 1, not 0" in one_error_line(
        cli, "twin", "set", "boiler-2", "--desired", '{"a": 2}', "--if-version", "0"
    )
    assert "not valid JSON" in one_error_line(cli, "twin", "set", "boiler-2", "--desired", "{a")
    assert "must be a JSON object, not an array" in one_error_line(
        cli, "twin", "set", "boiler-2", "--desired", "[1]"
    )
    assert "NUL" in one_error_line(cli, "twin", "set", "boiler-2", "--desired", '{"a": "\\u0000"}')
    assert "unknown device 'nope'" in one_error_line(cli, "twin", "show", "nope")
    assert "unknown device 'nope'" in one_error_line(cli, "twin", "set", "nope", "--desired", "{}")
    shown = json.loads(cli("twin", "show", "boiler-2", "--json")[0])
    assert shown["desired"] == {**shown["desired"], "version": 1, "state": {"a": 1}}


def test_device_attach_show_and_detach(cli: CliRunner) -> None:
    cli("org", "create", "acme")
    cli("org", "create", "other")
    for device_id in ("gw-7", "kid-1"):
        cli("device", "create", device_id, "--org", "acme")
    cli("device", "create", "alien-1", "--org", "other")
    out, _ = cli("device", "attach", "kid-1", "--gateway", "gw-7")
    assert "attached kid-1 to gateway gw-7" in out
    assert json.loads(cli("device", "show", "kid-1", "--json")[0])["gateway_id"] == "gw-7"
    assert json.loads(cli("device", "show", "gw-7", "--json")[0])["children"] == ["kid-1"]
    assert "its own organisation" in one_error_line(
        cli, "device", "attach", "alien-1", "--gateway", "gw-7"
    )
    assert "gateways do not nest" in one_error_line(
        cli, "device", "attach", "gw-7", "--gateway", "kid-1"
    )
    out, _ = cli("device", "detach", "kid-1")
    assert "detached kid-1 from gateway gw-7" in out
    out, _ = cli("device", "detach", "kid-1")
    assert "has no gateway" in out
    assert json.loads(cli("device", "show", "gw-7", "--json")[0])["children"] == []
