"""People who log in: accounts, Argon2id passwords, web sessions, API tokens, login throttling.

Shared by the web app and the CLI (`fieldhub user create|disable`, `fieldhub token
create|list|revoke`), so the rules hold on both sides: password length, roles, "a password
change or a disabled account ends every session and revokes every API token", tokens that
expire.
Session cookies and API tokens are 256 random bits; only their SHA-256 is stored, so a copy
of the database does not let anyone in. Throttling state lives in the database, so it holds
across every gunicorn worker and every web host."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict, cast

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from fieldhub.core import registry, time_zones
from fieldhub.core.db import Conn, Queries

QUERIES = Queries(Path(__file__).with_name("users.sql"))

ROLES = ("operator", "admin", "member", "viewer")
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+")
SESSION_TTL_S = 7 * 24 * 3600
API_TOKEN_PREFIX = "fh_"  # noqa: S105 (a prefix that makes leaked tokens greppable)

# argon2-cffi's defaults are Argon2id (RFC 9106 "low memory" profile).
_HASHER = PasswordHasher()
# Verifying against this keeps an unknown email as slow as a wrong password, so response
# times do not tell which addresses have accounts.
_DUMMY_HASH = _HASHER.hash("not-a-real-password-" + secrets.token_hex(8))


# The rows this module returns, each as its query in users.sql selects it.
class User(TypedDict):
    """An account (user_by_email without password_hash): what get_user and a login return."""

    id: int
    email: str
    org_id: int
    org: str
    role: str
    created_at: datetime
    last_login_at: datetime | None
    disabled_at: datetime | None


class NewUser(TypedDict):
    id: int
    email: str
    org_id: int
    org: str
    role: str
    created_at: datetime


class ListedUser(User):
    tokens: int  # how many API tokens the user holds


class UserState(TypedDict):
    """What set_disabled changed."""

    id: int
    email: str
    role: str
    disabled_at: datetime | None


class SessionUser(TypedDict):
    """The user a web session speaks for, with the session's CSRF token and expiry."""

    csrf_token: str
    last_seen_at: datetime
    expires_at: datetime
    id: int
    email: str
    org_id: int
    org: str
    org_display_name: str
    role: str
    time_zone: str | None


class TokenUser(TypedDict):
    """The user an API bearer token speaks for."""

    token_id: int
    last_used_at: datetime | None
    expires_at: datetime | None
    expired: bool | None
    id: int
    email: str
    org_id: int
    org: str
    org_display_name: str
    role: str


class NewApiToken(TypedDict):
    id: int
    user_id: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    email: str


class ApiToken(TypedDict):
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    expired: bool


class RevokedToken(TypedDict):
    id: int
    name: str
    user_id: int
    email: str
    role: str


class UserError(ValueError):
    """A request about an account that cannot be carried out; the message is for the person."""


class AccountDisabled(UserError):
    """The password was right, but the account is disabled."""


class TokenExpired(Exception):
    def __init__(self, expires_at: datetime) -> None:
        super().__init__(f"the API token expired at {expires_at.isoformat(timespec='seconds')}")
        self.expires_at = expires_at


# How long a new API token may live: from an hour to ten years; none means until revoked.
TOKEN_EXPIRY_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
MAX_TOKEN_LIFETIME = timedelta(days=3650)


def parse_expires_in(text: str) -> timedelta:
    """`12h`, `30d`, `2w` into a lifetime, with a message that says what is wrong."""
    value = text.strip().lower()
    number, unit = value[:-1], value[-1:]
    if not number.isdigit() or unit not in TOKEN_EXPIRY_UNITS or int(number) < 1:
        raise UserError(
            f"expiry {text!r} must be a whole number of hours, days or weeks, like 12h, 30d or 2w"
        )
    lifetime = int(number) * TOKEN_EXPIRY_UNITS[unit]
    if lifetime > MAX_TOKEN_LIFETIME:
        raise UserError(f"expiry {text!r} is longer than the limit of {MAX_TOKEN_LIFETIME.days}d")
    return lifetime


@dataclasses.dataclass(frozen=True)
class ThrottlePolicy:
    """How many failed logins a key may have inside the window before logins are refused."""

    window_s: int = 900
    per_email: int = 5
    per_ip: int = 30


