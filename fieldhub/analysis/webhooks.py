"""Webhook delivery: the `webhooks` job, which POSTs queued alert events to each
organisation's receiver, and the target check the configuration runs too.

One organisation's receiver can only fail or slow its own deliveries:

* every attempt, whatever goes wrong in it (a refused address, DNS, TCP, TLS, a timeout, bytes
  that are not HTTP, a redirect, a non-2xx answer), ends as a failed attempt of that delivery
  in its log and a retry after backoff; nothing a receiver does raises out of `_attempt`;
* attempts run on a small pool of lanes, one attempt of an organisation at a time (its
  deliveries in queued order); a free lane goes to the organisation that has held lanes least
  in this pass (`webhook_rules.pick_orgs`), at most `per_org` attempts each per pass;
* an attempt takes at most `timeout_s` in all, DNS included (a watchdog closes the socket of
  a receiver that drips its answer), and a pass starts no attempt it could not finish within
  `pass_s`.

Measured (tests/analysis/test_webhooks.py, `test_a_hanging_receiver_slows_only_its_own_org`,
limits scaled to a 1.5 s timeout, 5 s passes, 0.2 s polling): beside one organisation whose
receiver never answers, another organisation's deliveries, one every 0.5 s, arrived in 0.15 s
(median) and 1.26 s at most, the most being a delivery queued in the last `timeout_s` of a pass,
which waits for the next; with three hanging organisations on two lanes, 1.1 s and 2.7 s.

Targets: the URL's host is resolved once per attempt, every address is checked against
`webhook_rules.refusal`, and the connection goes to a checked address (never a second DNS
lookup, which a rebinding DNS server could answer differently) with the URL's host in the
Host header and in TLS SNI and certificate verification. Redirects are never followed."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from fieldhub.analysis import alert_logic, webhook_rules
from fieldhub.analysis.webhook_rules import IPAddress, Target, TargetError
from fieldhub.analysis.worker import JobContext
from fieldhub.core.config import IPNetwork
from fieldhub.core.db import Conn, Queries

QUERIES = Queries(Path(__file__).with_name("webhooks.sql"))

# GitHub's limit for its webhooks. Standard Webhooks suggests 15-30 s; a receiver that needs
# longer should answer first and work after. A hung receiver holds its own lane this long.
WEBHOOK_TIMEOUT_S = 10.0
# With the backoff below, 8 attempts span about 21 minutes (10 s doubling to 640 s): long
# enough to ride out a receiver's deploy or restart, short enough that a dead one is marked
# failed while someone still looks at the alert.
WEBHOOK_MAX_ATTEMPTS = 8
WEBHOOK_BACKOFF_BASE_S = 10.0
# Organisations delivered to at once. Each lane mostly waits on a socket, so threads are cheap;
# 8 means up to 7 receivers can hang at the same time before an eighth organisation waits for
# a lane.
WEBHOOK_LANES = 8
# Deliveries one organisation gets per pass. Alert changes are rare per organisation; a burst
# (every device of a site going offline) goes out at up to this many per pass, which ends a
# pass early when nothing else is due (the next one starts after the job's 5 s interval).
WEBHOOK_ORG_DELIVERIES_PER_PASS = 50
# The longest pass: bounds what one `webhooks` run in job_runs covers. Nothing that is due
# waits for the end of a pass (the pass keeps looking for due deliveries every `poll_s`).
WEBHOOK_PASS_S = 60.0
# How soon a pass that has deliveries in flight notices newly due ones.
WEBHOOK_POLL_S = 0.5
# The start of a failed answer's body goes into the attempt's error (a receiver's "invalid
# signature" is the most useful line of the log); never more is read.
WEBHOOK_RESPONSE_PREVIEW_BYTES = 512
# DNS lookups run here so that an attempt can give up on a resolver that does not answer.
WEBHOOK_DNS_THREADS = 4
ERROR_MAX_CHARS = 500  # the delivery log's error column, per attempt
USER_AGENT = "fieldhub-webhooks/2"

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[IPAddress]]

_DNS = concurrent.futures.ThreadPoolExecutor(
    max_workers=WEBHOOK_DNS_THREADS, thread_name_prefix="webhook-dns"
)


@dataclasses.dataclass(frozen=True)
class DeliveryLimits:
    """The limits above, in one value; tests shrink them to measure in seconds."""

    timeout_s: float = WEBHOOK_TIMEOUT_S
    max_attempts: int = WEBHOOK_MAX_ATTEMPTS
    backoff_base_s: float = WEBHOOK_BACKOFF_BASE_S
    lanes: int = WEBHOOK_LANES
    per_org: int = WEBHOOK_ORG_DELIVERIES_PER_PASS
    pass_s: float = WEBHOOK_PASS_S
    poll_s: float = WEBHOOK_POLL_S


LIMITS = DeliveryLimits()


# -- targets ---------------------------------------------------------------------------------
def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address of `host`, in the resolver's order, without repeats."""
    found: list[IPAddress] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def checked_addresses(
    target: Target,
    allowed: Sequence[IPNetwork],
    *,
    resolve: Resolver = resolve_host,
    timeout_s: float = WEBHOOK_TIMEOUT_S,
) -> list[IPAddress]:
    """The addresses to connect to for `target`, each one allowed; TargetError otherwise.

    A name with any refused address is refused whole: a DNS answer that mixes a public and a
    private address is how rebinding attacks start."""
    if target.address is not None:
        addresses = [target.address]
    else:
        lookup = _DNS.submit(resolve, target.host, target.port)
        try:
            addresses = lookup.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            lookup.cancel()
            raise TargetError(
                f"the DNS lookup of {target.host} took longer than {timeout_s:g} s"
            ) from None
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise TargetError(f"the host {target.host} could not be resolved ({why})") from None
        if not addresses:
            raise TargetError(f"the host {target.host} has no IPv4 or IPv6 address")
    for address in addresses:
        reason = webhook_rules.refusal(address, allowed)
        if reason is not None:
            name = None if target.address is not None else target.host
            raise TargetError(webhook_rules.refused_message(address, reason, host=name))
    return addresses


