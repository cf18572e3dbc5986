"""What the real bridge refuses is what `fieldhub dead-letters` shows, by device key."""

from __future__ import annotations

import orjson
import pytest

from fieldhub.cli import main
from fieldhub.core import db, registry
from tests.support import BridgeProcess, DeviceClient, TestStack, wait_for

pytestmark = pytest.mark.integration

REFUSED = [
    (b"{not json", "invalid_json"),
    (orjson.dumps({"ts": 4102444800, "values": {"t": 1}}), "ts_in_future"),  # 2100
    (b"\xff\xfe\x00binary", "invalid_utf8"),
]


def test_the_cli_shows_what_the_bridge_refused_and_a_new_device_of_the_id_starts_clean(
    stack: TestStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = stack.create_devices(["dl-1"])
    device = DeviceClient(stack.broker.mqtt_devices, "dl-1", secrets["dl-1"])
    with BridgeProcess(stack) as bridge:
        bridge.start().wait_ready()
        device.connect()
        try:
            for payload, _ in REFUSED:
                device.publish("devices/dl-1/telemetry", payload)
            wait_for(
                lambda: len(stack.query("SELECT id FROM dead_letters")) == len(REFUSED),
                timeout=20,
                what="every refused message dead-lettered",
            )
        finally:
            device.close()
    monkeypatch.setenv("DATABASE_URL", stack.database_url)
    assert main(["dead-letters", "--device", "dl-1", "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    # Newest first.
    assert [letter["reason"] for letter in shown] == [reason for _, reason in REFUSED][::-1]
    by_reason = {letter["reason"]: letter for letter in shown}
    assert by_reason["invalid_json"]["payload_preview"] == "{not json"
    assert by_reason["invalid_utf8"]["payload_encoding"] == "hex"
    assert by_reason["invalid_utf8"]["payload_preview"] == REFUSED[2][0].hex(" ")
    assert "clock" in by_reason["ts_in_future"]["explanation"]
    assert by_reason["ts_in_future"]["detail"]
    assert {letter["topic"] for letter in shown} == {"devices/dl-1/telemetry"}

    with db.connect(stack.database_url, autocommit=True) as conn:
        org = registry.get_device(conn, "dl-1")["org"]
        registry.delete_device(conn, "dl-1")
        registry.create_device(conn, "dl-1", org=org)
    assert main(["dead-letters", "--device", "dl-1", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == []
