"""systemd units as a lab host runs them: what a unit's service section says to run, read the
way systemd reads it, for one instance, with a real host's paths mapped into the lab host's own
directory tree.

Pure: parsing and mapping only; fieldhub/bench/hosts_lab.py starts what this describes.

Read from a unit file and its drop-ins, in order: `ExecStart=` (an empty assignment resets
the list, as a drop-in does to replace the packaged command), `Environment=`,
`EnvironmentFile=` (a leading `-` makes it optional), `User=`, `Group=`,
`WorkingDirectory=`, `StateDirectory=` and `RuntimeDirectory=`. Specifiers `%i`, `%I`, `%n`,
`%N`, `%p` and `%%` are expanded; the `-`, `@`, `:`, `+`, `!` prefixes of `ExecStart=` are
dropped (the lab runs the plain command). Everything else (hardening, restart policy) is
systemd's business and not modelled: a lab host has no systemd."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

SERVICE_KEYS = (
    "ExecStart",
    "Environment",
    "EnvironmentFile",
    "User",
    "Group",
    "WorkingDirectory",
    "StateDirectory",
    "RuntimeDirectory",
)
# Where a host keeps what systemd creates for a unit (StateDirectory=x is /var/lib/x).
STATE_ROOT = "/var/lib"
RUNTIME_ROOT = "/run"
EXEC_PREFIXES = "-@:+!"
# The machine's, shared by every lab host: programs, libraries, the kernel's file systems.
SHARED = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/sys", "/dev")


class UnitError(ValueError):
    """A unit says something the lab cannot run; the message names the unit and the line."""


@dataclasses.dataclass(frozen=True)
class Service:
    unit: str  # e.g. fieldhub-bridge@broker-1-2.service
    argv: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    environment_files: tuple[tuple[str, bool], ...]  # (path, required)
    user: str | None
    group: str | None
    working_directory: str | None
    state_directories: tuple[str, ...]  # absolute, under STATE_ROOT
    runtime_directories: tuple[str, ...]  # absolute, under RUNTIME_ROOT


def service_section(texts: Sequence[str]) -> dict[str, list[str]]:
    """The [Service] settings of a unit file followed by its drop-ins, each key's values in
    order; an empty assignment clears what came before (systemd's list reset)."""
    settings: dict[str, list[str]] = {}
    for text in texts:
        section = ""
        for line in _logical_lines(text):
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            if section != "Service" or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if key not in SERVICE_KEYS:
                continue
            if value == "":
                settings[key] = []
            else:
                settings.setdefault(key, []).append(value)
    return settings


def _logical_lines(text: str) -> list[str]:
    """Lines with comments dropped and backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending.strip())
    return lines


def expand(value: str, unit: str) -> str:
    """systemd's specifiers in `value` for `unit` (e.g. fieldhub-web@2.service)."""
    name = unit.removesuffix(".service")
    prefix, at, instance = name.partition("@")
    replacements = {
        "i": instance,
        "I": instance,
        "n": unit,
        "N": name,
        "p": prefix,
        "%": "%",
    }
    out = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "%" and index + 1 < len(value):
            spec = value[index + 1]
            if spec not in replacements:
                raise UnitError(f"{unit}: specifier %{spec} is not supported here")
            if spec in "iI" and not at:
                raise UnitError(f"{unit}: %{spec} in a unit that is not an instance")
            out.append(replacements[spec])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def service(unit: str, texts: Sequence[str]) -> Service:
    """What `unit` (an instance name like fieldhub-web@2.service, or a plain one) runs, from
    its template's text followed by the texts of its drop-ins."""
    settings = service_section(texts)
    starts = settings.get("ExecStart", [])
    if len(starts) != 1:
        raise UnitError(f"{unit}: needs exactly one ExecStart=, found {len(starts)}")
    command = expand(starts[0], unit).lstrip(EXEC_PREFIXES)
    environment: list[tuple[str, str]] = []
    for line in settings.get("Environment", []):
        for assignment in shlex.split(expand(line, unit)):
            key, sep, value = assignment.partition("=")
            if not sep:
                raise UnitError(f"{unit}: Environment={line} is not KEY=VALUE")
            environment.append((key, value))
    files = []
    for line in settings.get("EnvironmentFile", []):
        path = expand(line, unit)
        files.append((path.removeprefix("-"), not path.startswith("-")))

    def one(key: str) -> str | None:
        values = settings.get(key, [])
        return expand(values[-1], unit) if values else None

    def directories(key: str, root: str) -> tuple[str, ...]:
        names = [n for line in settings.get(key, []) for n in expand(line, unit).split()]
        return tuple(f"{root}/{name}" for name in names)

    return Service(
        unit=unit,
        argv=tuple(shlex.split(command)),
        environment=tuple(environment),
        environment_files=tuple(files),
        user=one("User"),
        group=one("Group"),
        working_directory=one("WorkingDirectory"),
        state_directories=directories("StateDirectory", STATE_ROOT),
        runtime_directories=directories("RuntimeDirectory", RUNTIME_ROOT),
    )


@dataclasses.dataclass(frozen=True)
class HostPaths:
    """A real host's paths in a lab host: the install's prefix maps to the lab's virtualenv,
    the machine's programs and libraries (SHARED) stay where they are, and every other path
    (/etc, /var, /run, ...) goes to the host's own directory tree, so nothing a lab host
    writes can land on the machine itself."""

    root: str  # the host's directory, standing for its /
    install_prefix: str  # the units' install location, e.g. /opt/fieldhub
    venv: str  # where that install is in the lab

    def map(self, path: str) -> str:
        pure = PurePosixPath(path)
        prefix = PurePosixPath(self.install_prefix)
        if _under(pure, prefix):
            return str(PurePosixPath(self.venv) / pure.relative_to(prefix))
        if any(_under(pure, PurePosixPath(top)) for top in SHARED):
            return path
        return str(PurePosixPath(self.root) / pure.relative_to("/"))

    def map_value(self, value: str) -> str:
        """Absolute paths inside a value (an argument, a URL-free setting) mapped; a value
        that is not an absolute path is returned as it is."""
        if value.startswith("/"):
            return self.map(value)
        if "=" in value and value.partition("=")[2].startswith("/"):
            key, _, path = value.partition("=")
            return f"{key}={self.map(path)}"
        return value

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        return {key: self.map_value(value) for key, value in env.items()}


def _under(path: PurePosixPath, top: PurePosixPath) -> bool:
    return path == top or top in path.parents
