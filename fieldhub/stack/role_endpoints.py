"""Where each role of a host answers: its systemd unit, its health and metrics URLs.

Pure: computed from the settings (ports, FIELDHUB_METRICS_HOST, FIELDHUB_WEB_HOST) by the
same rules the processes use to pick their ports, so `fieldhub status` on a host and the
Prometheus config agree with what runs. fieldhub.stack.roles probes them."""

from __future__ import annotations

import dataclasses

from fieldhub.core.config import Role, Settings, bridge_metrics_port, split_bridge_name

# Debian's own units for the servers we configure but do not run ourselves.
SYSTEM_UNITS = {
    "database": "postgresql.service",
    "broker": "mosquitto.service",
    "nginx": "nginx.service",
}


@dataclasses.dataclass(frozen=True)
class RoleEndpoints:
    role: str
    unit: str
    readyz: str | None = None
    healthz: str | None = None
    metrics: str | None = None


def _loopback(host: str) -> str:
    """A bind-all address is reached on loopback from the host itself."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - mapping a bind-all address
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def endpoints_of(settings: Settings, role: Role) -> RoleEndpoints:
    metrics_host = _loopback(settings.metrics_host)
    name = str(role)
    if role.kind in SYSTEM_UNITS:
        return RoleEndpoints(name, SYSTEM_UNITS[role.kind])
    unit = (
        f"fieldhub-{role.kind}@{role.instance}.service"
        if role.instance
        else (f"fieldhub-{role.kind}.service")
    )
    if role.kind == "bridge":
        broker, instance = split_bridge_name(role.instance)
        port = bridge_metrics_port(settings, broker, instance)
        return _http(name, unit, metrics_host, port, port)
    if role.kind == "worker":
        port = settings.ports.worker_metrics
        return _http(name, unit, metrics_host, port, port)
    if role.kind == "web":
        offset = int(role.instance) - 1 if role.instance.isdigit() else 0
        web = settings.ports.web + offset
        base = f"http://{_loopback(settings.web_host)}:{web}"
        return RoleEndpoints(
            name,
            unit,
            readyz=f"{base}/readyz",
            healthz=f"{base}/healthz",
            metrics=f"http://{metrics_host}:{settings.ports.web_metrics + offset}/metrics",
        )
    return RoleEndpoints(name, unit)  # migrate, auth-sync: no endpoint of their own


def _http(name: str, unit: str, host: str, health_port: int, metrics_port: int) -> RoleEndpoints:
    return RoleEndpoints(
        name,
        unit,
        readyz=f"http://{host}:{health_port}/readyz",
        healthz=f"http://{host}:{health_port}/healthz",
        metrics=f"http://{host}:{metrics_port}/metrics",
    )