DEFAULT_POLICY = ThrottlePolicy()


def set_hash_cost(*, time_cost: int, memory_cost_kib: int, parallelism: int = 1) -> None:
    """Change the Argon2id cost of new hashes (existing hashes keep their own parameters).

    For test suites, which create hundreds of users; production keeps argon2-cffi's defaults."""
    global _HASHER, _DUMMY_HASH
    _HASHER = PasswordHasher(
        time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism
    )
    _DUMMY_HASH = _HASHER.hash("not-a-real-password-" + secrets.token_hex(8))


def check_email(email: str) -> str:
    email = email.strip()
    if len(email) > 254 or not EMAIL_PATTERN.fullmatch(email):
        raise UserError(f"{email!r} is not an email address")
    return email


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return password


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password: str, stored: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def public(user: Mapping[str, Any]) -> User:
    """A user row without its password hash, safe to render or return."""
    return cast(User, {k: v for k, v in user.items() if k != "password_hash"})


# -- accounts -------------------------------------------------------------------------------
def create_user(conn: Conn, email: str, *, org: str, role: str, password: str) -> NewUser:
    email = check_email(email)
    check_role(role)
    check_password(password)
    org_row = registry.get_org(conn, org)
    params = {
        "email": email,
        "org_id": org_row["id"],
        "role": role,
        "password_hash": hash_password(password),
    }
    try:
        with conn.transaction():
            row = conn.execute(QUERIES["insert_user"], params).fetchone()
    except psycopg.errors.UniqueViolation:
        raise UserError(f"a user with email {email!r} already exists") from None
    assert row is not None
    return cast(NewUser, {**row, "org": org})


def get_user(conn: Conn, email: str) -> User:
    row = conn.execute(QUERIES["user_by_email"], {"email": email.strip()}).fetchone()
    if row is None:
        raise UserError(f"no user with email {email!r}")
    return public(row)


def set_disabled(
    conn: Conn, user_id: int, disabled: bool, *, org_id: int | None = None
) -> UserState:
    """Disable (or enable) a user within `org_id` (None: any). Disabling ends every session of
    the user and revokes every API token in the same transaction, so nothing they hold works
    after the commit; enabling brings none of them back."""
    with conn.transaction():
        row = conn.execute(
            QUERIES["set_user_disabled"],
            {"user_id": user_id, "disabled": disabled, "org_id": org_id},
        ).fetchone()
        if row is None:
            raise UserError("no such user")
        if disabled:
            conn.execute(QUERIES["delete_user_sessions"], {"user_id": user_id})
            conn.execute(QUERIES["delete_user_tokens"], {"user_id": user_id})
    return cast(UserState, row)


def list_users(conn: Conn, *, org_id: int | None = None) -> list[ListedUser]:
    return [cast(ListedUser, r) for r in conn.execute(QUERIES["list_users"], {"org_id": org_id})]


def delete_user(conn: Conn, user_id: int, *, org_id: int | None = None) -> None:
    with conn.transaction():
        row = conn.execute(
            QUERIES["delete_user"], {"user_id": user_id, "org_id": org_id}
        ).fetchone()
    if row is None:
        raise UserError("no such user")


def authenticate(conn: Conn, email: str, password: str) -> User | None:
    """The user if the password is right, else None (same work either way). A disabled
    account with the right password raises AccountDisabled: only who knows the password
    learns that the account exists and is disabled."""
    row = conn.execute(QUERIES["user_by_email"], {"email": email.strip()}).fetchone()
    if row is None:
        verify_password(password, _DUMMY_HASH)
        return None
    if not verify_password(password, row["password_hash"]):
        return None
    if row["disabled_at"] is not None:
        raise AccountDisabled("this account is disabled; ask your administrator")
    with conn.transaction():
        conn.execute(QUERIES["touch_login"], {"user_id": row["id"]})
        if _HASHER.check_needs_rehash(row["password_hash"]):
            conn.execute(
                QUERIES["set_password_hash"],
                {"user_id": row["id"], "password_hash": hash_password(password)},
            )
    return public(row)


