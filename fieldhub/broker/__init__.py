"""What runs on a broker host: the Mosquitto configuration and the auth sync that renders the
registry into the broker's password and ACL files. Builds on fieldhub.core only."""
