"""fieldhub: an MQTT IoT backend (Mosquitto, PostgreSQL+TimescaleDB, Flask).

One namespace, in floors: fieldhub.core at the bottom imports no other subpackage; the apps
(fieldhub.broker, fieldhub.bridge, fieldhub.analysis, fieldhub.web) build on the core; the
command line (fieldhub.cli), the local stack (fieldhub.stack), the simulator (fieldhub.sim)
and the benchmarks (fieldhub.bench) sit on top. This module imports nothing of the project."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fieldhub")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
