"""fieldhub as an operator installs it: a wheel built from this checkout (`python -m build`),
installed without extras into a virtualenv of its own, its dependencies from the runtime lock
file (requirements/runtime.txt, hash-checked) where the checkout has one.

Benchmarks that run fieldhub on several hosts run every role from such an install, never from
the checkout, so a file the wheel forgets to carry (a migration, a template, a static file)
fails the benchmark. Building and installing takes about 35 s here (pip resolves and installs
every dependency), so the virtualenv is kept under the checkout's var/bench/, keyed by a digest
of everything that goes into the wheel, and reused while the sources are unchanged; a lock
serialises two runs that need the same one. Not in a shared temporary directory: root runs
what is installed there, so nobody else may be able to plant it."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from fieldhub.core.config import PROJECT_ROOT

log = logging.getLogger("fieldhub.bench.install")

CACHE_DIR = PROJECT_ROOT / "var" / "bench"
KEEP_VENVS = 3
# The lock file of the runtime's dependencies, as the deploy guide installs them.
RUNTIME_LOCK = Path("requirements") / "runtime.txt"
# What the install is made of: the package, the files setuptools reads, and the lock.
BUILD_INPUTS = (
    "setup.cfg",
    "setup.py",
    "pyproject.toml",
    "README.md",
    "MANIFEST.in",
    "LICENSE",
    str(RUNTIME_LOCK),
)
SKIP_PARTS = frozenset({"__pycache__"})
DONE_MARK = ".installed"
SYSTEM_PYTHON = "/usr/bin/python3"


class InstallError(Exception):
    """The wheel could not be built or installed; the message has the tool's output."""


def source_root() -> Path:
    """The checkout to build from (a wheel-only install has none to build)."""
    root = PROJECT_ROOT
    if not (root / "pyproject.toml").exists() or not (root / "fieldhub").is_dir():
        raise InstallError(
            f"no fieldhub source checkout at {root}; pass the virtualenv of an existing install"
        )
    return root


def source_digest(root: Path) -> str:
    digest = hashlib.sha256(system_python().encode() + b"\0")
    files = [root / name for name in BUILD_INPUTS if (root / name).exists()]
    files += sorted(
        path
        for path in (root / "fieldhub").rglob("*")
        if path.is_file() and not SKIP_PARTS & set(path.parts) and path.suffix != ".pyc"
    )
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def installed_venv(
    progress: Callable[[str], None] = lambda text: None,
    *,
    cache_dir: Path = CACHE_DIR,
) -> Path:
    """A virtualenv with the wheel of the current sources installed; built if needed."""
    root = source_root()
    digest = source_digest(root)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    owner = cache_dir.stat()
    if owner.st_uid != os.geteuid() or owner.st_mode & 0o022:
        raise InstallError(f"{cache_dir} must belong to this user and be writable by it only")
    venv = cache_dir / f"venv-{digest}"
    with (cache_dir / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / DONE_MARK).exists():
            progress(f"reusing {venv} (the wheel of these sources is installed there)")
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="fieldhub-wheel-") as scratch:
            progress("building the wheel (python -m build)")
            _run([sys.executable, "-m", "build", "--wheel", "--outdir", scratch, str(root)])
            wheels = sorted(Path(scratch).glob("fieldhub-*.whl"))
            if len(wheels) != 1:
                raise InstallError(f"expected one fieldhub wheel in {scratch}, found {wheels}")
            progress(f"installing {wheels[0].name} into {venv} (no extras)")
            _run([system_python(), "-m", "venv", str(venv)])
            pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
            runtime_lock = root / RUNTIME_LOCK
            if runtime_lock.exists():
                # As an operator installs: the locked dependencies, checked against their
                # hashes, then the wheel alone, so nothing unlocked sneaks in.
                _run([*pip, "--require-hashes", "-r", str(runtime_lock)])
                _run([*pip, "--no-deps", str(wheels[0])])
            else:
                _run([*pip, str(wheels[0])])
        check_starts(venv)
        (venv / DONE_MARK).write_text(wheels[0].name + "\n")
        venv.chmod(0o755)
        _forget_old(cache_dir, keep=venv)
    return venv


def system_python() -> str:
    """The interpreter the deploy guide makes the virtualenv with: Debian's python3. Not this
    process's own, which may live where the services' users cannot enter (a pyenv under
    /root here)."""
    for candidate in (SYSTEM_PYTHON, shutil.which("python3")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return sys.executable


def check_starts(venv: Path) -> None:
    """The installed command starts (an import of a package the wheel does not depend on
    fails here, not in the middle of a run)."""
    fieldhub = venv / "bin" / "fieldhub"
    if not fieldhub.exists():
        raise InstallError(f"{venv} has no bin/fieldhub: not a fieldhub install")
    try:
        _run([str(fieldhub), "--help"])
    except InstallError as exc:
        raise InstallError(f"the installed fieldhub does not start: {exc}") from None


def _forget_old(cache_dir: Path, keep: Path) -> None:
    others = sorted(
        (p for p in cache_dir.glob("venv-*") if p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in others[KEEP_VENVS - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InstallError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-4000:]}"
            f"{result.stderr[-4000:]}"
        )
