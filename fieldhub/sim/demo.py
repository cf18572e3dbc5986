"""Demo data for `fieldhub up --demo`: organisation `demo` and a login for it.

The demo devices themselves (demo-01..demo-12, labelled by site) are created by the simulator
(`fieldhub simulate --org demo --prefix demo`), which needs their secrets anyway. The demo
user's password is generated once and kept in the stack's secrets directory (0600), so every
`up --demo` prints the same, working login."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from fieldhub.core import registry, users
from fieldhub.core.db import Conn

DEMO_ORG = "demo"
DEMO_EMAIL = "demo@example.com"
DEMO_ROLE = "admin"  # sees and manages everything in the demo organisation, nothing else
DEMO_DEVICES = 12
DEMO_INTERVAL_S = 2.0  # values move on the page within seconds of opening it


@dataclasses.dataclass(frozen=True)
class DemoLogin:
    email: str
    password_file: Path
    created: bool  # False when an earlier `up --demo` made it

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()


def demo_password(secrets_dir: Path) -> Path:
    path = secrets_dir / "demo-user.password"
    if not path.exists():
        secrets_dir.mkdir(parents=True, exist_ok=True)
        secrets_dir.chmod(0o700)
        path.write_text(secrets.token_urlsafe(12) + "\n")
        path.chmod(0o600)
    return path


def ensure_demo(conn: Conn, secrets_dir: Path) -> DemoLogin:
    """Create the demo organisation and user if missing; make the stored password work."""
    try:
        registry.get_org(conn, DEMO_ORG)
    except registry.NotFound:
        registry.create_org(conn, DEMO_ORG, "Demo (simulated devices)")
    password_file = demo_password(secrets_dir)
    password = password_file.read_text().strip()
    try:
        users.create_user(conn, DEMO_EMAIL, org=DEMO_ORG, role=DEMO_ROLE, password=password)
        return DemoLogin(DEMO_EMAIL, password_file, True)
    except ValueError:
        # Already there (an earlier `up --demo`): keep the account, but make sure the password
        # we are about to print is the one that works.
        user = users.get_user(conn, DEMO_EMAIL)
        if users.authenticate(conn, DEMO_EMAIL, password) is None:
            users.set_password(conn, user["id"], password)
        return DemoLogin(DEMO_EMAIL, password_file, False)
