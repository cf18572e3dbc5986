"""Before `fieldhub up` starts anything: where the stack keeps its state, whether the servers'
system users can reach it, whether the ports are free, the open-file limit, and whether a stack
is running there already."""

from __future__ import annotations

import dataclasses
import logging
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fieldhub.broker.mosquitto import BROKER_USER
from fieldhub.core.procs import port_open, running_as_root
from fieldhub.stack.postgres import PG_USER
from fieldhub.stack.supervisor import read_state, same_process_alive

log = logging.getLogger("fieldhub.stack")


class StackError(Exception):
    """`up`/`down` cannot go on; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class StackPaths:
    home: Path

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    @property
    def supervisor_log(self) -> Path:
        return self.log_dir / "supervisor.log"

    @property
    def detach_log(self) -> Path:
        return self.log_dir / "up.log"


def check_home(paths: StackPaths) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    for directory in (paths.run_dir, paths.log_dir):
        directory.mkdir(exist_ok=True)
    if running_as_root() and not _service_users_can_enter(paths.home):
        # A clone under /root (mode 0700 on Debian) is the usual case. The servers drop to
        # their own users and must pass through every parent directory: grant search only
        # (o+x: enter by exact path, not list), and say so.
        for directory in [*reversed(paths.home.parents), paths.home]:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                log.warning(
                    "allowing other users to pass through %s (chmod o+x) so the %s and %s "
                    "users can reach %s",
                    directory,
                    PG_USER,
                    BROKER_USER,
                    paths.home,
                )
                directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        if not _service_users_can_enter(paths.home):
            raise StackError(
                f"the {PG_USER} or {BROKER_USER} user cannot enter {paths.home}; make it and "
                "its parent directories searchable (chmod o+x) or choose another FIELDHUB_HOME"
            )


def _service_users_can_enter(directory: Path) -> bool:
    return all(
        subprocess.run(
            ["runuser", "-u", user, "--", "test", "-x", str(directory)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
        for user in (PG_USER, BROKER_USER)
    )


def check_ports_free(ports: Sequence[tuple[str, int]]) -> None:
    busy = [f"{port} ({what})" for what, port in ports if port_open(port)]
    if busy:
        raise StackError(
            "ports already in use: "
            + ", ".join(busy)
            + "; is another stack running? (`fieldhub status`), or set the FIELDHUB_*_PORT "
            "variables (see README)"
        )


def running_state(paths: StackPaths) -> dict[str, Any] | None:
    state = read_state(paths.state_file)
    if state and same_process_alive(
        state.get("supervisor_pid"), state.get("supervisor_start_time")
    ):
        return state
    return None
