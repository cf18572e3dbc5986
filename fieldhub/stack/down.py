"""`fieldhub down`: stop the supervisor, and whatever a supervisor that is gone left running."""

from __future__ import annotations

import contextlib
import logging
import signal

from fieldhub.core.config import Settings
from fieldhub.stack.postgres import local_cluster
from fieldhub.stack.preflight import StackPaths
from fieldhub.stack.supervisor import read_state, same_process_alive, stop_recorded

log = logging.getLogger("fieldhub.stack")


def stop_stack(settings: Settings, *, timeout: float = 120.0) -> str:
    paths = StackPaths(settings.home)
    state = read_state(paths.state_file)
    if state is None:
        message = f"no stack is running under {paths.home}"
    else:
        pid = int(state["supervisor_pid"])
        if stop_recorded(pid, state.get("supervisor_start_time"), signal.SIGTERM, timeout):
            message = f"stopped the stack under {paths.home}"
        else:
            message = f"the supervisor under {paths.home} was not running; cleaned up after it"
    clean_leftovers(paths)
    if settings.database_url is None:
        cluster = local_cluster(settings)
        # A postmaster left by a crashed supervisor (or started by hand) is stopped the
        # documented way.
        if cluster.initialised and cluster.running():
            cluster.stop("fast")
    return message


def clean_leftovers(paths: StackPaths) -> None:
    """Stop processes recorded by a supervisor that is gone (killed, machine crash)."""
    state = read_state(paths.state_file)
    if state is None:
        return
    if same_process_alive(state.get("supervisor_pid"), state.get("supervisor_start_time")):
        return
    for name in reversed(state.get("order", [])):
        info = state["processes"][name]
        if info.get("pid") and stop_recorded(
            int(info["pid"]),
            info.get("pid_start_time"),
            int(info.get("stop_signal", signal.SIGTERM)),
            30,
        ):
            log.warning(
                "stopped %s (pid %s), left behind by a previous supervisor", name, info["pid"]
            )
    with contextlib.suppress(FileNotFoundError):
        paths.state_file.unlink()