def set_password(conn: Conn, user_id: int, new_password: str) -> None:
    """Set a password, end every session of the user wherever it is open and revoke every API
    token: a password change is what someone does who fears their account was used by another,
    and a token made by that other would otherwise survive it."""
    check_password(new_password)
    with conn.transaction():
        conn.execute(
            QUERIES["set_password_hash"],
            {"user_id": user_id, "password_hash": hash_password(new_password)},
        )
        conn.execute(QUERIES["delete_user_sessions"], {"user_id": user_id})
        conn.execute(QUERIES["delete_user_tokens"], {"user_id": user_id})


def change_password(conn: Conn, user_id: int, old_password: str, new_password: str) -> None:
    row = conn.execute(QUERIES["user_by_id"], {"user_id": user_id}).fetchone()
    if row is None or not verify_password(old_password, row["password_hash"]):
        raise UserError("the current password is not right")
    if old_password == new_password:
        raise UserError("the new password must differ from the current one")
    set_password(conn, user_id, new_password)


def set_time_zone(conn: Conn, user_id: int, choice: str | None) -> str | None:
    """Keep the person's time zone: an IANA name, or None/"browser" for the browser's own.
    Returns what was stored; a name the zone database does not know raises UserError."""
    try:
        zone = time_zones.parse_choice(choice)
    except time_zones.TimeZoneError as exc:
        raise UserError(str(exc)) from None
    row = conn.execute(QUERIES["set_time_zone"], {"user_id": user_id, "time_zone": zone}).fetchone()
    if row is None:
        raise UserError(f"there is no user {user_id}")
    return zone


# -- web sessions ---------------------------------------------------------------------------
def create_session(conn: Conn, user_id: int, *, ttl_s: int = SESSION_TTL_S) -> str:
    """Open a session and return the cookie value (the only place it ever exists in clear)."""
    token = secrets.token_urlsafe(32)
    with conn.transaction():
        conn.execute(
            QUERIES["insert_session"],
            {
                "token_hash": hash_token(token),
                "user_id": user_id,
                "csrf_token": secrets.token_urlsafe(32),
                "ttl_s": ttl_s,
            },
        )
    return token


def session_user(conn: Conn, token: str, *, ttl_s: int = SESSION_TTL_S) -> SessionUser | None:
    row = conn.execute(
        QUERIES["session_user"], {"token_hash": hash_token(token), "ttl_s": ttl_s}
    ).fetchone()
    return None if row is None else cast(SessionUser, row)


def session_valid(conn: Conn, token: str) -> bool:
    """Whether the session still lets its user in (not ended, expired or disabled), without
    touching it."""
    return (
        conn.execute(QUERIES["session_valid"], {"token_hash": hash_token(token)}).fetchone()
        is not None
    )


def delete_session(conn: Conn, token: str) -> None:
    conn.execute(QUERIES["delete_session"], {"token_hash": hash_token(token)})


# -- API tokens -----------------------------------------------------------------------------
MAX_TOKEN_NAME = 100


def create_api_token(
    conn: Conn, email: str, *, name: str = "", expires_in: timedelta | None = None
) -> tuple[str, NewApiToken]:
    """A new API token for the user: (token shown once, its stored row). `expires_in` None:
    valid until revoked."""
    user = get_user(conn, email)
    name = name.strip()
    if len(name) > MAX_TOKEN_NAME or "\0" in name:
        raise UserError(f"a token's name has at most {MAX_TOKEN_NAME} characters")
    if expires_in is not None and not timedelta(0) < expires_in <= MAX_TOKEN_LIFETIME:
        raise UserError(f"a token lives from an hour to {MAX_TOKEN_LIFETIME.days} days")
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with conn.transaction():
        row = conn.execute(
            QUERIES["insert_api_token"],
            {
                "user_id": user["id"],
                "token_hash": hash_token(token),
                "name": name,
                "expires_in": expires_in,
            },
        ).fetchone()
    if row is None:
        raise UserError(f"{user['email']} is disabled; enable the account first")
    return token, cast(NewApiToken, {**row, "email": user["email"]})


