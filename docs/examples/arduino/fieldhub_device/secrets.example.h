// Copy to secrets.h and fill in from `fieldhub device create ID --org ORG --json`.
// Keep secrets.h out of version control: it holds the device's password.
#pragma once

#define WIFI_SSID "my-network"
#define WIFI_PASSWORD "my-wifi-password"
#define DEVICE_ID "my-device"            // "device_id" (also the MQTT username)
#define DEVICE_PASSWORD "from-the-json"  // "password": shown once by fieldhub
// "mqtt_urls", in the same order: the home broker first, then the standbys.
#define MQTT_URLS {"mqtts://broker-1.example.com:8883", "mqtts://broker-2.example.com:8883"}
// The CA that signed the brokers' server certificates (fieldhub's own: var/tls/ca.crt).
static const char CA_CERT[] = R"PEM(
-----BEGIN CERTIFICATE-----
...
-----END CERTIFICATE-----
)PEM";
