# A complete fieldhub device in MicroPython with umqtt.simple.
#
# Same behaviour as the Python reference (docs/examples/python/fieldhub_device.py):
#   * falls back along `mqtt_urls` (home broker first, then the standbys), reconnecting with
#     exponential backoff and full jitter;
#   * retained "online" status with a Last Will of "offline";
#   * telemetry every `interval` seconds;
#   * twin: applies the (retained) desired document, reports what it applied;
#   * commands: one ack per command id, the same ack again for a repeat.
#
# On a board (ESP32, Pico W, ...): `mip install umqtt.simple`, copy this file as main.py and
# the output of `fieldhub device create ID --org ORG --json` as creds.json, connect the
# network in boot.py and set the clock (ntptime.settime()). Without a set clock the device
# leaves `ts` out and fieldhub stamps readings when it receives them.
# On the unix port (how fieldhub's tests run it):
#   MICROPYPATH=lib:.frozen micropython main.py creds.json
# For mqtts:// URLs, umqtt.simple wraps the socket with the port's ssl module.

import json
import random
import sys
import time

from umqtt.simple import MQTTClient

FIRMWARE = "example-micropython-1.0"
DEFAULT_INTERVAL_S = 10
BACKOFF_BASE_S = 1  # first retry within 0-2 s, then 0-4 s, 0-8 s ... (full jitter)
BACKOFF_CAP_S = 60
KEEPALIVE_S = 30
REMEMBERED_COMMANDS = 50  # small boards: fewer ids kept
# Boards count time from 2000-01-01, the unix port from 1970: fieldhub wants Unix time.
EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


def log(message):
    print("%.1f %s" % (time.ticks_ms() / 1000, message))


def clock_set():
    return time.gmtime()[0] >= 2024


def now_ms():
    return int((time.time() + EPOCH_OFFSET) * 1000)


def jitter(cap):
    return cap * random.getrandbits(16) / 65536


def split_url(url):
    tls = url.startswith("mqtts://")
    rest = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host:
        host, port = rest, ""
    return host, int(port) if port else (8883 if tls else 1883), tls