def api_token_user(conn: Conn, token: str) -> TokenUser | None:
    """The user a bearer token speaks for; None if it is unknown, revoked or its user is
    disabled; TokenExpired if it ran out."""
    row = conn.execute(QUERIES["api_token_user"], {"token_hash": hash_token(token)}).fetchone()
    if row is None:
        return None
    if row["expired"]:
        raise TokenExpired(row["expires_at"])
    conn.execute(QUERIES["touch_api_token"], {"token_id": row["token_id"]})
    return cast(TokenUser, row)


def list_api_tokens(conn: Conn, user_id: int) -> list[ApiToken]:
    rows = conn.execute(QUERIES["list_api_tokens"], {"user_id": user_id})
    return [cast(ApiToken, r) for r in rows]


def revoke_api_token(
    conn: Conn, token_id: int, *, user_id: int | None = None, org_id: int | None = None
) -> RevokedToken:
    """Delete a token within a scope: `user_id` (one's own), `org_id` (an organisation's
    admin) or neither (operators, the CLI). Outside the scope it is "no such token"."""
    with conn.transaction():
        row = conn.execute(
            QUERIES["delete_api_token"],
            {"token_id": token_id, "user_id": user_id, "org_id": org_id},
        ).fetchone()
    if row is None:
        raise UserError(f"no API token {token_id}")
    return cast(RevokedToken, row)


# -- login throttling -----------------------------------------------------------------------
def throttle_keys(email: str, ip: str | None) -> list[str]:
    keys = ["email:" + email.strip().lower()]
    if ip:
        keys.append("ip:" + ip)
    return keys


def throttle_limit(key: str, policy: ThrottlePolicy) -> int:
    """Keys of one address ("ip:", and HTTP ingest's "device-ip:") get the address limit; keys
    of one account ("email:", HTTP ingest's "device:<id>@<address>") the account limit."""
    return policy.per_ip if key.startswith(("ip:", "device-ip:")) else policy.per_email


def blocked_for(failures: Sequence[Mapping[str, Any]], policy: ThrottlePolicy) -> float | None:
    """Seconds until a login may be tried again, or None if it may be tried now."""
    waits = [
        max(1.0, float(row["retry_after_s"]))
        for row in failures
        if int(row["failures"]) >= throttle_limit(str(row["key"]), policy)
    ]
    return max(waits) if waits else None


def login_retry_after(
    conn: Conn, keys: Sequence[str], policy: ThrottlePolicy = DEFAULT_POLICY
) -> float | None:
    rows = conn.execute(
        QUERIES["recent_login_failures"], {"keys": list(keys), "window_s": policy.window_s}
    ).fetchall()
    return blocked_for(rows, policy)


def attempt_login(
    conn: Conn,
    email: str,
    password: str,
    ip: str | None,
    policy: ThrottlePolicy = DEFAULT_POLICY,
) -> tuple[User | None, float | None]:
    """Check the throttle, then the password: (user or None, seconds to wait if throttled).

    One transaction holding an advisory lock on the account: attempts for one email from any
    number of workers are counted one after another, so the limit cannot be overrun."""
    keys = throttle_keys(email, ip)
    with conn.transaction():
        conn.execute(QUERIES["lock_login_key"], {"key": keys[0]})
        wait = login_retry_after(conn, keys, policy)
        if wait is not None:
            return None, wait
        user = authenticate(conn, email, password)
        if user is None:
            record_login_failure(conn, keys)
        else:
            clear_login_failures(conn, email)
    return user, None


def record_login_failure(conn: Conn, keys: Sequence[str]) -> None:
    conn.execute(QUERIES["record_login_failure"], {"keys": list(keys)})


def clear_login_failures(conn: Conn, email: str) -> None:
    """A successful login forgives the account's failures (not the address's)."""
    conn.execute(QUERIES["clear_login_failures"], {"key": throttle_keys(email, None)[0]})


def prune(conn: Conn, policy: ThrottlePolicy = DEFAULT_POLICY) -> None:
    conn.execute(QUERIES["prune_login_failures"], {"window_s": policy.window_s})
    conn.execute(QUERIES["delete_expired_sessions"])
    conn.execute(QUERIES["delete_long_expired_tokens"])
