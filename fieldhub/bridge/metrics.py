"""Prometheus metrics of the bridge, in a registry of their own.

A private `CollectorRegistry` (rather than prometheus_client's global one) lets several
bridges live in one process, which the tests and the benchmark do. The hot path never touches
these objects per message: the paho thread counts in plain ints and the writer adds whole
batches, because a `Counter.inc()` takes a lock and costs as much as decoding a message."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fieldhub.core.health import HealthServer, ReadinessProbe

log = logging.getLogger(__name__)


class BridgeMetrics:
    def __init__(self, instance: int, broker: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Not `instance`: Prometheus sets that label itself (host:port of the scrape target).
        labels = {"bridge": str(instance), "broker": broker or ""}
        reg = self.registry
        self.messages = Counter(
            "fieldhub_bridge_messages",
            "MQTT messages received, by topic kind",
            ["kind"],
            registry=reg,
        )
        self.rows = Counter(
            "fieldhub_bridge_rows", "readings rows committed (before de-duplication)", registry=reg
        )
        self.duplicate_readings = Counter(
            "fieldhub_bridge_duplicate_readings",
            "readings received again with the same identity and content (stored once)",
            registry=reg,
        )
        self.conflicts = Counter(
            "fieldhub_bridge_conflicts",
            "readings received with a stored reading's identity but other content (the stored "
            "one is kept; the message is dead-lettered as conflict)",
            registry=reg,
        )
        self.dead_letters = Counter(
            "fieldhub_bridge_dead_letters",
            "messages dead-lettered, by reason",
            ["reason"],
            registry=reg,
        )
        self.batch_messages = Histogram(
            "fieldhub_bridge_batch_messages",
            "messages per committed batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000),
            registry=reg,
        )
        self.commit_seconds = Histogram(
            "fieldhub_bridge_commit_seconds",
            "time to write and commit one batch",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=reg,
        )
        self.backlog = Gauge(
            "fieldhub_bridge_backlog_messages",
            "messages received but not yet committed and acknowledged",
            registry=reg,
        )
        self.db_errors = Counter(
            "fieldhub_bridge_db_errors", "failed database transactions", registry=reg
        )
        self.staged_batches = Counter(
            "fieldhub_bridge_staged_batches",
            "batches written through the de-duplicating staging path",
            registry=reg,
        )
        self.broker_dropped = Gauge(
            "fieldhub_bridge_broker_dropped_messages",
            "the broker's $SYS/broker/publish/messages/dropped (messages lost to full queues)",
            registry=reg,
        )
        self.connected = Gauge(
            "fieldhub_bridge_connected", "1 while connected to the broker", registry=reg
        )
        self.ready = Gauge(
            "fieldhub_bridge_ready",
            "1 once connected and subscribed (what start-up scripts wait for)",
            registry=reg,
        )
        self.published = Counter(
            "fieldhub_bridge_published",
            "messages the bridge published to devices (commands, twin documents), PUBACK received",
            registry=reg,
        )
        self.publish_errors = Counter(
            "fieldhub_bridge_publish_errors",
            "publishes to devices that failed, got no PUBACK or were refused (retried later)",
            registry=reg,
        )
        self.dispatcher_leader = Gauge(
            "fieldhub_bridge_dispatcher_leader",
            "1 while this process's command dispatcher holds its broker's leader lock",
            registry=reg,
        )
        self.info = Gauge(
            "fieldhub_bridge_info",
            "this bridge process: its instance number and broker",
            ["bridge", "broker"],
            registry=reg,
        )
        self.info.labels(**labels).set(1)
        self._server: HealthServer | None = None

    def serve(
        self, port: int, host: str, *, alive: Callable[[], bool], probe: ReadinessProbe
    ) -> None:
        """Serve /metrics, /healthz and /readyz on `port` (0 = do not serve)."""
        if port:
            self._server = HealthServer(host, port, self.registry, alive=alive, probe=probe)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class RateLimitedLog:
    """One log line per problem per interval, with the count of what was suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            suppressed = self._suppressed.pop(key, 0)
            self._last[key] = now
        if suppressed:
            message += f" ({suppressed} similar suppressed)"
        self.logger.warning(message, *args)
