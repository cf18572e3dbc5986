"""Tenant-scoped reads shared by the pages, the API and the live stream.

Every function takes `org_id` (None only for operators) and never returns a row of another
organisation: an object outside the scope is reported exactly like one that does not exist.
A device's data is read by its device key: callers resolve the device once with
`get_device` (scoped to the organisation) and pass its `device_key` on, so a device id that
was deleted and registered again never shows the earlier device's data."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from fieldhub.core import registry
from fieldhub.core.db import Conn, before_params
from fieldhub.web import history
from fieldhub.web.db import QUERIES

RAW_POINT_LIMIT = 50000


class NotFound(LookupError):
    """The object does not exist or belongs to another organisation."""


@dataclasses.dataclass(frozen=True)
class DeviceFilter:
    search: str | None = None
    labels: dict[str, str] | None = None
    online: bool | None = None

    def params(self) -> dict[str, Any]:
        like = None
        if self.search:
            escaped = self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = f"%{escaped}%"
        return {
            "like": like,
            "labels": Jsonb(self.labels) if self.labels else None,
            "online": self.online,
        }


def parse_label_filter(text: str | None) -> dict[str, str] | None:
    """`key=value` (several separated by commas) into a containment filter."""
    if not text or not text.strip():
        return None
    try:
        return registry.parse_labels([p for p in text.split(",") if p.strip()])
    except registry.RegistryError as exc:
        raise ValueError(str(exc)) from None


def list_devices(
    conn: Conn,
    org_id: int | None,
    filt: DeviceFilter,
    *,
    limit: int,
    offset: int = 0,
    after: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """A page of devices in id order and how many match in all: numbered pages by `offset`
    (people), or the page after device id `after` (programs: keyset)."""
    params = {"org_id": org_id, **filt.params()}
    total_row = conn.execute(QUERIES["count_devices"], params).fetchone()
    rows = conn.execute(
        QUERIES["devices_in_scope"], {**params, "limit": limit, "offset": offset, "after": after}
    ).fetchall()
    return [dict(r) for r in rows], int(total_row["n"]) if total_row else 0


def list_devices_by_id(
    conn: Conn, org_id: int | None, device_ids: list[str]
) -> tuple[list[dict[str, Any]], int]:
    rows = conn.execute(
        QUERIES["devices_by_id"], {"org_id": org_id, "device_ids": device_ids}
    ).fetchall()
    return [dict(r) for r in rows], len(rows)


def label_pairs(conn: Conn, org_id: int | None) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(QUERIES["label_pairs"], {"org_id": org_id})]


def latest_values(conn: Conn, device_keys: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Latest value per metric and unit, by device key. Callers pass only the keys of
    devices they have already scoped."""
    by_device: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in conn.execute(QUERIES["latest_for_devices"], {"keys": device_keys}):
        by_device[row["device_key"]].append(dict(row))
    return dict(by_device)


def metric_types(conn: Conn, device_key: int) -> dict[tuple[str, str], str]:
    """The JSON type of each (metric, unit) of a device, from its latest values; callers pass
    only the key of a device they have already scoped."""
    rows = conn.execute(QUERIES["metric_types"], {"device_key": device_key})
    return {(r["metric"], r["unit"]): r["type"] for r in rows}


def reading_value(row: dict[str, Any]) -> float | bool | None:
    """A stored reading's number as the device sent it (None for text): a boolean stored as
    1/0 (is_bool) goes back to true/false, so it reads the same live as in the latest
    values."""
    value: float | None = row["value"]
    if value is not None and row["is_bool"]:
        return value != 0
    return value


def get_device(conn: Conn, org_id: int | None, device_id: str) -> dict[str, Any]:
    row = conn.execute(
        QUERIES["device_in_scope"], {"device_id": device_id, "org_id": org_id}
    ).fetchone()
    if row is None:
        raise NotFound(device_id)
    return dict(row)


def presence_events(conn: Conn, device_key: int, limit: int = 20) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in conn.execute(
            QUERIES["presence_events"], {"device_key": device_key, "limit": limit}
        )
    ]


def device_alerts(
    conn: Conn, org_id: int | None, device_id: str, limit: int = 20
) -> list[dict[str, Any]]:
    params = {"device_id": device_id, "org_id": org_id, "limit": limit}
    return [dict(r) for r in conn.execute(QUERIES["device_alerts"], params)]


def list_alerts(
    conn: Conn,
    org_id: int | None,
    *,
    state: str | None = None,
    device_id: str | None = None,
    limit: int = 100,
    before: tuple[datetime, int] | None = None,
) -> list[dict[str, Any]]:
    """Newest first; `before` (started_at, id) of the last alert of the previous page."""
    params = {
        "org_id": org_id,
        "state": state,
        "device_id": device_id,
        "limit": limit,
        **before_params(before),
    }
    return [dict(r) for r in conn.execute(QUERIES["list_alerts"], params)]


