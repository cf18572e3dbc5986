// A complete fieldhub device for ESP32 (Arduino core) with PubSubClient and ArduinoJson 7.
//
// Same behaviour as the Python reference (docs/examples/python/fieldhub_device.py):
//   * falls back along MQTT_URLS (home broker first, then the standbys), reconnecting with
//     exponential backoff and full jitter;
//   * retained "online" status with a Last Will of "offline";
//   * telemetry every `interval` seconds;
//   * twin: applies the (retained) desired document, reports what it applied;
//   * commands: one ack per command id, the same ack again for a repeat.
//
// Libraries (Library Manager): "PubSubClient" by Nick O'Leary, "ArduinoJson" 7.x by Benoit
// Blanchon. Board: any ESP32. Fill in secrets.h from `fieldhub device create ID --org ORG
// --json`: DEVICE_ID, DEVICE_PASSWORD, the MQTT_URLS list in its order, and for mqtts:// the
// CA certificate of your broker's server certificate (fieldhub's CA: var/tls/ca.crt).
//
// PubSubClient publishes at QoS 0 only. A report or an ack lost with a connection is not
// resent by the library, so this sketch reports its desired state again after every
// reconnect, and fieldhub re-sends an unanswered command (it is retained) at every
// subscribe, which this sketch then answers again from its memory of answered ids.
// This file is not compiled by fieldhub's tests (no ESP32 toolchain there); the Python, Node,
// C and MicroPython examples with the same logic are.

#include <ArduinoJson.h>
#include <PubSubClient.h>
#include <WiFi.h>
#include <WiFiClientSecure.h>
#include <time.h>

#include "secrets.h"  // WIFI_SSID, WIFI_PASSWORD, DEVICE_ID, DEVICE_PASSWORD, MQTT_URLS, CA_CERT

static const char *FIRMWARE = "example-esp32-1.0";
static const unsigned long BACKOFF_BASE_MS = 1000;  // retries within 0-2 s, 0-4 s, ...
static const unsigned long BACKOFF_CAP_MS = 60000;
static const int REMEMBERED_COMMANDS = 32;
static const size_t MQTT_BUFFER = 17 * 1024;  // a twin document is at most 16 KiB

static const char *urls[] = MQTT_URLS;  // e.g. {"mqtts://home.example:8883", "mqtts://standby.example:8883"}
static const int urlCount = sizeof(urls) / sizeof(urls[0]);

WiFiClient plainNet;
WiFiClientSecure tlsNet;
PubSubClient mqtt;
String base = String("devices/") + DEVICE_ID;

float intervalS = 10;
long appliedVersion = -1;  // desired version last applied and reported
String answeredIds[REMEMBERED_COMMANDS];
String answeredAcks[REMEMBERED_COMMANDS];
int nextAnswer = 0;
unsigned long seqNo = 0;
unsigned long nextTelemetry = 0;
int attempt = 0;  // failed attempts since the last good connection
unsigned long retryAt = 0;

bool clockSet() { return time(nullptr) > 1704067200; }  // after 2024-01-01: NTP has answered