def check_url(
    url: str, allowed: Sequence[IPNetwork], *, resolve: Resolver = resolve_host
) -> Target:
    """What configuring a webhook checks: the URL's form and every address it resolves to now
    (each attempt checks again: DNS answers change)."""
    target = webhook_rules.parse_target(url)
    checked_addresses(target, allowed, resolve=resolve)
    return target


# -- one attempt -----------------------------------------------------------------------------
class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to one of the checked addresses; `host` is only the Host header and TLS name."""

    def __init__(
        self,
        target: Target,
        addresses: Sequence[IPAddress],
        deadline: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(target.host, target.port, timeout=max(0.001, deadline - time.monotonic()))
        if tls is not None:
            self.default_port = 443  # no ":443" in the Host header
        self._addresses = addresses
        self._deadline = deadline
        self._tls = tls
        self.raw: socket.socket | None = None

    def connect(self) -> None:
        error: OSError = TimeoutError()
        for address in self._addresses:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # An address literal: create_connection does no DNS lookup for it.
                self.raw = socket.create_connection((str(address), self.port), timeout=remaining)
                break
            except OSError as exc:
                error = exc
        if self.raw is None:
            raise error
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = (
            self.raw
            if self._tls is None
            else self._tls.wrap_socket(self.raw, server_hostname=self.host)
        )


def _post(
    target: Target,
    addresses: Sequence[IPAddress],
    body: bytes,
    headers: dict[str, str],
    *,
    deadline: float,
    timeout_s: float,
    tls: ssl.SSLContext,
) -> tuple[int | None, str | None]:
    """POST once; (HTTP status or None, error or None). Raises nothing."""
    conn = _PinnedConnection(target, addresses, deadline, tls if target.scheme == "https" else None)
    expired = threading.Event()

    def expire() -> None:
        # A receiver that sends a byte now and then would reset every socket timeout; the
        # attempt's own deadline closes the connection under whatever call is waiting.
        expired.set()
        if conn.raw is not None:
            with contextlib.suppress(OSError):  # already closed: the attempt ended first
                conn.raw.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        if expired.is_set():
            # The watchdog's shutdown reads as the end of the headers: not an answer.
            return None, f"no answer within {timeout_s:g} s"
        status = int(response.status)
        location = response.getheader("Location")
        detail = ""
        if not 200 <= status < 300 and not 300 <= status < 400:
            detail = response.read(WEBHOOK_RESPONSE_PREVIEW_BYTES).decode("utf-8", "replace")
        return status, webhook_rules.status_error(status, location=location, detail=detail)
    except Exception as exc:  # whatever a receiver causes fails this attempt only
        if expired.is_set() or isinstance(exc, TimeoutError):
            return None, f"no answer within {timeout_s:g} s"
        return None, describe_failure(exc, target)
    finally:
        watchdog.cancel()
        conn.close()


def describe_failure(exc: BaseException, target: Target) -> str:
    """The delivery log's words for an attempt that got no HTTP answer."""
    where = f"{target.host}:{target.port}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the receiver closed the connection without answering"
    if isinstance(exc, http.client.BadStatusLine):
        sent = str(exc.args[0] if exc.args else "")[:60]
        return f"the receiver did not answer with HTTP (it sent {sent!r})"
    if isinstance(exc, http.client.HTTPException):
        return f"the receiver's answer is not valid HTTP ({type(exc).__name__}: {exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {target.host} was not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {where} failed ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where} refused the connection"
    if isinstance(exc, ConnectionResetError):
        return "the receiver reset the connection"
    if isinstance(exc, OSError):
        return f"network error with {where}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _attempt(
    delivery: dict[str, Any],
    *,
    allowed: Sequence[IPNetwork],
    timeout_s: float,
    resolve: Resolver,
    tls: ssl.SSLContext,
) -> dict[str, Any]:
    """One attempt of one delivery, as the delivery log records it: {at, status, error, ms}."""
    started = time.monotonic()
    deadline = started + timeout_s
    status: int | None = None
    try:
        target = webhook_rules.parse_target(delivery["url"])
        addresses = checked_addresses(target, allowed, resolve=resolve, timeout_s=timeout_s)
        body = orjson.dumps(delivery["payload"])
        msg_id = webhook_rules.message_id(delivery["message_id"].hex)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Connection": "close",
            "X-Fieldhub-Event": delivery["event"],
            **webhook_rules.signed_headers(
                delivery["secret"],
                msg_id,
                int(time.time()),
                body,
                legacy=delivery["legacy_signature"],
            ),
        }
        if delivery["legacy_signature"]:
            # What receivers of a hook from before 0009 de-duplicate on.
            headers["X-Fieldhub-Delivery"] = str(delivery["id"])
        status, error = _post(
            target, addresses, body, headers, deadline=deadline, timeout_s=timeout_s, tls=tls
        )
    except TargetError as exc:
        error = str(exc)
    except Exception as exc:  # a bad row fails its own delivery, not the pass
        log.exception("webhook delivery %s: unexpected error", delivery["id"])
        error = f"{type(exc).__name__}: {exc}"
    return {
        "at": dt.datetime.now(dt.UTC).isoformat(),
        "status": status,
        "error": None if error is None else error[:ERROR_MAX_CHARS],
        "ms": round((time.monotonic() - started) * 1000),
    }


