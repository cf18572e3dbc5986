"""Device and service-account secrets in Mosquitto's own hash format.

The registry keeps only `$7$<iterations>$<salt>$<hash>` (PBKDF2-HMAC-SHA512), the format
Mosquitto's password file reads, so one stored hash serves both the database and the broker
and no plaintext secret is kept anywhere. People's passwords use Argon2id instead
(fieldhub.core.users).

Why 101 iterations, Mosquitto's own default (mosquitto_passwd, Dynamic Security): the broker
pays one hash per login and, on every SIGHUP reload, one per *connected* client. Measured in
docs/security.md with 2,000 devices connected: 1000 iterations made a reload (and so every
disable or rotate) take 2.4-5.6 s and a reconnect storm 4-13 s; 101 keeps them at about 0.6 s
and 3 s. The secrets are 192 random bits, so stretching adds nothing an attacker would notice:
it exists for guessable passwords, and there are none here. Existing hashes carry their own
count and stay valid."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import multiprocessing
import os
import secrets
from collections.abc import Callable, Sequence

ITERATIONS = 101
SALT_BYTES = 12
SECRET_BYTES = 24  # 192 bits
# Below this many, starting worker processes costs more than it saves.
PARALLEL_THRESHOLD = 2000


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


def hash_secrets_parallel(
    secrets_to_hash: Sequence[str],
    *,
    iterations: int = ITERATIONS,
    processes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Hash many secrets on every core (bulk provisioning); results keep the input order.

    `progress(n)` is called as each chunk of `n` hashes completes, for a progress bar."""
    if len(secrets_to_hash) < PARALLEL_THRESHOLD:
        hashes = [hash_secret(s, iterations=iterations) for s in secrets_to_hash]
        if progress is not None and hashes:
            progress(len(hashes))
        return hashes
    chunk = max(1, min(500, len(secrets_to_hash) // ((processes or os.cpu_count() or 1) * 8)))
    batches = [secrets_to_hash[i : i + chunk] for i in range(0, len(secrets_to_hash), chunk)]
    results: list[str] = []
    # Fork, not spawn: the workers need nothing but this module and start in milliseconds.
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for batch_hashes in pool.imap(functools.partial(_hash_batch, iterations), batches):
            results.extend(batch_hashes)
            if progress is not None:
                progress(len(batch_hashes))
    return results


def _hash_batch(iterations: int, batch: Sequence[str]) -> list[str]:
    return [hash_secret(s, iterations=iterations) for s in batch]