def get_alert(conn: Conn, org_id: int | None, alert_id: int) -> dict[str, Any]:
    row = conn.execute(QUERIES["get_alert"], {"alert_id": alert_id, "org_id": org_id}).fetchone()
    if row is None:
        raise NotFound(str(alert_id))
    return dict(row)


def readings_since(conn: Conn, device_key: int, since: datetime) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in conn.execute(QUERIES["readings_since"], {"device_key": device_key, "since": since})
    ]


# A rollup source's two queries: how far its rollups reach, and its buckets.
_ROLLUP_QUERIES = {
    "rollup_1m": ("rollup_mark_1m", "buckets_rollup_1m"),
    "rollup_1h": ("rollup_mark_1h", "buckets_rollup_1h"),
}


def buckets(
    conn: Conn,
    device_key: int,
    metric: str,
    unit: str,
    span: history.TimeRange,
    resolution: history.Resolution,
) -> tuple[str, list[dict[str, Any]]]:
    """Aggregated buckets of one series (metric and unit) and the source that answered them
    (rollups if they exist)."""
    source = resolution.source
    params: dict[str, Any] = {
        "device_key": device_key,
        "metric": metric,
        "unit": unit,
        "start": span.start,
        "end": span.end,
        "bucket_s": max(1, resolution.bucket_s),
    }
    # Binary results: a month of buckets converts about twice as fast as from text.
    if source in ("raw", "raw_buckets"):
        rows = conn.execute(QUERIES["buckets_raw"], params, binary=True)
        return source, [dict(r) for r in rows]
    mark_query, buckets_query = _ROLLUP_QUERIES[source]
    mark = conn.execute(QUERIES[mark_query], params).fetchone()
    params["upto"] = mark["upto"] if mark else span.start
    rows = conn.execute(QUERIES[buckets_query], params, binary=True)
    return source, [dict(r) for r in rows]


def raw_points(
    conn: Conn,
    device_key: int,
    metric: str,
    unit: str,
    span: history.TimeRange,
    *,
    limit: int,
    after: tuple[datetime, int] | None = None,
) -> list[dict[str, Any]]:
    """Numeric readings of one series (metric and unit) in `span`, oldest first by (time,
    seq), from just after `after`: the (time, seq) of the last point already read, seq -1 for
    a reading without one."""
    rows = conn.execute(
        QUERIES["readings_raw"],
        {
            "device_key": device_key,
            "metric": metric,
            "unit": unit,
            "start": max(span.start, after[0]) if after else span.start,
            "end": span.end,
            "after_time": after[0] if after else None,
            "after_seq": after[1] if after else None,
            "limit": limit,
        },
        binary=True,
    )
    return [dict(r) for r in rows]


def chart_series(
    conn: Conn, device_key: int, metric: str, unit: str, span: history.TimeRange
) -> dict[str, Any]:
    """What the device page's chart draws: [times, values] or [times, min, avg, max]."""
    resolution = history.chart_resolution(span.span)
    if resolution.source == "raw":
        rows = raw_points(conn, device_key, metric, unit, span, limit=RAW_POINT_LIMIT)
        return {
            "source": "raw",
            "bucket_s": 0,
            "t": [r["time"].timestamp() for r in rows],
            "value": [r["value"] for r in rows],
            "truncated": len(rows) >= RAW_POINT_LIMIT,
        }
    source, rows = buckets(conn, device_key, metric, unit, span, resolution)
    return {
        "source": source,
        "bucket_s": resolution.bucket_s,
        "t": [r["bucket"].timestamp() for r in rows],
        "min": [r["min"] for r in rows],
        "avg": [r["avg"] for r in rows],
        "max": [r["max"] for r in rows],
        "truncated": False,
    }


def list_orgs(conn: Conn, org_id: int | None) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(QUERIES["orgs_in_scope"], {"org_id": org_id})]


_OWNER_QUERIES = {
    "alert": "alert_org",
    "rule": "rule_org",
    "import": "import_org",
    "device": "device_org",
}


def owner_org(conn: Conn, kind: str, object_id: object, org_id: int | None) -> int:
    """The organisation of an alert, rule, import or device within the caller's scope; the
    analysis service acts in one organisation, so an operator acts in the object's own."""
    row = conn.execute(
        QUERIES[_OWNER_QUERIES[kind]], {"id": object_id, "org_id": org_id}
    ).fetchone()
    if row is None:
        raise NotFound(str(object_id))
    return int(row["org_id"])
