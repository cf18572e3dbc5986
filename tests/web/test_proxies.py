"""Whose address the web app sees: behind a trusted proxy the client's, from anyone else the
peer's whatever X-Forwarded-For says. Against real nginx and gunicorn; the clients connect
from different loopback addresses (127.0.0.2, ...) so each is its own client."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fieldhub.core.config import ConfigError, Settings
from fieldhub.core.procs import free_port, port_open
from fieldhub.stack import cluster
from fieldhub.web.forwarded import client_address
from tests.support import stop_process, wait_for
from tests.web.helpers import PASSWORD, SourceClient, WebServer, World

NGINX = [ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("192.168.0.0/16")]


# -- the rule (pure) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # an untrusted peer's header is ignored
        ("10.0.0.5", None, "10.0.0.5"),  # a trusted peer without a header is the client
        ("10.0.0.5", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.5", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # the client's own claim: left
        ("10.0.0.5", "198.51.100.1, 192.168.4.4", "198.51.100.1"),  # two trusted hops
        ("10.0.0.5", "192.168.1.1,192.168.2.2", "192.168.1.1"),  # all trusted: the left-most
        ("10.0.0.5", "not-an-ip, 192.168.4.4", "192.168.4.4"),  # garbage stops the walk
        ("10.0.0.5", "::ffff:198.51.100.1", "198.51.100.1"),  # IPv4-mapped IPv6 is IPv4
        ("unix-socket", "198.51.100.1", "unix-socket"),
        (None, "198.51.100.1", None),
    ],
)
def test_the_client_is_the_right_most_hop_no_trusted_proxy_sits_at(
    peer: str | None, header: str | None, client: str | None
) -> None:
    assert client_address(peer, header, NGINX) == client


def test_trusted_proxies_are_read_with_clear_errors() -> None:
    settings = Settings.from_env({"FIELDHUB_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7,::1"})
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]
    assert Settings.from_env({}).trusted_proxies == ()
    for raw, message in [
        ("10.0.0.1/8", "has host bits set"),
        ("nginx", "'nginx' is not a network"),
        ("10.0.0.0/8,,::1", "an empty entry"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not a network"),
    ]:
        with pytest.raises(ConfigError, match=message) as error:
            Settings.from_env({"FIELDHUB_TRUSTED_PROXIES": raw})
        assert str(error.value).startswith("FIELDHUB_TRUSTED_PROXIES: ")


# -- real nginx in front of real gunicorn ------------------------------------------------------


@pytest.fixture
def web_behind_nginx(world: World) -> Iterator[tuple[WebServer, int]]:
    """gunicorn trusting 127.0.0.1 only, and nginx on 127.0.0.1 in front of it, rendered
    from the cluster stack's own template."""
    home = Path(tempfile.mkdtemp(prefix="fieldhub-test-nginx-"))
    home.chmod(0o755)
    port = free_port()
    settings = Settings.from_env({"FIELDHUB_HOME": str(home), "FIELDHUB_WEB_PORT": str(port)})
    with WebServer(
        world.database_url, extra_env={"FIELDHUB_TRUSTED_PROXIES": "127.0.0.1/32"}
    ) as server:
        conf = cluster.render_nginx(settings, [server.port])
        nginx = subprocess.Popen(
            cluster.nginx_spec(settings, conf, lambda: True).argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: port_open(port), timeout=20, what="nginx to listen")
            yield server, port
        finally:
            stop_process(nginx)
            shutil.rmtree(home, ignore_errors=True)


def _failure_keys(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT key, count(*) FROM login_failures GROUP BY key").fetchall()
    return {str(key): int(count) for key, count in rows}


@pytest.mark.integration
def test_behind_a_trusted_proxy_one_clients_failures_lock_out_only_that_client(
    world: World, web_behind_nginx: tuple[WebServer, int]
) -> None:
    server, nginx_port = web_behind_nginx
    attacker = SourceClient(nginx_port, "127.0.0.2")
    # 30 failures, each for another (unknown) account so only the per-address limit is hit.
    for n in range(30):
        assert attacker.login(f"guess-{n}@nowhere.example", "wrong password!") == 401
    assert attacker.login(world.emails["a_viewer"], PASSWORD) == 429
    # Through the same nginx, another client is not locked out.
    assert SourceClient(nginx_port, "127.0.0.3").login(world.emails["a_viewer"], PASSWORD) == 302
    keys = _failure_keys(world.database_url)
    assert keys["ip:127.0.0.2"] == 30
    assert not [key for key in keys if key.startswith("ip:") and key != "ip:127.0.0.2"]
    # gunicorn's access log names the clients, not nginx.
    access = [line for line in server.log().splitlines() if '"POST /login' in line]
    assert {line.split()[0] for line in access} == {"127.0.0.2", "127.0.0.3"}


@pytest.mark.integration
def test_an_untrusted_peers_forwarded_for_is_ignored(
    world: World, web_behind_nginx: tuple[WebServer, int]
) -> None:
    server, _nginx_port = web_behind_nginx
    direct = SourceClient(server.port, "127.0.0.4")
    for n in range(30):
        forged = f"198.51.100.{n}"
        status = direct.login(
            f"guess-{n}@nowhere.example", "nope-nope-nope", X_Forwarded_For=forged
        )
        assert status == 401
    # A new forged address does not buy the peer another try.
    status = direct.login(world.emails["b_viewer"], PASSWORD, X_Forwarded_For="198.51.100.200")
    assert status == 429
    keys = _failure_keys(world.database_url)
    assert keys == {
        "ip:127.0.0.4": 30,
        **{f"email:guess-{n}@nowhere.example": 1 for n in range(30)},
    }
    # The trusted proxy's peer itself is not what gets locked out either.
    assert SourceClient(server.port, "127.0.0.1").login(world.emails["b_viewer"], PASSWORD) == 302
