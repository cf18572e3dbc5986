"""Bridge between the MQTT broker and fieldhub storage."""
