"""Fixtures of the analysis tests: a connection to the test's own database and devices in it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from fieldhub.core import registry
from fieldhub.core.db import Conn

ORG = "analysis-org"


@pytest.fixture
def db(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def org_id(db: Conn) -> int:
    return int(registry.create_org(db, ORG)["id"])


@pytest.fixture
def make_devices(db: Conn, org_id: int) -> Callable[..., list[str]]:
    """Register devices without broker credentials worth hashing (no MQTT in these tests)."""

    def make(*device_ids: str, org: str = ORG, labels: dict[str, str] | None = None) -> list[str]:
        for device_id in device_ids:
            registry.create_device(
                db, device_id, org=org, labels=labels, password_hash="unused", secret="unused"
            )
        return list(device_ids)

    return make


def key_of(conn: Conn, device_id: str) -> int:
    """The device key a device's data is stored under."""
    row = conn.execute(
        "SELECT device_key FROM devices WHERE device_id = %s", (device_id,)
    ).fetchone()
    assert row is not None, device_id
    return int(row["device_key"])
