"""Settings from the environment: defaults, production refusing missing secrets, bad ports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fieldhub import cli
from fieldhub.core import config
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


# -- the declared variables and the sample env file -----------------------------------------------
def test_the_sample_env_file_is_rendered_from_the_declared_variables() -> None:
    sample = PROJECT_ROOT / "deploy" / "fieldhub.env.example"
    assert sample.read_text() == config.render_env_example(), (
        "deploy/fieldhub.env.example is out of date: "
        "python -m fieldhub.core.config > deploy/fieldhub.env.example"
    )
    listed = [
        line.lstrip("#").split("=", 1)[0]
        for line in sample.read_text().splitlines()
        if re.match(r"^#?[A-Z][A-Z0-9_]*=", line)
    ]
    assert listed == [var.name for var in config.VARIABLES]


def test_every_variable_config_reads_is_declared() -> None:
    source = Path(config.__file__).read_text()
    body = source.split("VARIABLES: tuple[Variable, ...] = (")[0]
    read = set(
        re.findall(r'"((?:FIELDHUB|DATABASE|READ_DATABASE|MQTT)_[A-Z0-9_]*|DATABASE_URL)"', body)
    )
    assert read, "the pattern no longer finds the variables this module reads"
    assert read <= {var.name for var in config.VARIABLES}


def test_only_config_reads_the_environment() -> None:
    """Others may set variables for a child process (`fieldhub web` does for gunicorn), and
    prometheus_client's PROMETHEUS_MULTIPROC_DIR is its own; benchmarks are not the product."""
    package = PROJECT_ROOT / "fieldhub"
    readers = [
        str(path.relative_to(PROJECT_ROOT))
        for path in package.rglob("*.py")
        if path.name != "config.py"
        and re.search(
            r"os\.getenv|os\.environ\.get|os\.environ\[\"(?!PROMETHEUS)[^\"]+\"\](?!\s*=)",
            path.read_text(),
        )
        and "bench" not in path.parts
    ]
    assert readers == []


def test_the_env_file_fills_in_what_the_environment_leaves_unset(tmp_path: Path) -> None:
    env_file = tmp_path / "fieldhub.env"
    env_file.write_text(
        "# a comment\n; another\n\nFIELDHUB_WEB_PORT=9000\n"
        "DATABASE_URL='postgresql://a:b@db/x'\nFIELDHUB_LOG_FORMAT=\"json\"\n"
    )
    settings = Settings.from_env({"FIELDHUB_ENV_FILE": str(env_file), "FIELDHUB_WEB_PORT": "9100"})
    assert settings.ports.web == 9100  # the environment wins
    assert settings.database_url == "postgresql://a:b@db/x"
    assert settings.log_format == "json"

    env_file.write_text("FIELDHUB_WEB_PORT 9000\n")
    with pytest.raises(ConfigError, match="line 1: expected NAME=value"):
        Settings.from_env({"FIELDHUB_ENV_FILE": str(env_file)})
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.from_env({"FIELDHUB_ENV_FILE": str(tmp_path / "missing.env")})


def test_roles_parse_and_limit_what_production_requires() -> None:
    roles = config.parse_roles("web@1, worker,bridge@broker-2-3")
    assert [str(role) for role in roles] == ["web@1", "worker", "bridge@broker-2-3"]
    with pytest.raises(ConfigError, match="unknown role 'webserver'"):
        config.parse_roles("webserver")
    with pytest.raises(ConfigError, match="bridge needs an instance"):
        config.parse_roles("bridge")
    # A web and worker host does not hold the bridge's MQTT password.
    web_host = {k: v for k, v in PRODUCTION.items() if k != "MQTT_URL"}
    assert Settings.from_env({**web_host, "FIELDHUB_ROLES": "web@1,worker"}).production
    # A bridge host needs it, but not the web app's secret key.
    bridge_host = {k: v for k, v in PRODUCTION.items() if k != "FIELDHUB_SECRET_KEY"}
    with pytest.raises(ConfigError, match="MQTT_URL"):
        Settings.from_env({**bridge_host, "MQTT_URL": "", "FIELDHUB_ROLES": "bridge@broker-1-1"})
    assert Settings.from_env({**bridge_host, "FIELDHUB_ROLES": "bridge@broker-1-1"}).production
    assert config.split_bridge_name("broker-1-12") == ("broker-1", 12)
    with pytest.raises(ConfigError, match="BROKER-INSTANCE"):
        config.split_bridge_name("broker")


def test_bridge_metrics_ports_do_not_collide_across_brokers() -> None:
    one = Settings.from_env({})
    assert [config.bridge_metrics_port(one, "broker-1", n) for n in (1, 2)] == [9108, 9109]
    two = Settings.from_env({"FIELDHUB_LOCAL_BROKERS": "2"})
    ports = {
        config.bridge_metrics_port(two, b, n) for b in ("broker-1", "broker-2") for n in (1, 2)
    }
    assert ports == {9108, 9109, 9118, 9119}


def test_log_format_is_text_or_json() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"FIELDHUB_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="FIELDHUB_LOG_FORMAT"):
        Settings.from_env({"FIELDHUB_LOG_FORMAT": "xml"})


def test_exports_per_user_is_bounded() -> None:
    assert config.Settings.from_env({}).exports_per_user == 2
    assert config.Settings.from_env({"FIELDHUB_EXPORTS_PER_USER": "5"}).exports_per_user == 5
    for bad in ("0", "x", "17"):
        with pytest.raises(config.ConfigError, match="FIELDHUB_EXPORTS_PER_USER"):
            config.Settings.from_env({"FIELDHUB_EXPORTS_PER_USER": bad})
