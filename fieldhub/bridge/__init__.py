"""The bridge between the MQTT brokers and fieldhub's storage: telemetry, statuses and command
acknowledgements in, commands out. Builds on fieldhub.core only."""
