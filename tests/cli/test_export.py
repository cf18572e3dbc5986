"""`fieldhub export DEVICE`: a device's stored readings, one per line, oldest first."""

from __future__ import annotations

import csv
import io

import orjson
import pytest

from fieldhub.cli import main
from fieldhub.core import db, registry

pytestmark = pytest.mark.integration


@pytest.fixture
def device_with_readings(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DATABASE_URL", database_url)
    with db.connect(database_url, autocommit=True) as conn:
        registry.create_org(conn, "exp")
        registry.create_device(conn, "meter-1", org="exp")
        registry.create_device(conn, "meter-2", org="exp")
        conn.execute(
            "INSERT INTO readings (time, device_key, metric, unit, value, text_value, is_bool,"
            " seq) SELECT r.time::timestamptz, d.device_key, r.metric, r.unit, r.value::float8,"
            " r.text_value, r.is_bool, r.seq::bigint FROM devices d JOIN (VALUES "
            "('2026-01-01T00:00:01Z', 'meter-1', 'temp', '', 21.5, NULL, false, 7),"
            "('2026-01-01T00:00:00Z', 'meter-1', 'door', '', 1, NULL, true, NULL),"
            "('2026-01-01T00:00:02Z', 'meter-1', 'mode', '', NULL, 'eco', false, 8),"
            "('2026-01-01T00:00:03.25Z', 'meter-1', 'door', '', 0, NULL, true, NULL),"
            "('2026-01-01T00:00:03.25Z', 'meter-1', 'rh', '%RH', 40, NULL, false, NULL),"
            "('2026-01-01T00:00:00Z', 'meter-2', 'temp', '', 99, NULL, false, NULL)"
            ") AS r (time, device_id, metric, unit, value, text_value, is_bool, seq)"
            " ON r.device_id = d.device_id"
        )
    return "meter-1"


def test_csv_lists_the_devices_readings_in_time_order(
    device_with_readings: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", device_with_readings]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    # Booleans are known from the readings themselves (is_bool), not guessed.
    assert rows == [
        ["time", "metric", "value", "seq", "unit"],
        ["2026-01-01T00:00:00Z", "door", "true", "", ""],
        ["2026-01-01T00:00:01Z", "temp", "21.5", "7", ""],
        ["2026-01-01T00:00:02Z", "mode", "eco", "8", ""],
        ["2026-01-01T00:00:03.250000Z", "door", "false", "", ""],
        ["2026-01-01T00:00:03.250000Z", "rh", "40.0", "", "%RH"],
    ]


def test_ndjson_keeps_json_types_and_the_range_is_half_open(
    device_with_readings: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "export",
            device_with_readings,
            "--format",
            "ndjson",
            "--from",
            "2026-01-01T00:00:01Z",
            "--to",
            "1767225603.25",  # epoch seconds of the last reading, which is excluded
        ]
    )
    assert code == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"time": "2026-01-01T00:00:01Z", "metric": "temp", "value": 21.5, "seq": 7},
        {"time": "2026-01-01T00:00:02Z", "metric": "mode", "value": "eco", "seq": 8},
    ]


def test_unknown_device_is_one_clear_line(
    device_with_readings: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "nobody" in err
    assert len(err.strip().splitlines()) == 1
