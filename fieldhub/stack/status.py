"""`fieldhub status` and the banner of `fieldhub up`: the stack as its supervisor's state file
records it, checked against the processes that are really alive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fieldhub.core import endpoints
from fieldhub.core.config import Settings
from fieldhub.stack.preflight import StackPaths
from fieldhub.stack.roles import all_ready, format_roles, role_status
from fieldhub.stack.supervisor import read_state, same_process_alive


def banner(settings: Settings, state: dict[str, Any]) -> str:
    urls = state.get("urls", {})
    lines = [
        "",
        f"fieldhub is up (home {state.get('home')})",
        f"  web:       {urls.get('web_url')}",
        f"  devices:   {urls.get('mqtt_device_url')}"
        + (f"  (TLS: {urls['mqtts_device_url']})" if urls.get("mqtts_device_url") else ""),
        f"  database:  {urls.get('database_url')}",
    ]
    if urls.get("read_database_url"):
        lines.append(f"  reads:     {urls['read_database_url']} (streaming replica)")
    brokers = state.get("brokers") or {}
    if len(brokers) > 1:
        for name, broker in brokers.items():
            lines.append(f"  {name + ':':<10} {broker['mqtt_device_url']} (devices homed there)")
        lines.append(
            f"  run CLI commands with FIELDHUB_LOCAL_BROKERS={len(brokers)} so new devices "
            "are spread over the brokers"
        )
    login = state.get("demo_login")
    if login:
        password = Path(login["password_file"]).read_text().strip()
        lines.append(f"  demo login: {login['email']} / {password}")
    lines.append("  `fieldhub status` shows every process; logs are in " + str(settings.log_dir))
    return "\n".join(lines) + "\n"


def stack_status(settings: Settings) -> dict[str, Any]:
    paths = StackPaths(settings.home)
    state = read_state(paths.state_file)
    supervisor_alive = bool(
        state
        and same_process_alive(state.get("supervisor_pid"), state.get("supervisor_start_time"))
    )
    urls = endpoints.stack_urls(settings)
    result: dict[str, Any] = {
        "running": supervisor_alive,
        "phase": (state or {}).get("phase", "stopped") if supervisor_alive else "stopped",
        "home": str(paths.home),
        "supervisor_pid": (state or {}).get("supervisor_pid") if supervisor_alive else None,
        **{key: value for key, value in urls.items()},
        "processes": {},
    }
    if state and supervisor_alive:
        result["read_database_url"] = (state.get("urls") or {}).get("read_database_url")
        result["cluster"] = bool(state.get("cluster"))
        result["brokers"] = state.get("brokers") or {}
    if state:
        if state.get("demo_login"):
            result["demo_login"] = {
                "email": state["demo_login"]["email"],
                "password_file": state["demo_login"]["password_file"],
            }
        for name in state.get("order", []):
            info = state["processes"][name]
            alive = same_process_alive(info.get("pid"), info.get("pid_start_time"))
            recorded = info.get("state", "unknown")
            if not supervisor_alive:
                process_state = "orphaned" if alive else "stopped"
            elif recorded == "running" and not alive:
                process_state = "exited"  # died since the supervisor last looked
            else:
                process_state = recorded
            result["processes"][name] = {
                "state": process_state,
                "pid": info.get("pid") if alive else None,
                "restarts": info.get("restarts", 0),
                "last_exit": info.get("last_exit"),
                "log": info.get("log"),
                "metrics_url": info.get("metrics_url"),
            }
    if settings.roles:
        result["roles"] = role_status(settings)
    return result


def status_ok(status: dict[str, Any]) -> bool:
    """A host with roles is fine when they are; otherwise, when the local stack runs."""
    if "roles" in status:
        return all_ready(status["roles"])
    return bool(status["running"])


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"fieldhub stack under {status['home']}: "
        + (f"running (supervisor pid {status['supervisor_pid']})" if status["running"] else "down"),
        f"  web:      {status['web_url']}",
        f"  devices:  {status['mqtt_device_url']}",
        f"  services: {status['mqtt_url']}",
        f"  database: {status['database_url']}",
    ]
    brokers = status.get("brokers") or {}
    if len(brokers) > 1:
        lines[2:3] = [
            f"  devices:  {broker['mqtt_device_url']} ({name})" for name, broker in brokers.items()
        ]
    if status["processes"]:
        lines.append(f"  {'PROCESS':<18} {'STATE':<12} {'PID':>8} {'RESTARTS':>8}  METRICS")
        for name, info in status["processes"].items():
            pid = info.get("pid") or "-"
            lines.append(
                f"  {name:<18} {info['state']:<12} {pid!s:>8} {info.get('restarts', 0)!s:>8}"
                + (f"  {info['metrics_url']}" if info.get("metrics_url") else "")
            )
    if any(info["state"] == "orphaned" for info in status["processes"].values()):
        lines.append("  the supervisor is gone but processes remain: `fieldhub down` stops them")
    if "roles" in status:
        lines.append("roles of this host (FIELDHUB_ROLES):")
        lines += format_roles(status["roles"])
    return "\n".join(lines)
