"""The multi-host layout's pure rules: hosts and roles, commands, env files, the servers'
configuration as the deploy guide installs it, accounting; and the user's server-sent-events
parser."""

from __future__ import annotations

import ipaddress

import pytest

from fieldhub.bench import hosts_plan as plan
from fieldhub.bench.hosts_user import sse_events
from fieldhub.bench.netlab import BENCH_NETWORK
from fieldhub.bench.units import HostPaths
from fieldhub.core.brokers import home_broker
from fieldhub.core.config import PROJECT_ROOT, Role, Settings, parse_env_file

PATHS = HostPaths(root="/lab/h", install_prefix="/opt/fieldhub", venv="/lab/venv")


def test_layout_has_every_tier_and_each_bridge_host_consumes_from_both_brokers() -> None:
    hosts = {host.name: host for host in plan.layout()}
    assert {"db", "broker-1", "broker-2", "bridge-1", "bridge-2", "web-1", "web-2", "nginx",
            "worker", "load", "ops"} <= hosts.keys()  # fmt: skip
    assert [str(r) for r in hosts["bridge-1"].roles] == ["bridge@broker-1-1", "bridge@broker-2-1"]
    assert [str(r) for r in hosts["bridge-2"].roles] == ["bridge@broker-1-2", "bridge@broker-2-2"]
    assert [str(r) for r in hosts["broker-2"].roles] == ["broker@broker-2", "auth-sync@broker-2"]
    # The load is no role of a deployment: FIELDHUB_ROLES does not name it.
    assert hosts["load"].unit_roles == ()
    assert ipaddress.IPv4Network(plan.SUBNET).subnet_of(BENCH_NETWORK)


def test_each_role_is_a_shipped_unit_or_a_server_command() -> None:
    assert plan.unit_name(Role("bridge", "broker-1-2")) == "fieldhub-bridge@broker-1-2.service"
    assert plan.unit_name(Role("broker", "broker-1")) == "mosquitto.service"
    assert plan.unit_name(Role("migrate")) == "fieldhub-migrate.service"
    for files in plan.UNIT_FILES.values():
        for name in files:
            if not name.startswith("/"):
                assert (PROJECT_ROOT / "deploy" / "systemd" / name).is_file(), name
    argv = plan.command(Role("simulate"), {"devices": "1000", "interval": "5", "home_after": "20"})
    assert argv[:4] == ["/opt/fieldhub/bin/fieldhub", "simulate", "--devices", "1000"]
    assert argv[-4:] == ["--ledger", plan.LEDGER_DIR, "--home-after", "20"]
    with pytest.raises(ValueError, match="role database needs a value for 'pg_bindir'"):
        plan.command(Role("database"), {})


ADDRESSES = {
    name: f"198.18.0.{10 + i}"
    for i, name in enumerate(
        ("db", "broker-1", "broker-2", "bridge-1", "web-1", "ops", "load", "nginx")
    )
}
SECRETS = plan.Secrets("db pass/with:chars", "bridge-secret", "k" * 48)


def _env(host: str) -> dict[str, str]:
    plans = {h.name: h for h in plan.layout()}
    return plan.host_env(plans[host], ADDRESSES, SECRETS)


def test_env_files_hold_only_what_each_hosts_roles_need() -> None:
    web = _env("web-1")
    assert web["FIELDHUB_ROLES"] == "web@1"
    assert web["DATABASE_URL"] == (
        "postgresql://fieldhub:db%20pass%2Fwith%3Achars@198.18.0.10:5432/fieldhub?sslmode=require"
    )
    assert web["FIELDHUB_WEB_HOST"] == "198.18.0.14"
    assert web["FIELDHUB_TRUSTED_PROXIES"] == "198.18.0.17/32"  # nginx
    assert "MQTT_URL" not in web  # the bridges' broker password stays on bridge hosts
    bridge = _env("bridge-1")
    assert bridge["MQTT_URL"] == "mqtt://svc.bridge:bridge-secret@198.18.0.11:1884"
    assert "FIELDHUB_SECRET_KEY" not in bridge
    assert bridge["FIELDHUB_BROKER_SERVICE_URLS"] == (
        "broker-1=mqtt://198.18.0.11:1884,broker-2=mqtt://198.18.0.12:1884"
    )
    broker = _env("broker-2")
    assert broker["FIELDHUB_MQTTS_PORT"] == "8883"
    assert "MQTT_URL" not in broker
    assert _env("db") == {
        "FIELDHUB_HOME": "/var/lib/fieldhub",
        "FIELDHUB_ENV": "production",
        "FIELDHUB_ROLES": "database",
    }
    # Each production host's file passes fieldhub's own production check for its roles.
    for host in ("web-1", "bridge-1", "broker-2", "ops", "db"):
        assert Settings.from_env(_env(host)).production
    assert "FIELDHUB_ENV" not in _env("load")  # the simulator is a test tool


def test_env_file_text_is_read_back_as_systemd_reads_it() -> None:
    env = {"A": "1", "DATABASE_URL": "postgresql://u:p@h:5432/d", "EMPTY": ""}
    assert parse_env_file(plan.render_env_file(env)) == env
    with pytest.raises(ValueError, match="quotes"):
        plan.render_env_file({"A": 'say "hi"'})


