"""systemd units read the way systemd reads them, and a real host's paths mapped into a lab
host's directory."""

from __future__ import annotations

import pytest

from fieldhub.bench.units import HostPaths, UnitError, service, service_section

BRIDGE = """\
# One bridge process.
[Unit]
Description=fieldhub: bridge %i
ExecStart=/not/this/one

[Service]
Type=simple
User=fieldhub
Group=fieldhub
EnvironmentFile=/etc/fieldhub/fieldhub.env
EnvironmentFile=-/etc/fieldhub/bridge-%i.env
Environment=FIELDHUB_A=/var/lib/fieldhub-broker "FIELDHUB_B=two words"
ExecStart=/opt/fieldhub/bin/fieldhub bridge \\
    --name %i
StateDirectory=fieldhub fieldhub-%i
RuntimeDirectory=fieldhub-bridge-%i
NoNewPrivileges=yes
"""

MOSQUITTO = """\
[Service]
Type=notify
ExecStart=/usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf
ExecReload=/bin/kill -HUP $MAINPID
"""
DROP_IN = """\
[Service]
ExecStart=
ExecStart=/usr/sbin/mosquitto -c /var/lib/fieldhub-broker/mosquitto.conf
"""


def test_an_instance_of_a_template_unit() -> None:
    bridge = service("fieldhub-bridge@broker-1-2.service", [BRIDGE])
    assert bridge.argv == ("/opt/fieldhub/bin/fieldhub", "bridge", "--name", "broker-1-2")
    assert bridge.environment_files == (
        ("/etc/fieldhub/fieldhub.env", True),
        ("/etc/fieldhub/bridge-broker-1-2.env", False),
    )
    assert bridge.environment == (
        ("FIELDHUB_A", "/var/lib/fieldhub-broker"),
        ("FIELDHUB_B", "two words"),
    )
    assert (bridge.user, bridge.group) == ("fieldhub", "fieldhub")
    assert bridge.state_directories == ("/var/lib/fieldhub", "/var/lib/fieldhub-broker-1-2")
    assert bridge.runtime_directories == ("/run/fieldhub-bridge-broker-1-2",)


def test_a_drop_in_replaces_the_packaged_command() -> None:
    mosquitto = service("mosquitto.service", [MOSQUITTO, DROP_IN])
    assert mosquitto.argv == (
        "/usr/sbin/mosquitto",
        "-c",
        "/var/lib/fieldhub-broker/mosquitto.conf",
    )
    assert service_section([MOSQUITTO])["ExecStart"] == [
        "/usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf"
    ]


def test_units_the_lab_cannot_run_are_refused_by_name() -> None:
    with pytest.raises(UnitError, match=r"mosquitto\.service: needs exactly one ExecStart="):
        service("mosquitto.service", [MOSQUITTO, "[Service]\nExecStart=/bin/true\n"])
    with pytest.raises(UnitError, match="%i in a unit that is not an instance"):
        service("fieldhub-bridge.service", [BRIDGE])
    with pytest.raises(UnitError, match="specifier %h is not supported"):
        service("x.service", ["[Service]\nExecStart=/bin/true %h\n"])


def test_a_hosts_paths_map_into_its_lab_directory() -> None:
    paths = HostPaths(root="/lab/web-1", install_prefix="/opt/fieldhub", venv="/lab/venv")
    assert paths.map("/opt/fieldhub/bin/fieldhub") == "/lab/venv/bin/fieldhub"
    assert paths.map("/etc/fieldhub/fieldhub.env") == "/lab/web-1/etc/fieldhub/fieldhub.env"
    assert paths.map("/var/lib/fieldhub") == "/lab/web-1/var/lib/fieldhub"
    assert paths.map("/run/fieldhub-web-1/metrics") == "/lab/web-1/run/fieldhub-web-1/metrics"
    # The machine's own programs are shared by every host; anything else is the host's.
    assert paths.map("/usr/sbin/mosquitto") == "/usr/sbin/mosquitto"
    assert paths.map("/var/backups/fieldhub/wal") == "/lab/web-1/var/backups/fieldhub/wal"
    assert paths.map("/usrlocal") == "/lab/web-1/usrlocal"
    assert paths.map_value("--config=/etc/x.conf") == "--config=/lab/web-1/etc/x.conf"
    assert paths.map_value("broker-1") == "broker-1"
    assert paths.environment({"DIR": "/var/lib/fieldhub-broker", "N": "2"}) == {
        "DIR": "/lab/web-1/var/lib/fieldhub-broker",
        "N": "2",
    }
