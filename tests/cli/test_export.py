"""`fieldhub export DEVICE`: a device's stored readings, one per line, oldest first."""

from __future__ import annotations

import csv
import io
from pathlib import Path

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
    # Booleans are known from the readings themselves (is_bool), not guessed; every value
    # says its type; times are UTC with microseconds.
    assert rows == [
        ["time", "metric", "unit", "seq", "type", "value"],
        ["2026-01-01T00:00:00.000000Z", "door", "", "", "boolean", "true"],
        ["2026-01-01T00:00:01.000000Z", "temp", "", "7", "number", "21.5"],
        ["2026-01-01T00:00:02.000000Z", "mode", "", "8", "text", "eco"],
        ["2026-01-01T00:00:03.250000Z", "door", "", "", "boolean", "false"],
        ["2026-01-01T00:00:03.250000Z", "rh", "%RH", "", "number", "40.0"],
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
        {
            "time": "2026-01-01T00:00:01.000000Z",
            "metric": "temp",
            "unit": "",
            "seq": 7,
            "value": 21.5,
        },
        {
            "time": "2026-01-01T00:00:02.000000Z",
            "metric": "mode",
            "unit": "",
            "seq": 8,
            "value": "eco",
        },
    ]


def test_one_metric_and_unit(device_with_readings: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", device_with_readings, "--metric", "rh", "--unit", "%RH"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [row[1] for row in rows[1:]] == ["rh"]


STORED = (
    "SELECT time, metric, unit, value, text_value, is_bool, seq FROM readings r"
    " JOIN devices d USING (device_key) WHERE d.device_id = %s ORDER BY time, metric, unit, seq"
)


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_an_export_imports_into_another_device_without_loss(
    device_with_readings: str,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    with db.connect(database_url, autocommit=True) as conn:
        key = registry.get_device(conn, device_with_readings)["device_key"]
        # Text a spreadsheet would run, text that reads as a boolean or a number, and a
        # line break: each must come back as the same text.
        conn.execute(
            "INSERT INTO readings (time, device_key, metric, unit, value, text_value, is_bool,"
            " seq) SELECT '2026-01-01T00:00:04.123456Z'::timestamptz + make_interval(secs => i),"
            " %s, 'note', '', NULL, t, false, i FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, i)",
            (key, ["=1+1", "-2", "@A1", "'q", "\ttab", "true", "42", "two\nlines"]),
        )
    assert main(["export", device_with_readings, "--format", fmt]) == 0
    path = tmp_path / f"export.{fmt}"
    path.write_text(capsys.readouterr().out)
    assert main(["import", str(path), "--org", "exp", "--device", "meter-2"]) == 0
    out, err = capsys.readouterr()
    assert "13 new readings" in out, (out, err)
    with db.connect(database_url) as conn:
        original = conn.execute(STORED, (device_with_readings,)).fetchall()
        copied = conn.execute(STORED, ("meter-2",)).fetchall()
    # meter-2 had one reading of its own at 2026-01-01T00:00:00Z (temp 99).
    assert [r for r in copied if r["value"] != 99] == original
    assert len(original) == 5 + 8


def test_unknown_device_is_one_clear_line(
    device_with_readings: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "nobody" in err
    assert len(err.strip().splitlines()) == 1
