"""The `fieldhub` command line run in-process against the test's own database."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.cli import main

DEVICE_URL = "mqtt://devices.example:8883"


@pytest.fixture
def cli(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> CliRunner:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("MQTT_DEVICE_URL", DEVICE_URL)
    return CliRunner(database_url, capsys)


class CliRunner:
    def __init__(self, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.database_url = database_url
        self.capsys = capsys

    def __call__(self, *argv: str, expect: int = 0) -> tuple[str, str]:
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        assert code == expect, f"exit {code}, expected {expect}; stdout={out!r} stderr={err!r}"
        return out, err

    def refused(self, *argv: str) -> str:
        """Run a command that must fail with one clear line on stderr; return that line."""
        with pytest.raises(SystemExit) as caught:
            main(list(argv))
        _, err = self.capsys.readouterr()
        assert caught.value.code != 0
        assert "Traceback" not in err
        return err.strip().splitlines()[-1]

    def device_row(self, device_id: str) -> dict[str, object] | None:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(
                "SELECT * FROM devices WHERE device_id = %s", (device_id,)
            ).fetchone()


def one_error_line(cli: CliRunner, *argv: str) -> str:
    _, err = cli(*argv, expect=2)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