uint64_t nowMs() {
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  return (uint64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

// -- what the device publishes -----------------------------------------------------------
void publishJson(const String &topic, JsonDocument &doc, bool retain = false) {
  String text;
  serializeJson(doc, text);
  mqtt.publish(topic.c_str(), text.c_str(), retain);
}

void publishTelemetry() {
  JsonDocument reading;
  seqNo += 1;
  if (clockSet()) reading["ts"] = nowMs();
  reading["seq"] = seqNo;
  reading["values"]["temperature"] = 20.0 + (esp_random() % 400 - 200) / 100.0;
  reading["values"]["uptime_s"] = millis() / 1000;
  publishJson(base + "/telemetry", reading);
}

// -- what the device receives ------------------------------------------------------------
void onDesired(JsonDocument &desired) {
  if (!desired["version"].is<long>() || !desired["state"].is<JsonObject>()) return;
  long version = desired["version"];
  if (version == appliedVersion) return;  // the same document again
  JsonObject state = desired["state"];
  // Apply what we can; report what we really run, so a refused value shows as a delta.
  if (state["interval"].is<float>()) {
    float wanted = state["interval"];
    if (wanted >= 1 && wanted <= 3600) intervalS = wanted;
  }
  JsonDocument report;
  report["version"] = version;
  // Our clock as seq: two reports of one version are applied in the order we sent them.
  if (clockSet()) report["seq"] = nowMs();
  report["state"] = state;
  report["state"]["interval"] = intervalS;
  report["state"]["firmware"] = FIRMWARE;
  publishJson(base + "/twin/reported", report);
  appliedVersion = version;
}

void onCommand(const String &commandId, JsonDocument &command) {
  String ackTopic = base + "/commands/" + commandId + "/ack";
  for (int i = 0; i < REMEMBERED_COMMANDS; i++) {
    if (answeredIds[i] == commandId) {  // delivered twice: answer again, never run it twice
      mqtt.publish(ackTopic.c_str(), answeredAcks[i].c_str());
      return;
    }
  }
  JsonDocument answer;
  const char *name = command["name"] | "";
  if (strcmp(name, "ping") == 0) {
    answer["status"] = "succeeded";
    answer["result"]["pong"] = true;
    answer["error"] = nullptr;
  } else if (strcmp(name, "set_interval") == 0 && command["params"]["seconds"].is<int>()) {
    intervalS = constrain((int)command["params"]["seconds"], 1, 3600);
    answer["status"] = "succeeded";
    answer["result"]["interval"] = intervalS;
    answer["error"] = nullptr;
  } else {
    answer["status"] = "rejected";
    answer["result"] = nullptr;
    answer["error"] = String("unknown command '") + name + "'";
  }
  String text;
  serializeJson(answer, text);
  mqtt.publish(ackTopic.c_str(), text.c_str());
  answeredIds[nextAnswer] = commandId;
  answeredAcks[nextAnswer] = text;
  nextAnswer = (nextAnswer + 1) % REMEMBERED_COMMANDS;
}

void onMessage(char *topic, byte *payload, unsigned int length) {
  if (length == 0) return;  // an empty retained message: the backend cleared a command
  JsonDocument body;
  if (deserializeJson(body, payload, length) || !body.is<JsonObject>()) return;
  String t(topic);
  if (t.endsWith("/twin/desired")) {
    onDesired(body);
  } else {
    onCommand(t.substring(t.lastIndexOf('/') + 1), body);
  }
}

// -- connection --------------------------------------------------------------------------
bool connectTo(const char *url) {
  String u(url);
  bool tls = u.startsWith("mqtts://");
  String rest = u.substring(u.indexOf("://") + 3);
  int colon = rest.lastIndexOf(':');
  String host = colon > 0 ? rest.substring(0, colon) : rest;
  int port = colon > 0 ? rest.substring(colon + 1).toInt() : (tls ? 8883 : 1883);
  if (tls) {
    tlsNet.setCACert(CA_CERT);
    mqtt.setClient(tlsNet);
  } else {
    mqtt.setClient(plainNet);
  }
  mqtt.setServer(host.c_str(), port);
  String statusTopic = base + "/status";
  // Clean session; the broker publishes the Last Will if we vanish without a goodbye.
  if (!mqtt.connect(DEVICE_ID, DEVICE_ID, DEVICE_PASSWORD, statusTopic.c_str(), 1, true,
                    "offline", true)) {
    Serial.printf("cannot connect to %s (state %d)\n", url, mqtt.state());
    return false;
  }
  Serial.printf("connected to %s%s\n", url, url == urls[0] ? " (home)" : " (standby)");
  mqtt.publish(statusTopic.c_str(), "online", true);
  // Report again after every reconnect: a QoS 0 report may have been lost with the last one.
  appliedVersion = -1;
  // Retained messages deliver at once the whole desired document and every pending command.
  mqtt.subscribe((base + "/twin/desired").c_str(), 1);
  mqtt.subscribe((base + "/commands/+").c_str(), 1);
  nextTelemetry = millis();
  return true;
}

void setup() {
  Serial.begin(115200);
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  while (WiFi.status() != WL_CONNECTED) delay(200);
  configTime(0, 0, "pool.ntp.org");  // UTC; readings carry ts once the clock is set
  mqtt.setBufferSize(MQTT_BUFFER);
  mqtt.setKeepAlive(30);
  mqtt.setCallback(onMessage);
}

void loop() {
  if (!mqtt.connected()) {
    if (millis() < retryAt) return;
    // Each attempt takes the next URL: home first, then each standby, then home again.
    if (connectTo(urls[attempt % urlCount])) {
      attempt = 0;
    } else {
      attempt += 1;
      unsigned long cap = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << min(attempt, 16));
      retryAt = millis() + esp_random() % (cap + 1);  // full jitter
      return;
    }
  }
  mqtt.loop();
  if ((long)(millis() - nextTelemetry) >= 0) {
    publishTelemetry();
    nextTelemetry = millis() + (unsigned long)(intervalS * 1000);
  }
}
