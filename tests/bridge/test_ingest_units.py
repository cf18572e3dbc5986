"""Pure parts of the ingest path: presence replay, NOTIFY payload splitting, batch
bookkeeping, the receive client and clock. No servers. (The COPY encoding is in
tests/core/test_readings.py.)"""

from __future__ import annotations

import struct

import pytest

from fieldhub.bridge.ingest import Batch, Pending, notify_payloads
from fieldhub.bridge.presence import PresenceEvent, replay
from fieldhub.core.decode import decode_telemetry_stamped


def test_first_message_of_a_never_seen_device_is_an_online_flip() -> None:
    outcome = replay(None, [PresenceEvent(10.0, True, "telemetry")])
    assert outcome.online is True
    assert outcome.flips == [PresenceEvent(10.0, True, "telemetry")]
    assert outcome.last_seen == 10.0


def test_events_are_replayed_in_receive_order_whatever_order_they_come_in() -> None:
    # Last Will, then the device is back: its telemetry after the "offline" wins.
    outcome = replay(
        True,
        [PresenceEvent(3.0, True, "telemetry"), PresenceEvent(2.0, False, "status")],
    )
    assert outcome.online is True
    assert [(f.time, f.online) for f in outcome.flips] == [(2.0, False), (3.0, True)]


def test_repeated_state_is_not_a_flip() -> None:
    outcome = replay(True, [PresenceEvent(1.0, True, "status"), PresenceEvent(2.0, True, "status")])
    assert outcome.flips == []
    assert outcome.last_seen == 2.0


def test_replay_needs_an_event() -> None:
    with pytest.raises(ValueError, match="at least one event"):
        replay(True, [])


def test_notify_payloads_stay_under_the_limit_and_keep_every_key() -> None:
    keys = [2**40 + n for n in range(5000)]
    payloads = notify_payloads(keys)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert sorted(int(k) for k in " ".join(payloads).split()) == keys
    assert notify_payloads([]) == []


def test_a_new_broker_connection_voids_pending_packet_ids() -> None:
    pending = Pending()
    pending.batch.mids.extend([1, 2, 3])
    pending.batch.messages = 3
    pending.new_generation(2)
    batch = pending.take()
    assert batch is not None
    assert batch.generation == 2
    assert batch.mids == []
    assert pending.take() is None


def test_merging_a_batch_from_a_newer_connection_keeps_only_its_packet_ids() -> None:
    old = Batch(mids=[5, 6], generation=1, messages=2)
    old.merge(Batch(mids=[1], generation=2, messages=1))
    assert (old.generation, old.mids, old.messages) == (2, [1], 3)
    same = Batch(mids=[5], generation=2, messages=1)
    same.merge(Batch(mids=[6], generation=2, messages=1))
    assert same.mids == [5, 6]


def _publish_packet(topic: bytes, payload: bytes, *, qos: int, mid: int, props: bytes) -> bytes:
    body = struct.pack(">H", len(topic)) + topic
    if qos:
        body += struct.pack(">H", mid)
    body += bytes([len(props)]) + props + payload
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([0x30 | (qos << 1)]) + bytes(encoded) + body


def test_bridge_client_frames_publishes_across_reads() -> None:
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

    from fieldhub.bridge.receive import BridgeClient

    client = BridgeClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=5)
    got: list[tuple[bytes, bytes, int, int]] = []
    client.on_publish_packet = lambda topic, payload, qos, mid: got.append(
        (topic, payload, qos, mid)
    )
    big = b"x" * 300_000  # a three-byte remaining length
    stream = (
        _publish_packet(b"devices/a/telemetry", b'{"v":1}', qos=1, mid=513, props=b"")
        + _publish_packet(b"devices/b/status", b"online", qos=0, mid=0, props=b"\x01\x01")
        + _publish_packet(b"devices/c/telemetry", big, qos=1, mid=7, props=b"\x23\x00\x05")
    )
    buffer = bytearray()
    # Fed in awkward pieces: every packet boundary and length byte gets split somewhere.
    for start in range(0, len(stream), 9_999):
        buffer += stream[start : start + 9_999]
        assert client._frame_packets(buffer) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert buffer == bytearray()
    assert got == [
        (b"devices/a/telemetry", b'{"v":1}', 1, 513),
        (b"devices/b/status", b"online", 0, 0),
        (b"devices/c/telemetry", big, 1, 7),
    ]
    # An incomplete packet stays in the buffer untouched until the rest arrives.
    partial = _publish_packet(b"devices/d/telemetry", b"{}", qos=1, mid=1, props=b"")[:-1]
    buffer += partial
    assert client._frame_packets(buffer) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert bytes(buffer) == partial
    assert len(got) == 3


def test_ack_many_queues_one_write_of_pubacks() -> None:
    from paho.mqtt.enums import CallbackAPIVersion

    from fieldhub.bridge.receive import BridgeClient

    client = BridgeClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=5)
    client.ack_many([1, 300, 65535])
    (packet,) = client._out_packet
    assert packet["packet"] == bytes.fromhex("400200014002012c4002ffff")


def test_receive_stamps_strictly_increase_even_when_the_clock_does_not() -> None:
    from fieldhub.core.receive_clock import ReceiveClock

    readings_ns = iter([5_000_000_000_123_456, 5_000_000_000_123_456, 5_000_000_000_123_999, 4_000])
    clock = ReceiveClock(lambda: next(readings_ns))
    stamps = [clock.stamp() for _ in range(4)]
    micros = [round(s * 1_000_000) for s in stamps]
    # Same microsecond twice, then a sub-microsecond step, then the wall clock going back.
    assert micros == [5_000_000_000_123, 5_000_000_000_124, 5_000_000_000_125, 5_000_000_000_126]


def test_the_clock_moves_past_the_stamps_an_array_without_ts_took() -> None:
    from fieldhub.core.receive_clock import ReceiveClock

    now_ns = iter([1_764_237_600_000_000_000] * 2 + [1_764_237_600_000_010_000])
    clock = ReceiveClock(lambda: next(now_ns))
    received_at = clock.stamp()
    # Three objects without ts: the message's stamp and the two microseconds after it.
    readings, last = decode_telemetry_stamped(
        b'[{"values": {"n": 1}}, {"values": {"n": 2}}, {"values": {"n": 3}}]', received_at
    )
    micros = [round(r.time * 1_000_000) for r in readings]
    assert micros == [1_764_237_600_000_000, 1_764_237_600_000_001, 1_764_237_600_000_002]
    clock.advance_past(last)
    # The wall clock has not moved: the next message still comes after the last stamp used.
    assert round(clock.stamp() * 1_000_000) == 1_764_237_600_000_003
    # Advancing to the past changes nothing; a later wall clock wins as before.
    clock.advance_past(received_at)
    assert round(clock.stamp() * 1_000_000) == 1_764_237_600_000_010
