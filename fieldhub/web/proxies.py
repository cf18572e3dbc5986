"""The client's address, decided once per request, before anything reads it.

`TrustedProxies` wraps the WSGI app: it replaces REMOTE_ADDR with the address
fieldhub.web.forwarded.client_address finds (FIELDHUB_TRUSTED_PROXIES says which peers'
X-Forwarded-For to believe) and keeps the direct peer as `fieldhub.peer_addr`. Everything that
uses the client's address reads it through `client_address()` here: login throttling, the
app's log lines, and gunicorn's access log, which prints REMOTE_ADDR of the same environ after
the app ran (gunicorn/glogging.py, the `h` atom)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from flask import request

from fieldhub.core.config import IPNetwork
from fieldhub.web.forwarded import client_address as resolve

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PEER_KEY = "fieldhub.peer_addr"


class TrustedProxies:
    def __init__(self, app: WSGIApplication, trusted: Sequence[IPNetwork]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        peer = environ.get("REMOTE_ADDR")
        environ[PEER_KEY] = peer
        client = resolve(peer, environ.get("HTTP_X_FORWARDED_FOR"), self.trusted)
        if client is not None:
            environ["REMOTE_ADDR"] = client
        return self.app(environ, start_response)


def client_address() -> str | None:
    """The address of the client of the current request (behind trusted proxies, the one they
    received it from)."""
    return request.remote_addr
