#!/usr/bin/env node
// A complete fieldhub device in Node.js with mqtt.js (npm: mqtt).
//
// Same behaviour as the Python reference (docs/examples/python/fieldhub_device.py):
//   * falls back along `mqtt_urls` (home broker first, then the standbys), reconnecting with
//     exponential backoff and full jitter;
//   * retained "online" status with a Last Will of "offline";
//   * telemetry every `interval` seconds;
//   * twin: applies the (retained) desired document, reports what it applied;
//   * commands: one ack per command id, the same ack again for a repeat.
//
// Run:  npm ci            (in this directory; installs mqtt.js from package-lock.json)
//       fieldhub device create my-device --org my-org --json > creds.json
//       node fieldhub-device.js creds.json
// For mqtts:// URLs with a private CA, set FIELDHUB_CA_FILE=/path/to/ca.crt.
"use strict";

const fs = require("fs");
const mqtt = require("mqtt");

const FIRMWARE = "example-node-1.0";
const DEFAULT_INTERVAL_S = 10;
const BACKOFF_BASE_S = 1; // first retry within 0-2 s, then 0-4 s, 0-8 s ... (full jitter)
const BACKOFF_CAP_S = 60;
const REMEMBERED_COMMANDS = 200;

function log(message) {
  console.log(`${new Date().toISOString().slice(11, 19)} ${message}`);
}

const credentials = JSON.parse(fs.readFileSync(process.argv[2] || "creds.json", "utf8"));
const deviceId = credentials.device_id;
const base = `devices/${deviceId}`;
// Home broker first, then the standbys; older credentials only have mqtt_url.
const urls = credentials.mqtt_urls && credentials.mqtt_urls.length
  ? credentials.mqtt_urls
  : [credentials.mqtt_url];

let intervalS = DEFAULT_INTERVAL_S;
let appliedVersion = -1; // desired version last applied and reported
const answered = new Map(); // command id -> final ack sent
let seq = 0;
const started = Date.now();
let attempt = 0; // failed attempts since the last good connection
let client = null;
let telemetryTimer = null;
let stopping = false;

function connect() {
  // Each attempt takes the next URL: home first, then each standby, then home again.
  const url = urls[attempt % urls.length];
  const options = {
    clientId: deviceId, // the broker forces it to the username anyway
    username: credentials.username,
    password: credentials.password,
    protocolVersion: 4, // MQTT 3.1.1, like every example
    clean: true,
    keepalive: 30,
    connectTimeout: 10000,
    reconnectPeriod: 0, // we reconnect ourselves: backoff, and the next URL
    will: { topic: `${base}/status`, payload: "offline", qos: 1, retain: true },
  };
  if (url.startsWith("mqtts://") && process.env.FIELDHUB_CA_FILE) {
    options.ca = fs.readFileSync(process.env.FIELDHUB_CA_FILE);
  }
  let connected = false;
  const current = mqtt.connect(url, options);
  client = current;

  current.on("connect", () => {
    connected = true;
    attempt = 0;
    log(`connected to ${url}${url === urls[0] ? " (home)" : " (standby)"}`);
    current.publish(`${base}/status`, "online", { qos: 1, retain: true });
    // Retained messages deliver at once what waits for us: the whole desired document and
    // every pending command.
    current.subscribe({ [`${base}/twin/desired`]: { qos: 1 }, [`${base}/commands/+`]: { qos: 1 } });
    publishTelemetry();
  });
  current.on("message", (topic, payload) => onMessage(topic, payload));
  current.on("error", (err) => log(`${url}: ${err.message}`));
  current.on("close", () => {
    if (client !== current) return; // an old connection closing late
    clearTimeout(telemetryTimer);
    if (stopping) return;
    if (connected) {
      log("connection lost");
    } else {
      log(`cannot connect to ${url}`);
      attempt += 1;
    }
    current.removeAllListeners();
    current.end(true);
    const cap = Math.min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt);
    const delay = attempt ? Math.random() * cap : 0;
    if (attempt) log(`retrying in ${delay.toFixed(1)} s with ${urls[attempt % urls.length]}`);
    setTimeout(connect, delay * 1000);
  });
}

// -- what the device publishes -------------------------------------------------------------
function publishTelemetry() {
  seq += 1;
  const reading = {
    ts: Date.now(),
    seq,
    values: {
      temperature: Math.round((20 + (Math.random() * 4 - 2)) * 100) / 100,
      uptime_s: Math.floor((Date.now() - started) / 1000),
    },
  };
  client.publish(`${base}/telemetry`, JSON.stringify(reading), { qos: 1 });
  telemetryTimer = setTimeout(publishTelemetry, intervalS * 1000);
}

function report(version, state) {
  // version: the desired version applied; seq: our clock, so that two reports of one version
  // are applied in the order we sent them.
  client.publish(`${base}/twin/reported`, JSON.stringify({ version, seq: Date.now(), state }), { qos: 1 });
}

function ack(commandId, body) {
  client.publish(`${base}/commands/${commandId}/ack`, JSON.stringify(body), { qos: 1 });
}

// -- what the device receives --------------------------------------------------------------
function onMessage(topic, payload) {
  if (payload.length === 0) return; // the backend cleared a finished command
  let body;
  try {
    body = JSON.parse(payload.toString("utf8"));
  } catch (err) {
    log(`ignoring a message that is not JSON on ${topic}`);
    return;
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) return;
  if (topic.endsWith("/twin/desired")) onDesired(body);
  else onCommand(topic.slice(topic.lastIndexOf("/") + 1), body);
}

function onDesired(desired) {
  const { version, state } = desired;
  if (!Number.isInteger(version) || state === null || typeof state !== "object") return;
  if (version === appliedVersion) return; // the same document again after a reconnect
  // Apply what we can; report what we really run, so a value we refuse shows as a delta.
  if (typeof state.interval === "number" && state.interval >= 1 && state.interval <= 3600) {
    intervalS = state.interval;
  }
  log(`applied desired version ${version}: ${JSON.stringify(state)}`);
  report(version, { ...state, interval: intervalS, firmware: FIRMWARE });
  appliedVersion = version;
}

function onCommand(commandId, command) {
  if (answered.has(commandId)) {
    ack(commandId, answered.get(commandId)); // delivered twice: answer again, run once
    return;
  }
  const params = command.params || {};
  let answer;
  if (command.name === "ping") {
    answer = { status: "succeeded", result: { pong: true }, error: null };
  } else if (command.name === "set_interval" && Number.isInteger(params.seconds)) {
    intervalS = Math.min(Math.max(params.seconds, 1), 3600);
    answer = { status: "succeeded", result: { interval: intervalS }, error: null };
  } else {
    answer = { status: "rejected", result: null, error: `unknown command '${command.name}'` };
  }
  log(`command ${command.name} (${commandId}): ${answer.status}`);
  ack(commandId, answer);
  answered.set(commandId, answer);
  while (answered.size > REMEMBERED_COMMANDS) answered.delete(answered.keys().next().value);
}

function stop() {
  stopping = true;
  clearTimeout(telemetryTimer);
  if (client && client.connected) {
    client.publish(`${base}/status`, "offline", { qos: 1, retain: true }, () => {
      client.end(false, () => process.exit(0));
    });
  } else {
    process.exit(0);
  }
}

process.on("SIGTERM", stop);
process.on("SIGINT", stop);
connect();
