"""Readiness probes: the supervisor counts a process as up once its probe answers."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

import psycopg

from fieldhub.stack.postgres import PostgresCluster


def http_answers(url: str, *, ok_below: int = 500) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own URL
                return int(response.status) < ok_below
        except urllib.error.HTTPError as exc:
            return exc.code < ok_below
        except (urllib.error.URLError, OSError):
            return False

    return probe


def postgres_accepts(cluster: PostgresCluster) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with psycopg.connect(cluster.url("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    return probe
