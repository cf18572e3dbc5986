"""Settings from the environment: defaults, production refusing missing secrets, bad ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldhub import cli
from fieldhub.core.config import PROJECT_ROOT, ConfigError, Ports, Settings

PRODUCTION = {
    "FIELDHUB_ENV": "production",
    "DATABASE_URL": "postgresql://app:pw@db.internal/fieldhub",
    "MQTT_URL": "mqtts://svc.bridge:pw@mqtt.internal:8883",
    "MQTT_DEVICE_URL": "mqtts://mqtt.example.com:8883",
    "FIELDHUB_SECRET_KEY": "k" * 40,
}


def test_defaults_describe_the_local_stack() -> None:
    settings = Settings.from_env({})
    assert settings.env == "development"
    assert not settings.production
    assert settings.home == (PROJECT_ROOT / "var").resolve()
    assert settings.ports == Ports()
    assert settings.ports.postgres == 15432
    assert settings.ports.web == 8000
    assert settings.database_url is None
    assert settings.mqtt_url is None
    assert settings.web_host == "127.0.0.1"
    assert settings.log_level == "INFO"
    assert settings.mosquitto_dir == settings.home / "mosquitto"
    assert settings.mosquitto_pid_file == settings.home / "mosquitto" / "mosquitto.pid"


def test_home_and_ports_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "FIELDHUB_HOME": str(tmp_path),
            "FIELDHUB_PG_PORT": "25432",
            "FIELDHUB_MQTT_PORT": "21883",
            "FIELDHUB_WEB_PORT": "",  # empty means unset
            "FIELDHUB_LOG_LEVEL": "debug",
        }
    )
    assert settings.home == tmp_path.resolve()
    assert settings.log_dir == tmp_path.resolve() / "log"
    assert settings.ports.postgres == 25432
    assert settings.ports.mqtt_devices == 21883
    assert settings.ports.web == 8000
    assert settings.log_level == "DEBUG"


def test_production_refuses_to_start_without_its_secrets() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"FIELDHUB_ENV": "production"})
    message = str(error.value)
    for name in ("DATABASE_URL", "MQTT_URL", "MQTT_DEVICE_URL", "FIELDHUB_SECRET_KEY"):
        assert name in message

    missing_one = {k: v for k, v in PRODUCTION.items() if k != "FIELDHUB_SECRET_KEY"}
    with pytest.raises(ConfigError, match="FIELDHUB_SECRET_KEY") as error:
        Settings.from_env(missing_one)
    assert "DATABASE_URL" not in str(error.value)


def test_production_refuses_a_short_secret_key() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        Settings.from_env({**PRODUCTION, "FIELDHUB_SECRET_KEY": "too-short"})


def test_production_with_everything_set_starts() -> None:
    settings = Settings.from_env(PRODUCTION)
    assert settings.production
    assert settings.database_url == PRODUCTION["DATABASE_URL"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("http", "must be a port number"), ("0", "between 1 and 65535"), ("70000", "between 1")],
)
def test_bad_ports_name_the_variable(raw: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as error:
        Settings.from_env({"FIELDHUB_MQTT_SERVICE_PORT": raw})
    assert "FIELDHUB_MQTT_SERVICE_PORT" in str(error.value)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="FIELDHUB_ENV"):
        Settings.from_env({"FIELDHUB_ENV": "prod"})


def test_cli_reports_a_configuration_error_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FIELDHUB_ENV", "production")
    for name in ("DATABASE_URL", "MQTT_URL", "MQTT_DEVICE_URL", "FIELDHUB_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["status", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fieldhub: configuration error: production mode needs")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_webhook_allowed_networks_are_parsed_cidrs() -> None:
    assert Settings.from_env({}).webhook_allowed_networks == ()
    settings = Settings.from_env(
        {"FIELDHUB_WEBHOOK_ALLOWED_NETWORKS": " 127.0.0.0/8, fd12:3456::/48 ,10.1.2.3"}
    )
    assert [str(n) for n in settings.webhook_allowed_networks] == [
        "127.0.0.0/8",
        "fd12:3456::/48",
        "10.1.2.3/32",
    ]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("localhost", "not a network in CIDR form"),
        ("10.0.0.0/33", "not a network in CIDR form"),
        ("10.0.0.0/8,,192.168.0.0/16", "an empty entry"),
    ],
)
def test_a_malformed_webhook_network_is_a_clear_startup_error(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"FIELDHUB_WEBHOOK_ALLOWED_NETWORKS": raw})
    assert "FIELDHUB_WEBHOOK_ALLOWED_NETWORKS" in str(error.value)
    assert says in str(error.value)
