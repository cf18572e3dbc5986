"""The bridge's receive side: an MQTT client that keeps up with tens of thousands of QoS 1
messages per second (the clock that stamps what it receives is fieldhub.core.receive_clock,
shared with HTTP ingest).

fieldhub.bridge.app owns the process and decides when to acknowledge (after COMMIT); this module
only frames packets and writes PUBACKs."""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

_PUBLISH = 0x30
_PUBACK = 0x40


class BridgeClient(mqtt.Client):
    """paho's client with a receive path fit for tens of thousands of messages per second.

    Measured with py-spy under load, stock paho spent most of the network thread's time on
    its own per-message overhead: three recv() calls per packet (command byte, each length
    byte, body), one select() per packet (loop_read handles one packet per wakeup), an
    MQTTMessage, a Properties object and a topic-matcher walk per message, and one PUBACK
    packet + one wake-up syscall per acknowledgement. This subclass, for paho-mqtt 2.1 (pinned
    in setup.cfg), replaces only the read side:
    - it reads the socket 256 KiB at a time until it would block (the broker cannot send more
      than our Receive Maximum unacknowledged, so this always ends) and frames the packets in
      that buffer itself;
    - QoS 0/1 PUBLISH packets go straight to `on_publish_packet(topic, payload, qos, mid)`,
      skipping the (unused) MQTT 5 properties; every other packet (CONNACK, SUBACK, PUBACK of
      our own publishes, PINGRESP, QoS 2) is handed to paho's own `_packet_handle`;
    - `ack_many` acknowledges a whole batch with one queued write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buffer = bytearray()
        self.on_publish_packet: Any = None

    def reconnect(self) -> MQTTErrorCode:
        self._read_buffer = bytearray()
        return super().reconnect()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        buffer = self._read_buffer
        received = False
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            try:
                data = self._sock_recv(262_144)
            except BlockingIOError:
                break
            except OSError:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            if not data:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            received = True
            buffer += data
            rc = self._frame_packets(buffer)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return self._loop_rc_handle(rc)
        if received:
            with self._msgtime_mutex:
                self._last_msg_in = time.monotonic()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _frame_packets(self, buffer: bytearray) -> MQTTErrorCode:
        """Handle every complete packet at the start of `buffer` and remove it."""
        handler = self.on_publish_packet
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            header = buffer[pos]
            length = 0
            shift = 0
            index = pos + 1
            while True:
                if index >= size:
                    del buffer[:pos]
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                byte = buffer[index]
                index += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
            end = index + length
            if end > size:
                break
            qos = (header & 0x06) >> 1
            if header & 0xF0 == _PUBLISH and qos < 2 and handler is not None:
                topic_end = index + 2 + ((buffer[index] << 8) | buffer[index + 1])
                topic = bytes(buffer[index + 2 : topic_end])
                at = topic_end
                mid = 0
                if qos:
                    mid = (buffer[at] << 8) | buffer[at + 1]
                    at += 2
                # MQTT 5 properties: a variable byte integer length, then the properties.
                properties = 0
                shift = 0
                while True:
                    byte = buffer[at]
                    at += 1
                    properties |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                handler(topic, bytes(buffer[at + properties : end]), qos, mid)
            else:
                self._in_packet = {
                    "command": header,
                    "have_remaining": 1,
                    "remaining_count": [],
                    "remaining_mult": 1,
                    "remaining_length": length,
                    "packet": bytearray(buffer[index:end]),
                    "to_process": 0,
                    "pos": 0,
                }
                rc = self._packet_handle()
                self._in_packet = {
                    "command": 0,
                    "have_remaining": 0,
                    "remaining_count": [],
                    "remaining_mult": 1,
                    "remaining_length": 0,
                    "packet": bytearray(b""),
                    "to_process": 0,
                    "pos": 0,
                }
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
            pos = end
        del buffer[:pos]
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK every packet id in `mids` with a single queued write."""
        if mids:
            data = struct.pack(f">{len(mids)}I", *[0x40020000 | mid for mid in mids])
            self._packet_queue(_PUBACK, data, 0, 0)


__all__ = ["BridgeClient"]
