"""The project-local stack: a PostgreSQL cluster, a Mosquitto broker and the supervisor that
runs fieldhub's own processes next to them. The test suite starts its servers with the same
code, so what the tests exercise is what `fieldhub up` runs."""