def test_postgresql_settings_from_the_shipped_file_fit_a_lab_host() -> None:
    conf = (
        "listen_addresses = '*'   # pg_hba decides\n"
        "shared_buffers = 4GB\n"
        "archive_command = 'test ! -f /var/backups/fieldhub/wal/%f && cp %p "
        "/var/backups/fieldhub/wal/%f'\n"
        "# a comment line\n"
    )
    settings = plan.postgresql_settings(conf, PATHS)
    assert settings["listen_addresses"] == "'*'"
    assert settings["shared_buffers"] == plan.LAB_POSTGRESQL_MEMORY["shared_buffers"]
    assert settings["archive_command"] == (
        "'test ! -f /lab/h/var/backups/fieldhub/wal/%f && cp %p /lab/h/var/backups/fieldhub/wal/%f'"
    )
    shipped = (PROJECT_ROOT / "deploy" / "postgresql" / "fieldhub.conf").read_text()
    assert plan.postgresql_settings(shipped, PATHS)["shared_preload_libraries"] == "'timescaledb'"


def test_the_nginx_site_is_the_shipped_one_with_the_labs_addresses() -> None:
    shipped = (PROJECT_ROOT / "deploy" / "nginx" / "fieldhub.conf").read_text()
    site = plan.nginx_site(shipped, ["198.18.0.16:8000", "198.18.0.17:8000"], PATHS)
    assert "server 198.18.0.16:8000" in site
    assert "server 198.18.0.17:8000" in site
    assert "10.0.0." not in site
    assert f"allow {plan.SUBNET}" in site
    assert "ssl_certificate /lab/h/etc/ssl/fieldhub/fullchain.pem;" in site
    with pytest.raises(ValueError, match=r"no longer has 10\.0\.0\.21:8000"):
        plan.nginx_site("server other:8000;", ["a:1", "b:2"], PATHS)
    main = plan.nginx_main_conf(PATHS)
    assert "pid /lab/h/run/nginx.pid;" in main
    assert "include /lab/h/etc/nginx/sites-enabled/*;" in main


def test_tally_counts_per_device_and_message() -> None:
    acked = [("d1", 1), ("d1", 2), ("d1", 3), ("d2", 1), ("d2", 2)]
    stored = [("d1", 1, 1), ("d1", 2, 2), ("d2", 1, 1), ("d2", 2, 1), ("d2", 3, 1)]
    result = plan.tally(acked, stored)
    assert result == plan.Tally(
        published=5,
        stored=5,
        lost=1,  # d1/3
        doubled=1,  # d1/2 twice
        stored_unacknowledged=1,  # d2/3: stored, its PUBACK never reached the device
        devices_with_losses=1,
    )
    assert plan.tally(acked, [(d, s, 1) for d, s in acked]).lost == 0


def test_a_torn_ledger_line_is_not_an_acknowledged_message() -> None:
    assert plan.parse_ledger("d1 1 1700000000000\nd1 2 1700000001000\nd1 3 17000") == [
        ("d1", 1, 1700000000000),
        ("d1", 2, 1700000001000),
    ]


def test_the_ledger_names_the_broker_that_acknowledged() -> None:
    text = "d1 1 1700000000000 broker-1\nd1 2 1700000001000 broker-2\nd1 3 1700000002000\n"
    assert plan.parse_ledger_brokers(text) == [
        ("d1", 1, 1700000000000, "broker-1"),
        ("d1", 2, 1700000001000, "broker-2"),
        ("d1", 3, 1700000002000, ""),  # a ledger from before the broker column
    ]
    assert plan.parse_ledger(text)[1] == ("d1", 2, 1700000001000)


def test_longest_gap_and_percentiles() -> None:
    assert plan.longest_gap([11.0, 12.0, 16.5], 10.0, 20.0) == 4.5
    assert plan.longest_gap([], 10.0, 20.0) == 10.0
    assert plan.percentile([], 0.5) is None
    assert plan.percentile([3.0], 0.95) == 3.0
    assert plan.percentile([float(n) for n in range(1, 101)], 0.5) == pytest.approx(50.5)


def test_devices_per_broker_follows_the_registrys_homing() -> None:
    chosen = plan.devices_per_broker(1000, per_broker=2)
    for broker, devices in chosen.items():
        assert len(devices) == 2
        assert all(home_broker(d, plan.BROKERS) == broker for d in devices)


def test_server_sent_events_are_parsed_as_eventsource_does() -> None:
    stream = [
        b"retry: 2000\n", b"\n",
        b"event: hello\n", b'data: {"device_id": "d1"}\n', b"\n",
        b": keepalive\n", b"\n",
        b"event: readings\n", b"data: [1,\n", b"data: 2]\n", b"\n",
    ]  # fmt: skip
    assert list(sse_events(iter(stream))) == [
        ("retry", "2000"),
        ("hello", '{"device_id": "d1"}'),
        ("readings", "[1,\n2]"),
    ]