# -- the pass --------------------------------------------------------------------------------
def deliver_due(
    conn: Conn,
    *,
    allowed_networks: Sequence[IPNetwork],
    limits: DeliveryLimits = LIMITS,
    resolve: Resolver = resolve_host,
    stopping: threading.Event | None = None,
) -> dict[str, int]:
    """One pass: attempt what is due, one attempt per lane at a time, round-robin across
    organisations, until nothing is due or the pass is `limits.pass_s` old. Only this thread
    touches `conn`; the lanes only send."""
    started = time.monotonic()
    deadline = started + limits.pass_s
    stopping = stopping or threading.Event()
    tls = ssl.create_default_context()
    served: collections.Counter[int] = collections.Counter()
    lane_s: collections.Counter[int] = collections.Counter()
    # org -> (the delivery its lane is attempting, the attempt to come)
    in_flight: dict[int, tuple[dict[str, Any], concurrent.futures.Future[dict[str, Any]]]] = {}
    counts = {"delivered": 0, "failed_attempts": 0}

    def hand_out(lanes: concurrent.futures.ThreadPoolExecutor) -> None:
        free = limits.lanes - len(in_flight)
        if free <= 0 or stopping.is_set() or time.monotonic() + limits.timeout_s > deadline:
            return  # nothing starts that could not finish within the pass
        due = [
            (r["org_id"], r["last_attempt_at"], r["oldest"])
            for r in conn.execute(QUERIES["due_orgs"])
        ]
        picked = webhook_rules.pick_orgs(
            due,
            busy=in_flight,
            served=served,
            lane_s=lane_s,
            per_org=limits.per_org,
            slots=free,
        )
        if not picked:
            return
        for row in conn.execute(QUERIES["next_deliveries"], {"org_ids": picked}):
            delivery = dict(row)
            served[delivery["org_id"]] += 1
            attempt = lanes.submit(
                _attempt,
                delivery,
                allowed=allowed_networks,
                timeout_s=limits.timeout_s,
                resolve=resolve,
                tls=tls,
            )
            in_flight[delivery["org_id"]] = (delivery, attempt)

    with concurrent.futures.ThreadPoolExecutor(
        max_workers=limits.lanes, thread_name_prefix="webhook-lane"
    ) as lanes:
        while True:
            hand_out(lanes)
            if not in_flight:
                break
            # Wake for the first attempt that ends, or after poll_s to look for new work.
            concurrent.futures.wait(
                [attempt for _, attempt in in_flight.values()],
                timeout=limits.poll_s,
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            for org_id, (delivery, attempt) in list(in_flight.items()):
                if attempt.done():
                    del in_flight[org_id]
                    result = attempt.result()
                    lane_s[org_id] += result["ms"] / 1000
                    _record(conn, delivery, result, limits=limits, counts=counts)
    return {
        **counts,
        "orgs": len(served),
        "pass_ms": round((time.monotonic() - started) * 1000),
    }


def _record(
    conn: Conn,
    delivery: dict[str, Any],
    attempt: dict[str, Any],
    *,
    limits: DeliveryLimits,
    counts: dict[str, int],
) -> None:
    with conn.transaction():
        conn.execute(QUERIES["took_turn"], {"org_id": delivery["org_id"]})
        if attempt["error"] is None:
            conn.execute(
                QUERIES["delivery_succeeded"], {"id": delivery["id"], "attempt": Jsonb([attempt])}
            )
            counts["delivered"] += 1
            return
        retry_in = alert_logic.backoff_s(
            delivery["attempt_count"] + 1, base_s=limits.backoff_base_s
        )
        row = conn.execute(
            QUERIES["delivery_failed"],
            {
                "id": delivery["id"],
                "attempt": Jsonb([attempt]),
                "error": attempt["error"],
                "retry_in_s": retry_in,
                "max_attempts": limits.max_attempts,
            },
        ).fetchone()
    counts["failed_attempts"] += 1
    then = f"retry in {retry_in:.0f} s" if row and row["status"] == "pending" else "gave up"
    log.warning(
        "webhook delivery %s to org %s failed (%s); %s",
        delivery["id"],
        delivery["org_id"],
        attempt["error"],
        then,
    )


def run_delivery(context: JobContext) -> dict[str, Any]:
    return dict(
        deliver_due(
            context.conn,
            allowed_networks=context.settings.webhook_allowed_networks,
            limits=LIMITS,
            stopping=context.stopping,
        )
    )