class Device:
    def __init__(self, creds):
        self.device_id = creds["device_id"]
        self.username = creds["username"]
        self.password = creds["password"]
        # Home broker first, then the standbys; older credentials only have mqtt_url.
        self.urls = creds.get("mqtt_urls") or [creds["mqtt_url"]]
        self.base = "devices/" + self.device_id
        self.interval_s = DEFAULT_INTERVAL_S
        self.applied_version = -1
        self.answered = {}  # command id -> final ack (bytes)
        self.answered_order = []
        self.seq = 0
        self.inbox = []  # (topic, payload) received: handled outside umqtt's callback
        self.started = time.ticks_ms()

    # -- connection --------------------------------------------------------------------------
    def run(self):
        attempt = 0  # failed attempts since the last good connection
        while True:
            # Each attempt takes the next URL: home first, then each standby, then home again.
            url = self.urls[attempt % len(self.urls)]
            if attempt:
                delay = jitter(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
                log("retrying in %.1f s with %s" % (delay, url))
                time.sleep(delay)
            try:
                client = self.connect(url)
            except OSError as exc:
                log("cannot connect to %s: %s" % (url, exc))
                attempt += 1
                continue
            attempt = 0
            try:
                self.serve(client)
            except OSError as exc:
                log("connection lost: %s" % exc)
            try:
                client.sock.close()
            except OSError:
                pass

    def connect(self, url):
        host, port, tls = split_url(url)
        client = MQTTClient(
            self.device_id,  # the broker forces the client id to the username anyway
            host,
            port,
            user=self.username,
            password=self.password,
            keepalive=KEEPALIVE_S,
            ssl=tls,
        )
        client.set_callback(self.received)
        # The broker publishes this for us if we vanish without saying goodbye.
        client.set_last_will(self.base + "/status", b"offline", retain=True, qos=1)
        try:
            client.connect(clean_session=True, timeout=10)
        except Exception as exc:  # umqtt raises MQTTException, or fails an assert
            raise OSError(str(exc))
        log("connected to %s%s" % (url, " (home)" if url == self.urls[0] else " (standby)"))
        client.publish(self.base + "/status", b"online", retain=True, qos=1)
        # Retained messages deliver at once what waits for us: the whole desired document
        # and every pending command.
        client.subscribe(self.base + "/twin/desired", qos=1)
        client.subscribe(self.base + "/commands/+", qos=1)
        return client

    def received(self, topic, payload):
        # umqtt calls this from inside check_msg() and publish(); publishing from here would
        # nest one publish in another, so the message only goes into the inbox.
        self.inbox.append((topic.decode(), payload))

    def serve(self, client):
        next_telemetry = time.ticks_ms()
        last_sent = time.ticks_ms()
        while True:
            if time.ticks_diff(time.ticks_ms(), next_telemetry) >= 0:
                self.publish_telemetry(client)
                next_telemetry = time.ticks_add(time.ticks_ms(), int(self.interval_s * 1000))
                last_sent = time.ticks_ms()
            elif time.ticks_diff(time.ticks_ms(), last_sent) > KEEPALIVE_S * 500:
                client.ping()  # umqtt.simple does not keep the connection alive by itself
                last_sent = time.ticks_ms()
            client.check_msg()
            while self.inbox:
                topic, payload = self.inbox.pop(0)
                self.handle(client, topic, payload)
            time.sleep(0.05)

    # -- what the device publishes ------------------------------------------------------------
    def publish_telemetry(self, client):
        self.seq += 1
        reading = {
            "seq": self.seq,
            "values": {
                "temperature": round(18 + 4 * random.getrandbits(8) / 256, 2),
                "uptime_s": time.ticks_diff(time.ticks_ms(), self.started) // 1000,
            },
        }
        if clock_set():
            reading["ts"] = now_ms()
        client.publish(self.base + "/telemetry", json.dumps(reading).encode(), qos=1)

    # -- what the device receives -------------------------------------------------------------
    def handle(self, client, topic, payload):
        if not payload:
            return  # an empty retained message: the backend cleared a finished command
        try:
            body = json.loads(payload)
        except ValueError:
            log("ignoring a message that is not JSON on " + topic)
            return
        if not isinstance(body, dict):
            return
        if topic.endswith("/twin/desired"):
            self.on_desired(client, body)
        else:
            self.on_command(client, topic.split("/")[-1], body)

    def on_desired(self, client, desired):
        version, state = desired.get("version"), desired.get("state")
        if not isinstance(version, int) or not isinstance(state, dict):
            return
        if version == self.applied_version:
            return  # the same document again after a reconnect
        interval = state.get("interval")
        # Apply what we can; report what we really run, so a refused value shows as a delta.
        if isinstance(interval, (int, float)) and not isinstance(interval, bool):
            if 1 <= interval <= 3600:
                self.interval_s = interval
        applied = dict(state)
        applied["interval"] = self.interval_s
        applied["firmware"] = FIRMWARE
        report = {"version": version, "state": applied}
        if clock_set():
            # Our clock as seq: two reports of one version are applied in the order sent.
            report["seq"] = now_ms()
        client.publish(self.base + "/twin/reported", json.dumps(report).encode(), qos=1)
        self.applied_version = version
        log("applied desired version %d" % version)

    def on_command(self, client, command_id, command):
        topic = "%s/commands/%s/ack" % (self.base, command_id)
        if command_id in self.answered:
            # Delivered twice: answer again, never run it twice.
            client.publish(topic, self.answered[command_id], qos=1)
            return
        name, params = command.get("name"), command.get("params") or {}
        if name == "ping":
            answer = {"status": "succeeded", "result": {"pong": True}, "error": None}
        elif name == "set_interval" and isinstance(params.get("seconds"), int):
            self.interval_s = min(max(params["seconds"], 1), 3600)
            answer = {"status": "succeeded", "result": {"interval": self.interval_s}, "error": None}
        else:
            answer = {"status": "rejected", "result": None, "error": "unknown command %r" % name}
        log("command %s (%s): %s" % (name, command_id, answer["status"]))
        encoded = json.dumps(answer).encode()
        client.publish(topic, encoded, qos=1)
        self.answered[command_id] = encoded
        self.answered_order.append(command_id)
        if len(self.answered_order) > REMEMBERED_COMMANDS:
            del self.answered[self.answered_order.pop(0)]


def main(path="creds.json"):
    with open(path) as handle:
        device = Device(json.load(handle))
    device.run()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "creds.json")
