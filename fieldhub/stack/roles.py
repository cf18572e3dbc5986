"""`fieldhub status` on a host that runs roles (FIELDHUB_ROLES): each role's state.

A role with a health endpoint (web, bridge, worker) is "ready", "not ready" (its /readyz
answered 503, with the failing checks) or "down" (nothing answers); the others (database,
broker, auth-sync, migrate, nginx) report their systemd unit's state where systemd runs, and
"unknown" elsewhere. Every probe has a 2 s timeout, so status never hangs on a sick host."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fieldhub.core.config import Settings
from fieldhub.stack.role_endpoints import RoleEndpoints, endpoints_of

PROBE_TIMEOUT_S = 2.0


def role_status(settings: Settings) -> list[dict[str, Any]]:
    return [_probe(endpoints_of(settings, role)) for role in settings.roles]


def _probe(where: RoleEndpoints) -> dict[str, Any]:
    result: dict[str, Any] = {
        "role": where.role,
        "unit": where.unit,
        "unit_state": unit_state(where.unit),
        "metrics_url": where.metrics,
        "readyz_url": where.readyz,
    }
    if where.readyz is None:
        result["state"] = result["unit_state"]
        return result
    code, body = _get(where.readyz)
    if code is None:
        result["state"] = "down"
        result["detail"] = body
    elif code == 200:
        result["state"] = "ready"
    else:
        result["state"] = "not ready"
        checks = body.get("checks", {}) if isinstance(body, dict) else {}
        result["detail"] = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok") or body
    return result


def _get(url: str) -> tuple[int | None, Any]:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def unit_state(unit: str) -> str:
    """systemd's ActiveState of `unit` (active, failed, ...), or "unknown" without systemd."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return "unknown"
    result = subprocess.run(
        [systemctl, "show", "--property=ActiveState", "--value", unit],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def format_roles(roles: list[dict[str, Any]]) -> list[str]:
    lines = [f"  {'ROLE':<22} {'STATE':<10} {'UNIT STATE':<11} METRICS"]
    for role in roles:
        lines.append(
            f"  {role['role']:<22} {role['state']:<10} {role['unit_state']:<11} "
            f"{role['metrics_url'] or '-'}"
        )
        if role.get("detail"):
            lines.append(f"  {'':<22} {role['detail']}")
    return lines


def all_ready(roles: list[dict[str, Any]]) -> bool:
    """Nothing known to be wrong ("unknown": no systemd to ask, not a failure)."""
    return all(role["state"] in ("ready", "active", "unknown") for role in roles)
