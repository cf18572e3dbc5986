"""File imports: bad lines reported, good lines imported, no duplicates, rollups cover them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from fieldhub import cli
from fieldhub.analysis import import_parse, service
from fieldhub.analysis.jobs import job_named
from fieldhub.analysis.worker import run_if_due
from fieldhub.core.config import Settings
from fieldhub.core.db import Conn
from fieldhub.core.decode import Reading
from tests.analysis.conftest import ORG
from tests.analysis.test_rollups import mismatches

NOW = time.time()
BASE = int(NOW) - 3 * 86400  # three days ago: older than any rollup watermark


def csv_file(rows: int, bad: dict[int, str]) -> bytes:
    """A long-form CSV of `rows` readings of two devices; `bad` replaces lines (1-based)."""
    lines = ["time,device_id,metric,value"]
    for i in range(rows):
        lines.append(f"{BASE + i * 10},{'imp-a' if i % 2 else 'imp-b'},temp,{i / 4}")
    for number, text in bad.items():
        lines[number - 1] = text
    return ("\n".join(lines) + "\n").encode()


def run_queued(db: Conn) -> dict[str, Any]:
    result = run_if_due(db, job_named("imports"), Settings.from_env({}), worker="t", force=True)
    assert result is not None
    assert result.outcome == "ok", result.error
    return result.details


pytestmark = pytest.mark.integration


def test_bad_lines_are_reported_good_ones_imported_and_reimport_adds_nothing(
    db: Conn, org_id: int, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("imp-a", "imp-b")
    content = csv_file(
        400,
        {
            5: "not,a,valid",
            17: f"{BASE},imp-a,temp,NaN",
            30: f"{BASE},stranger,temp,1",
            31: "1999-12-31T23:59:59Z,imp-a,temp,1",
            44: f"{BASE},imp-a,bad metric!,1",
        },
    )
    created = service.create_import(db, org_id=org_id, content=content, filename="data.csv")
    assert created["status"] == "queued"
    assert created["format"] == "csv"
    run_queued(db)
    done = service.get_import(db, org_id, created["id"])
    assert done["status"] == "done"
    assert done["rows_rejected"] == 5
    assert done["rows_imported"] == 400 - 5
    assert done["processed_bytes"] == done["total_bytes"] == len(content)
    assert done["rows_per_s"] > 0
    assert [(e["line"], e["reason"]) for e in done["errors"]] == [
        (5, "3 fields, the header has 4"),
        (17, "value 'NaN' is not a finite number"),
        (30, "unknown device 'stranger'"),
        (31, "time is before 2000-01-01 (an unset clock?)"),
        (44, "metric 'bad metric!' is not a valid metric name"),
    ]
    count = db.execute("SELECT count(*) AS n FROM readings").fetchone()
    assert count is not None
    assert count["n"] == 395
    # The rollups cover the imported range at once, with no rollup pass in between.
    assert mismatches(db) == []

    again = service.create_import(db, org_id=org_id, content=content, filename="data.csv")
    run_queued(db)
    redone = service.get_import(db, org_id, again["id"])
    assert redone["status"] == "done"
    assert redone["rows_imported"] == 0
    assert redone["processed_rows"] == 395
    count = db.execute("SELECT count(*) AS n FROM readings").fetchone()
    assert count is not None
    assert count["n"] == 395


def test_ndjson_and_senml_files(
    db: Conn, org_id: int, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("nd-1", "nd-2")
    ndjson = b"\n".join(
        [
            orjson.dumps({"device_id": "nd-1", "ts": BASE, "values": {"temp": 1.5, "on": True}}),
            orjson.dumps({"device_id": "nd-2", "ts": BASE * 1000, "values": {"mode": "eco"}}),
            b"{broken",
            orjson.dumps({"device_id": "nd-1", "values": {"temp": 3}}),
            orjson.dumps({"device_id": "nd-1", "ts": BASE + 5, "values": {"temp": "x" * 300}}),
        ]
    )
    first = service.create_import(db, org_id=org_id, content=ndjson, filename="x.ndjson")
    senml = b"\n".join(
        [
            orjson.dumps([{"bn": "env:", "bt": BASE + 60, "n": "temp", "v": 20.5}]),
            orjson.dumps([{"n": "temp", "t": BASE + 120, "v": 21}, {"n": "temp", "vd": "AA"}]),
        ]
    )
    second = service.create_import(
        db, org_id=org_id, content=senml, filename="s.senml", device_id="nd-2"
    )
    details = run_queued(db)
    assert [d["status"] for d in details["imports"]] == ["done", "done"]
    nd = service.get_import(db, org_id, first["id"])
    assert nd["rows_imported"] == 3
    assert [e["line"] for e in nd["errors"]] == [3, 4, 5]
    assert "ts is missing" in nd["errors"][1]["reason"]
    assert nd["errors"][2]["reason"].startswith("string_too_long")
    sm = service.get_import(db, org_id, second["id"])
    assert sm["rows_imported"] == 1
    assert [e["line"] for e in sm["errors"]] == [2]
    rows = db.execute(
        "SELECT device_id, metric, value, text_value FROM readings JOIN devices USING (device_key)"
        " ORDER BY device_id, metric"
    ).fetchall()
    assert [(r["device_id"], r["metric"], r["value"], r["text_value"]) for r in rows] == [
        ("nd-1", "on", 1.0, None),
        ("nd-1", "temp", 1.5, None),
        ("nd-2", "env:temp", 20.5, None),
        ("nd-2", "mode", None, "eco"),
    ]
    latest = db.execute("SELECT value FROM latest_values WHERE metric = 'on'").fetchone()
    assert latest is not None
    assert latest["value"] is True
    # Tenant scoping: another org cannot see the import.
    with pytest.raises(service.NotFound):
        service.get_import(db, org_id + 1000, first["id"])


def test_cli_import_runs_inline_and_reports_bad_lines(
    db: Conn,
    database_url: str,
    make_devices: Callable[..., list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_devices("cli-dev")
    path = tmp_path / "wide.csv"
    path.write_text(
        f"timestamp,temp,hum\n{BASE},20.5,40\n{BASE + 10},,41\n{BASE + 20},x,\nbad,1,2\n"
    )
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert cli.main(["import", str(path), "--device", "cli-dev"]) == 0
    out, err = capsys.readouterr()
    assert "4 new readings" in out
    assert "1 bad lines" in out
    assert "line 5: time 'bad' is not epoch seconds/milliseconds or RFC 3339" in err
    texts = db.execute("SELECT text_value FROM readings WHERE text_value IS NOT NULL").fetchall()
    assert texts == [{"text_value": "x"}]
    assert cli.main(["import", str(path), "--org", ORG, "--device", "cli-dev"]) == 0
    out, _ = capsys.readouterr()
    assert "0 new readings" in out
    assert cli.main(["import", str(path)]) == 2
    assert "give --org" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("1700000000,d,t", "3 fields, the header has 4"),
        ("1700000000,d,t,inf", "value 'inf' is not a finite number"),
        ("9999999999,d,t,1", "time is more than an hour in the future"),
        ("2026-13-01,d,t,1", "is not epoch seconds/milliseconds or RFC 3339"),
        ("1700000000,,t,1", "no device"),
        ("1700000000,e,t,1", "unknown device 'e'"),
        ("1700000000,d,t,a\x00b", "bad_string: text value contains NUL (U+0000)"),
    ],
)
def test_csv_line_errors(line: str, reason: str) -> None:
    parsed = list(
        import_parse.parse(
            "csv",
            iter([b"time,device_id,metric,value\n", line.encode() + b"\n"]),
            allowed_devices=frozenset({"d"}),
            default_device=None,
        )
    )
    assert len(parsed) == 1
    number, result = parsed[0]
    assert number == 2
    assert isinstance(result, import_parse.LineError)
    assert reason in str(result)


def test_csv_values_times_and_blank_lines() -> None:
    parsed = list(
        import_parse.parse(
            "csv",
            iter(
                [
                    b"\xef\xbb\xbfts,metric,value\n",
                    b"\n",
                    b'1700000000123,t,"a,b"\n',
                    b"2023-11-14T22:13:20.5Z,t,TRUE\n",
                    b"\xff\n",
                ]
            ),
            allowed_devices=frozenset({"d"}),
            default_device="d",
        )
    )
    assert [n for n, _ in parsed] == [3, 4, 5]
    assert parsed[0][1] == ("d", (Reading(1700000000.123, "t", None, "a,b", False, None, ""),))
    assert parsed[1][1] == ("d", (Reading(1700000000.5, "t", 1.0, None, True, None, ""),))
    assert isinstance(parsed[2][1], import_parse.LineError)
    assert str(parsed[2][1]) == "not valid UTF-8"


def test_overlapping_file_imports_only_the_new_readings(
    db: Conn, org_id: int, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("imp-a", "imp-b")
    first = csv_file(200, {})
    lines = csv_file(300, {}).splitlines(keepends=True)
    overlapping = lines[0] + b"".join(lines[101:])  # readings 100..299
    service.create_import(db, org_id=org_id, content=first, filename="a.csv")
    second = service.create_import(db, org_id=org_id, content=overlapping, filename="b.csv")
    run_queued(db)
    done = service.get_import(db, org_id, second["id"])
    assert done["processed_rows"] == 200
    assert done["rows_imported"] == 100
    count = db.execute("SELECT count(*) AS n FROM readings").fetchone()
    assert count is not None
    assert count["n"] == 300
    assert mismatches(db) == []
    files = db.execute("SELECT count(*) AS n FROM import_files").fetchone()
    assert files is not None
    assert files["n"] == 0  # dropped once imported


def test_a_line_that_contradicts_a_stored_reading_is_a_conflict_line_error(
    db: Conn, org_id: int, make_devices: Callable[..., list[str]]
) -> None:
    make_devices("imp-a", "imp-b")
    service.create_import(db, org_id=org_id, content=csv_file(10, {}), filename="a.csv")
    run_queued(db)
    # Line 4 sends reading 2 (imp-b, temp, BASE + 20) with another value; line 12 is new.
    again = csv_file(11, {4: f"{BASE + 20},imp-b,temp,99"})
    second = service.create_import(db, org_id=org_id, content=again, filename="b.csv")
    run_queued(db)
    done = service.get_import(db, org_id, second["id"])
    assert done["status"] == "done"
    assert done["rows_imported"] == 1
    assert done["rows_rejected"] == 1
    [error] = done["errors"]
    assert error["line"] == 4
    assert error["reason"].startswith("conflict: ")
    assert "stored 0.5, sent 99.0" in error["reason"]
    # The first stored value stays, and it is also what latest_values kept.
    values = db.execute(
        "SELECT value FROM readings JOIN devices USING (device_key)"
        " WHERE device_id = 'imp-b' AND time = to_timestamp(%s)",
        (BASE + 20,),
    ).fetchall()
    assert values == [{"value": 0.5}]
    count = db.execute("SELECT count(*) AS n FROM readings").fetchone()
    assert count is not None
    assert count["n"] == 11


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Everything a line can carry that PostgreSQL would refuse, per format: (line, why). Each is
# a line error with its number; the good lines around them are imported.
POISON: dict[str, tuple[bytes, list[tuple[bytes, str]]]] = {
    "long.csv": (
        b"time,device_id,metric,value",
        [
            (f"{BASE},p-1,temp,a\0b".encode(), "contains NUL"),
            (f"{BASE},p-1,te\0mp,1".encode(), "is not a valid metric name"),
            (f"{BASE},p-\0,temp,1".encode(), "unknown device 'p-\\x00'"),
            (f'{BASE},p-1,"a\0",1'.encode(), "is not a valid metric name"),
            (b"0001-01-01T00:00:00+01:00,p-1,temp,1", "before 2000"),
            (b"9999-12-31T23:59:59-01:00,p-1,temp,1", "in the future"),
            (b"1e300,p-1,temp,1", "in the future"),
            (b"-1e300,p-1,temp,1", "before 2000"),
            (b"nan,p-1,temp,1", "not a finite number"),
            (f"{BASE},p-1,temp,inf".encode(), "not a finite number"),
            (f"{BASE},p-1,temp,1e999".encode(), "not a finite number"),
            (f"{BASE},p-1,temp,-nan".encode(), "not a finite number"),
            (f"{BASE},p-1,temp,caf\xe9".encode("latin-1"), "not valid UTF-8"),
        ],
    ),
    "export.csv": (
        b"time,metric,unit,seq,type,value",
        [
            (f"{_iso(BASE)},temp,,,text,a\0b".encode(), "contains NUL"),
            (f"{_iso(BASE)},temp,,,text,'a\\\0b".encode(), "unknown escape"),
            (f"{_iso(BASE)},temp,u\0,,number,1".encode(), "printable"),
            (f"{_iso(BASE)},te\0mp,,,number,1".encode(), "not a valid metric name"),
            (f"{_iso(BASE)},temp,,9223372036854775808,number,1".encode(), "64-bit integer"),
            (f"{_iso(BASE)},temp,,,number,nan".encode(), "not a finite number"),
            (f"{_iso(BASE)},temp,,,number,-inf".encode(), "not a finite number"),
            (f"{_iso(BASE)},temp,,,boolean,yes".encode(), "not true or false"),
            (b"0001-01-01T00:00:00.000000+01:00,temp,,,number,1", "time"),
            (b"1999-12-31T23:59:59.000000Z,temp,,,number,1", "before 2000"),
            (b"2000-01-01T00:00:00.000000Z,temp,,,number,1\xff", "not valid UTF-8"),
        ],
    ),
    "payloads.ndjson": (
        b"",
        [
            (b'{"ts": %d, "values": {"t": "a\\u0000b"}}' % BASE, "NUL"),
            (b'{"ts": %d, "values": {"t\\u0000": 1}}' % BASE, "metric"),
            (b'{"ts": 1e300, "values": {"t": 1}}', "ts"),
            (b'{"ts": %d, "values": {"t": 1e999}}' % BASE, "JSON"),
            (b'{"ts": %d, "seq": 9223372036854775808, "values": {"t": 1}}' % BASE, "seq"),
            (
                b'{"time": "%s", "metric": "t", "unit": "\\u0000", "seq": null, "value": 1}'
                % _iso(BASE).encode(),
                "printable",
            ),
            (
                b'{"time": "%s", "metric": "t", "unit": "", "seq": null, "value": "\\u0000"}'
                % _iso(BASE).encode(),
                "NUL",
            ),
            (
                b'{"time": "%s", "metric": "t", "unit": "", "seq": 2e0, "value": 1}'
                % _iso(BASE).encode(),
                "64-bit integer",
            ),
            (
                b'{"time": "0001-01-01T00:00:00+01:00", "metric": "t", "unit": "", "seq": null,'
                b' "value": 1}',
                "time",
            ),
            (b'{"ts": %d, "values": {"t": 1}}\xc3' % BASE, "not valid UTF-8"),
        ],
    ),
}


def _good_line(name: str, i: int) -> bytes:
    t = BASE + 1000 + i
    if name == "long.csv":
        return f"{t},p-1,temp,{i}".encode()
    if name == "export.csv":
        return f"{_iso(t)},temp,,,number,{i}.0".encode()
    return orjson.dumps({"ts": t, "values": {"temp": i}})


@pytest.mark.parametrize("name", list(POISON))
def test_a_line_postgresql_would_refuse_is_a_line_error_not_a_failed_import(
    db: Conn, org_id: int, make_devices: Callable[..., list[str]], name: str
) -> None:
    make_devices("p-1")
    header, poison = POISON[name]
    lines = [header] if header else []
    expected: dict[int, str] = {}
    for i, (line, why) in enumerate(poison):
        lines.append(_good_line(name, i))
        lines.append(line)
        expected[len(lines)] = why
    lines.append(_good_line(name, len(poison)))
    created = service.create_import(
        db, org_id=org_id, content=b"\n".join(lines) + b"\n", filename=name, device_id="p-1"
    )
    details = run_queued(db)
    assert [d["status"] for d in details["imports"]] == ["done"]
    done = service.get_import(db, org_id, created["id"])
    assert done["rows_imported"] == len(poison) + 1
    assert done["rows_rejected"] == len(poison)
    reasons = {e["line"]: e["reason"] for e in done["errors"]}
    assert sorted(reasons) == sorted(expected)
    for number, why in expected.items():
        assert why in reasons[number], (number, reasons[number])
