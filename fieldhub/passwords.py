"""Device and service-account secrets in Mosquitto's own hash format.

The registry keeps only `$7$<iterations>$<salt>$<hash>` (PBKDF2-HMAC-SHA512), the format
Mosquitto's password file reads, so one stored hash serves both the database and the broker
and no plaintext secret is kept anywhere. Secrets are 128+ random bits, so the iteration count
is tuned for the broker's login rate (a reconnect storm), not for guessable passwords; people's
passwords use Argon2id instead (webapp).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 1000
SALT_BYTES = 12
SECRET_BYTES = 24  # 192 bits


def generate_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        _, kind, iterations, salt_b64, digest_b64 = stored.split("$")
        if kind != "7":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
    except ValueError:
        return False
    actual = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, int(iterations))
    return hmac.compare_digest(actual, expected)
