"""Load for bridge tests: devices publishing QoS 1 telemetry through their own accounts."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import TestStack, wait_for

Message = tuple[str, str, bytes]  # (device_id, topic, payload)


class DevicePublisher:
    """One connected paho client per device (the broker's ACL only lets a device write its own
    topics), publishing at QoS 1 with many messages in flight."""

    def __init__(self, stack: TestStack, secrets: dict[str, str]) -> None:
        self.clients: dict[str, mqtt.Client] = {}
        for device_id, secret in secrets.items():
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
            )
            client.username_pw_set(device_id, secret)
            client.max_inflight_messages_set(200)
            client.max_queued_messages_set(0)
            client.connect("127.0.0.1", stack.broker.mqtt_devices, keepalive=60)
            client.loop_start()
            self.clients[device_id] = client
        for device_id, client in self.clients.items():
            wait_for(client.is_connected, timeout=10, what=f"{device_id} to connect")

    def publish(self, messages: Sequence[Message], threads: int = 4) -> None:
        """Publish every message at QoS 1 and wait for all PUBACKs."""
        chunks = [messages[i::threads] for i in range(threads)]
        errors: list[BaseException] = []

        def run(chunk: Sequence[Message]) -> None:
            try:
                infos = [
                    self.clients[device_id].publish(topic, payload, qos=1)
                    for device_id, topic, payload in chunk
                ]
                for info in infos:
                    info.wait_for_publish(timeout=60)
                    assert info.is_published()
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> DevicePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
