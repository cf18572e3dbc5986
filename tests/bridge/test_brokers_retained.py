"""Retained commands and twins on every broker: two real Mosquitto brokers, a bridge process
on each, real PostgreSQL (docs/scaling.md "Several brokers", docs/commands.md).

The session broker is broker-1; each test starts broker-2 in its own directory. The device is
homed on broker-1. On broker-2 a service account with a device's rights on that device's
topics (read its commands and twin, write acks) stands in for the device after a failover:
which broker admits which device is auth-sync's business, not the dispatcher's."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import orjson
import pytest

from fieldhub.core import registry, twins
from fieldhub.core.command_requests import cancel_command, get_command, send_command
from tests.support import (
    BridgeProcess,
    DeviceClient,
    SecondBroker,
    TestStack,
    unique_id,
    wait_for,
)

pytestmark = pytest.mark.integration

# What a device may do on its own topics, as one account for every device (a stand-in).
STAND_IN_ACL = (
    "read devices/+/commands/+",
    "write devices/+/commands/+/ack",
    "read devices/+/twin/desired",
    "read devices/+/twin/delta",
)
# What a test writes directly to a broker's retained command topics (a stale broker's past).
WRITER_ACL = ("write devices/+/commands/+",)


class Brokers:
    """broker-1 (the session's) and broker-2, and a bridge process connected to each."""

    def __init__(self, stack: TestStack, second: SecondBroker) -> None:
        self.stack = stack
        self.second = second
        self.ports = {
            "broker-1": stack.broker.mqtt_services,
            "broker-2": second.broker.mqtt_services,
        }
        env = second.bridges_env()
        self.bridges = {
            name: BridgeProcess(stack, extra_env=env, extra_args=["--broker", name])
            for name in ("broker-1", "broker-2")
        }
        # Accounts are rendered into every broker: sync broker-2 after creating them.
        self.stand_in = stack.service_account("svc.device", STAND_IN_ACL)
        self.writer = stack.service_account("svc.writer", WRITER_ACL)
        second.sync()

    def start(self) -> None:
        for bridge in self.bridges.values():
            bridge.start()
        for bridge in self.bridges.values():
            bridge.wait_ready()

    def client(self, broker: str, username: str) -> DeviceClient:
        client = DeviceClient(self.ports[broker], username, self.stack.bridge_password)
        client.connect()
        return client

    def retained(self, broker: str, topic_filter: str) -> dict[str, bytes]:
        """The retained messages on `broker` matching `topic_filter` (topic -> payload)."""
        client = self.client(broker, self.stand_in)
        try:
            client.subscribe(topic_filter)
            # The broker queues a subscription's retained messages right behind its SUBACK,
            # so once a later SUBACK is back every one of them has arrived.
            client.subscribe(f"devices/{uuid.uuid4().hex}/twin/desired")
            return {m.topic: bytes(m.payload) for m in client.received if m.retain}
        finally:
            client.close()

    def wait_retained(self, broker: str, topic_filter: str, expected: dict[str, object]) -> None:
        """Until the retained messages on `broker` under `topic_filter` are `expected`: topic
        -> a command's id, or the whole JSON document."""

        def holds() -> bool:
            found = {
                topic: _summary(payload)
                for topic, payload in self.retained(broker, topic_filter).items()
            }
            return found == expected

        wait_for(holds, what=f"{expected} retained on {broker}")

    def close(self) -> None:
        # broker-1's bridge forgets its session there (BridgeProcess); broker-2 goes away.
        try:
            self.bridges["broker-2"].stop()
            shutil.rmtree(self.bridges["broker-2"].home, ignore_errors=True)
        finally:
            self.bridges["broker-1"].__exit__(None, None, None)


@pytest.fixture
def brokers(stack: TestStack) -> Iterator[Brokers]:
    second = SecondBroker(stack)
    try:
        running = Brokers(stack, second)
        try:
            running.start()
            yield running
        finally:
            running.close()
    finally:
        second.close()


def _summary(payload: bytes) -> object:
    """A retained command as its id, any other document as itself."""
    document = orjson.loads(payload)
    if isinstance(document, dict) and "id" in document and "name" in document:
        return document["id"]
    return document


def test_a_command_is_retained_on_both_brokers_and_an_ack_via_either_clears_both(
    brokers: Brokers, stack: TestStack
) -> None:
    device = unique_id("north")
    stack.create_devices([device])
    assert registry.get_device(stack.conn, device)["broker"] == "broker-1"
    command = str(
        send_command(stack.conn, device_id=device, name="open", params={}, ttl_s=300)["id"]
    )
    topic = f"devices/{device}/commands/{command}"

    for name in ("broker-1", "broker-2"):
        brokers.wait_retained(name, f"devices/{device}/commands/+", {topic: command})
    # The retained message can be seen before the dispatcher has recorded the PUBACK.
    wait_for(
        lambda: get_command(stack.conn, command)["status"] == "sent",
        what="the first broker's PUBACK to mark the command sent",
    )

    # The device lost broker-1 and answers through broker-2.
    standby = brokers.client("broker-2", brokers.stand_in)
    try:
        standby.publish(f"{topic}/ack", orjson.dumps({"status": "succeeded", "result": {}}))
    finally:
        standby.close()
    wait_for(
        lambda: get_command(stack.conn, command)["status"] == "succeeded",
        what="the ack via broker-2 to complete the command",
    )
    wait_for(
        lambda: stack.query("SELECT retained_cleared FROM commands WHERE id = %s", (command,))[0][
            "retained_cleared"
        ],
        what="the command cleared on both brokers",
    )
    for name in ("broker-1", "broker-2"):
        assert brokers.retained(name, topic) == {}, name


def test_a_twin_change_reaches_both_brokers(brokers: Brokers, stack: TestStack) -> None:
    device = unique_id("north")
    stack.create_devices([device])
    twin = twins.update_desired(
        stack.conn, device, {"fan": "on"}, actor=twins.Actor("tester@example.com", "api")
    )
    desired = f"devices/{device}/twin/desired"
    document = {"version": twin.desired_version, "state": {"fan": "on"}}
    for name in ("broker-1", "broker-2"):
        brokers.wait_retained(name, desired, {desired: document})


def test_a_reconnected_broker_loses_its_stale_commands_and_keeps_the_live_ones(
    brokers: Brokers, stack: TestStack
) -> None:
    """broker-2 holds retained commands the database no longer has as live (one finished
    while it was not watched, one nobody knows): when its bridge reconnects they are cleared;
    the live command stays."""
    device = unique_id("north")
    stack.create_devices([device])
    live, done = (
        str(send_command(stack.conn, device_id=device, name=n, params={}, ttl_s=300)["id"])
        for n in ("open", "close")
    )
    cancel_command(stack.conn, done)
    wait_for(
        lambda: stack.query("SELECT retained_cleared FROM commands WHERE id = %s", (done,))[0][
            "retained_cleared"
        ],
        what="the cancelled command cleared on both brokers",
    )
    prefix = f"devices/{device}/commands/"
    brokers.wait_retained("broker-2", prefix + "+", {prefix + live: live})
    # broker-2's past: the finished command and an unknown one, as a stale snapshot holds them.
    writer = brokers.client("broker-2", brokers.writer)
    try:
        for stale in (done, str(uuid.uuid4())):
            writer.publish(prefix + stale, orjson.dumps({"id": stale, "name": "x"}), retain=True)
    finally:
        writer.close()
    assert len(brokers.retained("broker-2", prefix + "+")) == 3

    brokers.second.restart()
    brokers.wait_retained("broker-2", prefix + "+", {prefix + live: live})
    assert "no longer live cleared" in brokers.bridges["broker-2"].log()


def test_a_broker_that_lost_its_retained_messages_gets_them_back(
    brokers: Brokers, stack: TestStack
) -> None:
    """broker-2 comes back without its database (its bridge stopped meanwhile, so the loss
    can be seen); when its bridge connects, the live command and the twin are there again."""
    device = unique_id("north")
    stack.create_devices([device])
    command = str(
        send_command(stack.conn, device_id=device, name="open", params={}, ttl_s=300)["id"]
    )
    twin = twins.update_desired(
        stack.conn, device, {"fan": "on"}, actor=twins.Actor("tester@example.com", "api")
    )
    document = {"version": twin.desired_version, "state": {"fan": "on"}}
    expected: dict[str, object] = {
        f"devices/{device}/commands/{command}": command,
        f"devices/{device}/twin/desired": document,
        f"devices/{device}/twin/delta": document,
    }
    brokers.wait_retained("broker-2", f"devices/{device}/#", expected)

    brokers.bridges["broker-2"].stop()
    brokers.second.restart(lose_retained=True)
    assert brokers.retained("broker-2", f"devices/{device}/#") == {}
    brokers.bridges["broker-2"].start().wait_ready()
    brokers.wait_retained("broker-2", f"devices/{device}/#", expected)
