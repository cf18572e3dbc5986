"""The project-local stack behind `fieldhub up`, `status` and `down`: a PostgreSQL cluster
(postgres.py), Mosquitto brokers (fieldhub.broker) and the supervisor (supervisor.py) that runs
fieldhub's own processes next to them. One concern a module: preflight, probes, specs, up,
status, down; cluster.py adds what `--cluster` doubles. The test suite starts its servers with
the same code, so what the tests exercise is what `fieldhub up` runs."""
