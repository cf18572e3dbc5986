"""Homing devices on brokers (fieldhub.core.brokers) and the broker settings: pure unit tests, and
one CLI test against the real database."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from fieldhub.cli import main
from fieldhub.core import endpoints
from fieldhub.core.brokers import broker_preference, home_broker
from fieldhub.core.config import ConfigError, Settings, configured_broker_names

DEVICES = [f"sensor-{n:05d}" for n in range(6000)]


def test_the_home_is_stable_and_independent_of_the_list_order() -> None:
    brokers = ["broker-1", "broker-2", "broker-3"]
    homes = [home_broker(d, brokers) for d in DEVICES[:200]]
    assert homes == [home_broker(d, brokers) for d in DEVICES[:200]]
    assert homes == [home_broker(d, list(reversed(brokers))) for d in DEVICES[:200]]
    # Pinned values: a change of the hash would silently re-home devices created before it
    # (their stored broker stays, but new devices of a fleet would land differently).
    # (values computed once from blake2b and written down here).
    two = ["broker-2", "broker-1", "broker-2", "broker-2", "broker-1", "broker-2"]
    assert [home_broker(f"dev-{n}", ["broker-1", "broker-2"]) for n in range(6)] == two
    three = ["broker-2", "broker-1", "broker-3", "broker-2", "broker-1", "broker-2"]
    assert [home_broker(f"dev-{n}", brokers) for n in range(6)] == three


@pytest.mark.parametrize("count", [2, 3])
def test_devices_spread_about_evenly(count: int) -> None:
    brokers = [f"broker-{n}" for n in range(1, count + 1)]
    shares = Counter(home_broker(d, brokers) for d in DEVICES)
    assert set(shares) == set(brokers)
    expected = len(DEVICES) / count
    for broker, devices in shares.items():
        # 6,000 devices: one standard deviation is about 1 % of them; 5 % is a wide margin.
        assert abs(devices - expected) < 0.05 * len(DEVICES), (broker, shares)


@pytest.mark.parametrize("before", [1, 2, 3])
def test_adding_a_broker_moves_about_one_nth_and_only_to_it(before: int) -> None:
    old = [f"broker-{n}" for n in range(1, before + 1)]
    new = [*old, f"broker-{before + 1}"]
    moved = [d for d in DEVICES if home_broker(d, old) != home_broker(d, new)]
    assert {home_broker(d, new) for d in moved} == {new[-1]}
    share = len(moved) / len(DEVICES)
    assert abs(share - 1 / len(new)) < 0.03, share


def test_one_broker_takes_every_device_and_none_is_an_error() -> None:
    assert {home_broker(d, ["broker-1"]) for d in DEVICES[:100]} == {"broker-1"}
    with pytest.raises(ValueError, match="no brokers"):
        home_broker("x", [])


def test_standbys_spread_a_lost_brokers_devices_over_all_the_others() -> None:
    brokers = ["b1", "b2", "b3", "b4"]
    orders = {d: broker_preference(d, home_broker(d, brokers), brokers) for d in DEVICES[:4000]}
    for device_id, order in orders.items():
        assert sorted(order) == sorted(brokers)
        assert order[0] == home_broker(device_id, brokers)
    # The devices of b1 fall back to b2, b3 and b4 about equally, not all onto one of them.
    fallback = [order[1] for order in orders.values() if order[0] == "b1"]
    shares = {b: fallback.count(b) / len(fallback) for b in ("b2", "b3", "b4")}
    assert all(0.25 < share < 0.42 for share in shares.values()), shares
    # A device homed by hand keeps that home first, and the order is stable.
    assert broker_preference("x", "b3", brokers)[0] == "b3"
    assert broker_preference("x", "b3", brokers) == broker_preference("x", "b3", brokers)
    assert (
        broker_preference("x", "elsewhere", brokers)[1:]
        == broker_preference("x", "b9", brokers)[1:]
    )


def test_device_urls_list_home_first_then_every_other_broker() -> None:
    env = {
        "FIELDHUB_HOME": "/tmp/fh",
        "FIELDHUB_BROKERS": "east=mqtts://east.example:8883,west=mqtts://west.example:8883",
    }
    settings = Settings.from_env(env)
    assert endpoints.device_mqtt_urls(settings, "d1", "west") == [
        "mqtts://west.example:8883",
        "mqtts://east.example:8883",
    ]
    # A home this host does not know is left out, the standbys are still given.
    assert sorted(endpoints.device_mqtt_urls(settings, "d1", "north")) == [
        "mqtts://east.example:8883",
        "mqtts://west.example:8883",
    ]
    single = Settings.from_env({"FIELDHUB_HOME": "/tmp/fh"})
    assert endpoints.device_mqtt_urls(single, "d1", "broker-1") == ["mqtt://127.0.0.1:11883"]


# -- settings ---------------------------------------------------------------------------------
def test_unset_means_one_local_broker_as_before() -> None:
    settings = Settings.from_env({"FIELDHUB_HOME": "/tmp/fh"})
    assert settings.broker_names == ("broker-1",)
    assert configured_broker_names({}) == ("broker-1",)
    assert endpoints.device_mqtt_url(settings) == "mqtt://127.0.0.1:11883"
    assert endpoints.device_mqtt_url(settings, "broker-1") == "mqtt://127.0.0.1:11883"


def test_local_brokers_get_ports_a_thousand_apart() -> None:
    env = {"FIELDHUB_HOME": "/tmp/fh", "FIELDHUB_LOCAL_BROKERS": "2", "MQTT_URL": ""}
    settings = Settings.from_env(env)
    assert settings.broker_names == ("broker-1", "broker-2")
    assert endpoints.device_mqtt_url(settings, "broker-2") == "mqtt://127.0.0.1:12883"
    assert endpoints.local_broker_ports(settings, "broker-2") == endpoints.BrokerPorts(
        12883, 19883, 12884, 19884
    )
    assert endpoints.local_broker_dir(settings, "broker-1") == settings.mosquitto_dir
    assert endpoints.local_broker_dir(settings, "broker-2").name == "mosquitto-broker-2"
    with pytest.raises(ConfigError, match="say which one"):
        endpoints.check_broker(settings, None)
    with pytest.raises(ConfigError, match="not configured"):
        endpoints.check_broker(settings, "broker-3")


def test_configured_brokers_give_device_and_service_urls() -> None:
    env = {
        "FIELDHUB_HOME": "/tmp/fh",
        "FIELDHUB_BROKERS": "east=mqtts://east.example:8883, west=mqtts://west.example:8883",
        "FIELDHUB_BROKER_SERVICE_URLS": "east=mqtt://10.0.0.1:1884,west=mqtt://10.0.0.2:1884",
        "MQTT_URL": "mqtt://svc.bridge:s3cret@10.0.0.1:1884",
    }
    settings = Settings.from_env(env)
    assert settings.broker_names == ("east", "west")
    assert endpoints.device_mqtt_url(settings, "west") == "mqtts://west.example:8883"
    west = endpoints.bridge_mqtt(settings, "west")
    assert (west.host, west.port, west.username, west.password) == (
        "10.0.0.2",
        1884,
        "svc.bridge-1",
        "s3cret",
    )
    # Each instance logs in as an account of its own (its durable session), on every broker.
    assert endpoints.bridge_mqtt(settings, "east", 3).username == "svc.bridge-3"
    assert endpoints.bridge_mqtt(settings, "west", 3).username == "svc.bridge-3"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"FIELDHUB_BROKERS": "broker-1"}, "NAME=mqtt://HOST:PORT"),
        ({"FIELDHUB_BROKERS": "Broker=mqtt://h:1"}, "lowercase"),
        ({"FIELDHUB_BROKERS": "b=http://h:1"}, "must start with mqtt://"),
        ({"FIELDHUB_BROKERS": "b=mqtt://h:1,b=mqtt://h:2"}, "listed twice"),
        (
            {"FIELDHUB_BROKERS": "b=mqtt://h:1", "FIELDHUB_BROKER_SERVICE_URLS": "c=mqtt://h:2"},
            "does not list: c",
        ),
        ({"FIELDHUB_LOCAL_BROKERS": "0"}, "FIELDHUB_LOCAL_BROKERS"),
    ],
)
def test_bad_broker_settings_are_named(variables: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"FIELDHUB_HOME": "/tmp/fh", **variables})


# -- the CLI with two configured brokers (real PostgreSQL) ----------------------------------
TWO_BROKERS = "broker-1=mqtts://one.example:8883,broker-2=mqtts://two.example:8883"


@pytest.mark.integration
def test_cli_homes_created_and_imported_devices_on_their_brokers(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FIELDHUB_BROKERS", TWO_BROKERS)
    urls = dict(pair.split("=") for pair in TWO_BROKERS.split(","))
    assert main(["org", "create", "fleet"]) == 0
    created = {}
    for device_id in ("pump-1", "pump-2", "pump-3", "pump-4"):
        capsys.readouterr()
        assert main(["device", "create", device_id, "--org", "fleet", "--json"]) == 0
        created[device_id] = json.loads(capsys.readouterr().out)
    for device_id, creds in created.items():
        home = home_broker(device_id, ["broker-1", "broker-2"])
        assert (creds["broker"], creds["mqtt_url"]) == (home, urls[home])

    source = tmp_path / "fleet.csv"
    source.write_text("".join(f"valve-{n}\n" for n in range(20)))
    out = tmp_path / "fleet-credentials.csv"
    assert main(["device", "import", str(source), "--org", "fleet", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {row["broker"] for row in rows} == {"broker-1", "broker-2"}
    with psycopg.connect(database_url) as conn:
        stored: dict[str, str] = dict(
            conn.execute("SELECT device_id, broker FROM devices").fetchall()
        )
    for row in rows:
        assert stored[row["device_id"]] == row["broker"]
        assert row["mqtt_url"] == urls[row["broker"]]
    for device_id, creds in created.items():
        assert stored[device_id] == creds["broker"]

    # --broker overrides the choice, but only with a configured broker.
    capsys.readouterr()
    assert main(["device", "create", "pinned", "--org", "fleet", "--broker", "broker-2"]) == 0
    assert main(["device", "create", "lost", "--org", "fleet", "--broker", "broker-9"]) != 0
    assert "broker 'broker-9' is not configured" in capsys.readouterr().err
