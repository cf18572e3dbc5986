"""Generated device traffic for bridge tests, and what the database must hold afterwards."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

from tests.bridge.publishing import Message
from tests.support import TestStack

# (device_id, metric, epoch milliseconds, value as stored: float or str)
Row = tuple[str, str, int, Any]


def telemetry_mix(
    device_ids: list[str], per_device: int, *, seed: int = 7
) -> tuple[list[Message], set[Row]]:
    """Single readings, backlog arrays and SenML packs, interleaved across devices.

    Every reading has its own timestamp (ms), so the expected rows are exactly known."""
    rng = random.Random(seed)
    base_ms = int(time.time() * 1000) - 3_600_000
    messages: list[Message] = []
    expected: set[Row] = set()
    for i in range(per_device):
        for device_id in device_ids:
            ts = base_ms + i * 10
            shape = i % 3
            if shape == 0:
                temp = round(rng.uniform(-20, 40), 3)
                door = rng.random() < 0.5
                payload = {
                    "ts": ts,
                    "seq": i,
                    "values": {"temp": temp, "door": door, "mode": "eco"},
                }
                expected |= {
                    (device_id, "temp", ts, temp),
                    (device_id, "door", ts, 1.0 if door else 0.0),
                    (device_id, "mode", ts, "eco"),
                }
                topic = f"devices/{device_id}/telemetry"
            elif shape == 1:
                backlog = []
                for k in range(3):
                    hum = rng.randint(0, 100)
                    backlog.append({"ts": ts + k, "seq": i * 10 + k, "values": {"hum": hum}})
                    expected.add((device_id, "hum", ts + k, float(hum)))
                payload = backlog  # type: ignore[assignment]
                topic = f"devices/{device_id}/telemetry"
            else:
                volts = round(rng.uniform(3, 4), 4)
                amps = round(rng.uniform(0, 1), 4)
                payload = [  # type: ignore[assignment]
                    {"bn": "pwr.", "bt": ts / 1000, "n": "volts", "v": volts},
                    {"n": "amps", "t": 0.002, "v": amps},
                ]
                expected |= {
                    (device_id, "pwr.volts", ts, volts),
                    (device_id, "pwr.amps", ts + 2, amps),
                }
                topic = f"devices/{device_id}/telemetry/senml"
            messages.append((device_id, topic, orjson.dumps(payload)))
    return messages, expected


def numeric_stream(device_ids: list[str], per_device: int) -> tuple[list[Message], int]:
    """Plain single readings with two numbers each: the shape of a large fleet's traffic."""
    base_ms = int(time.time() * 1000) - 3_000_000
    messages: list[Message] = []
    for i in range(per_device):
        for n, device_id in enumerate(device_ids):
            payload = orjson.dumps(
                {"ts": base_ms + i, "seq": i, "values": {"a": i, "b": n + i / 1000}}
            )
            messages.append((device_id, f"devices/{device_id}/telemetry", payload))
    return messages, 2 * len(messages)


def stored_rows(stack: TestStack) -> list[Row]:
    rows = stack.query(
        "SELECT device_id, metric, round(extract(epoch FROM time) * 1000)::bigint AS ms, "
        "value, text_value FROM readings JOIN devices USING (device_key)"
    )
    return [
        (
            r["device_id"],
            r["metric"],
            r["ms"],
            r["text_value"] if r["text_value"] is not None else r["value"],
        )
        for r in rows
    ]


def row_count(stack: TestStack) -> int:
    return int(stack.query("SELECT count(*) AS n FROM readings")[0]["n"])
