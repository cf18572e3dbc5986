from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, sync_playwright

from fieldhub.bench.hosts_user import CHROMIUM, CHROMIUM_ARGS
from fieldhub.core import users
from fieldhub.web import create_app
from tests.web.helpers import World, seed


@pytest.fixture(autouse=True, scope="session")
def cheap_password_hashes() -> None:
    # Argon2id all the same, at a cost that keeps a suite of many logins fast.
    users.set_hash_cost(time_cost=1, memory_cost_kib=1024)


@pytest.fixture
def world(database_url: str) -> World:
    return seed(database_url)


@pytest.fixture
def app(world: World) -> Iterator[Flask]:
    app = create_app(
        {
            "DATABASE_URL": world.database_url,
            "TESTING": True,
            # Test webhook receivers run on loopback; an operator allows networks like this.
            "WEBHOOK_ALLOWED_NETWORKS": (ipaddress.ip_network("127.0.0.0/8"),),
        }
    )
    yield app
    app.extensions["fieldhub.live"].stop()
    app.extensions["fieldhub.pools"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium (Playwright cannot download browsers here), one per session."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS)
        )
        yield chromium
        chromium.close()
