"""Webhook delivery against real receivers on loopback and the real database: every failure of
one receiver is a failed attempt of its own delivery, a hanging receiver slows only its own
organisation, targets are checked at configuration and at each attempt, and deliveries are
signed so that the documented receiver refuses a replay."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import shutil
import ssl
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from fieldhub.analysis import service, webhook_rules, webhooks
from fieldhub.analysis.webhook_rules import IPAddress
from fieldhub.analysis.worker import Job, Worker
from fieldhub.core import registry
from fieldhub.core.config import Settings
from fieldhub.core.db import Conn
from fieldhub.core.migrate import SCHEMA_DIR, apply_migrations
from fieldhub.core.procs import free_port
from fieldhub.core.tls import ensure_tls
from fieldhub.stack.postgres import PostgresCluster
from tests.analysis.receivers import HTTPReceiver, RawReceiver
from tests.support import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The receivers run on loopback: the tests allow it as an operator would allow a network.
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Short enough that a hanging receiver costs a test a second, not ten.
QUICK = webhooks.DeliveryLimits(timeout_s=1.0, backoff_base_s=60.0, pass_s=10.0, poll_s=0.1)


def hook(db: Conn, org_id: int, url: str) -> str:
    """Configure the org's webhook; returns its secret."""
    return str(service.set_webhook(db, org_id, url, allowed_networks=LOOPBACK)["secret"])


def queue_deliveries(db: Conn, org_id: int, count: int = 1) -> list[int]:
    """What alerts.record_change queues, without an alert behind it."""
    return [
        row["id"]
        for row in db.execute(
            "INSERT INTO webhook_deliveries (org_id, event, payload)"
            " SELECT %s, 'alert.active', jsonb_build_object('event', 'alert.active', 'n', n)"
            " FROM generate_series(1, %s) n RETURNING id",
            (org_id, count),
        ).fetchall()
    ]


def deliveries(db: Conn, org_id: int) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in db.execute(
            "SELECT id, status, attempt_count, attempts, last_error, next_attempt_at > now()"
            " AS waiting, created_at, delivered_at FROM webhook_deliveries WHERE org_id = %s"
            " ORDER BY id",
            (org_id,),
        )
    ]


def new_org(db: Conn, name: str) -> int:
    return int(registry.create_org(db, name)["id"])


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a server certificate for localhost and 127.0.0.1."""
    path = tmp_path_factory.mktemp("webhook-tls")
    ensure_tls(path, ["localhost"])
    return path


def server_tls(tls_dir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_dir / "server.crt", tls_dir / "server.key")
    return context


# -- one receiver's failure is its own delivery's ------------------------------------------------
FAILURES: dict[str, str] = {
    "garbage": "the receiver did not answer with HTTP (it sent 'SSH-2.0-OpenSSH_9.6",
    "close": "the receiver closed the connection without answering",
    "hang": "no answer within 1 s",
    "drip": "no answer within 1 s",
    "refused port": "refused the connection",
    "https to plain http": "TLS with 127.0.0.1:",
    "untrusted certificate": "TLS: the certificate of 127.0.0.1 was not accepted",
    "redirect": "HTTP 307: the receiver redirects to http://127.0.0.1:",
    "server error": "HTTP 500: database is down",
}


@pytest.fixture
def failing_url(request: pytest.FixtureRequest, tls_dir: Path) -> Iterator[tuple[str, Any]]:
    """(URL, receiver) of a receiver that fails in the way the test is parametrised with."""
    kind: str = request.param
    receiver: Any
    if kind in ("garbage", "close", "hang", "drip"):
        receiver = RawReceiver(kind)
        url = receiver.url()
    elif kind == "refused port":
        receiver, url = None, f"http://127.0.0.1:{free_port()}/hook"
    elif kind == "https to plain http":
        receiver = HTTPReceiver()
        url = receiver.url().replace("http://", "https://")
    elif kind == "untrusted certificate":
        receiver = HTTPReceiver(tls=server_tls(tls_dir))
        url = receiver.url()
    elif kind == "redirect":
        target = HTTPReceiver()
        receiver = HTTPReceiver(status=307, headers={"Location": target.url("127.0.0.1", "/x")})
        receiver.redirected_to = target
        url = receiver.url()
    else:
        receiver = HTTPReceiver(status=500, body=b"database is down\n")
        url = receiver.url()
    yield url, receiver
    if receiver is not None:
        receiver.close()
        if kind == "redirect":
            receiver.redirected_to.close()


@pytest.mark.parametrize("failing_url", list(FAILURES), indirect=True)
def test_any_failure_of_a_receiver_is_a_failed_attempt_of_its_own_delivery(
    db: Conn, org_id: int, failing_url: tuple[str, Any], request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["failing_url"]
    url, receiver = failing_url
    fine = HTTPReceiver()
    try:
        other = new_org(db, "fine-org")
        hook(db, org_id, url)
        hook(db, other, fine.url())
        queue_deliveries(db, org_id)
        queue_deliveries(db, other, 2)

        result = webhooks.deliver_due(db, allowed_networks=LOOPBACK, limits=QUICK)

        assert (result["delivered"], result["failed_attempts"]) == (2, 1)
        assert len(fine.requests) == 2
        assert [d["status"] for d in deliveries(db, other)] == ["delivered", "delivered"]
        [failed] = deliveries(db, org_id)
        assert (failed["status"], failed["attempt_count"], failed["waiting"]) == (
            "pending",
            1,
            True,
        )
        [attempt] = failed["attempts"]
        assert FAILURES[kind] in attempt["error"], attempt
        assert failed["last_error"] == attempt["error"]
        if kind in ("hang", "drip"):
            # The whole attempt is cut at the timeout, however the receiver trickles.
            assert 900 <= attempt["ms"] < 1900, attempt
        if kind == "redirect":
            assert "redirects are not followed" in attempt["error"]
            assert attempt["status"] == 307
            assert receiver.redirected_to.requests == []
    finally:
        fine.close()


def test_a_receiver_answering_garbage_does_not_hold_up_the_queue(db: Conn, org_id: int) -> None:
    """The bug this replaces: one receiver sending non-HTTP bytes raised out of the job,
    which then retried the same row first, forever, and nobody's deliveries went out."""
    garbage, fine = RawReceiver("garbage"), HTTPReceiver()
    try:
        other = new_org(db, "fine-org")
        hook(db, org_id, garbage.url())
        hook(db, other, fine.url())
        quick_retry = webhooks.DeliveryLimits(timeout_s=1.0, backoff_base_s=0.0, max_attempts=3)
        queue_deliveries(db, org_id, 2)
        for _ in range(3):
            queue_deliveries(db, other)
            webhooks.deliver_due(db, allowed_networks=LOOPBACK, limits=quick_retry)
        assert [d["status"] for d in deliveries(db, other)] == ["delivered"] * 3
        assert len(fine.requests) == 3
        assert [(d["status"], d["attempt_count"]) for d in deliveries(db, org_id)] == [
            ("failed", 3),
            ("failed", 3),
        ]
    finally:
        garbage.close()
        fine.close()


# -- fairness, measured --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hanging_orgs", "lanes"),
    [(1, 4), (3, 2)],
    ids=["one hanging org", "more hanging orgs than lanes"],
)
def test_a_hanging_receiver_slows_only_its_own_org(
    database_url: str,
    db: Conn,
    org_id: int,
    monkeypatch: pytest.MonkeyPatch,
    hanging_orgs: int,
    lanes: int,
) -> None:
    """The worker's own job, with its limits scaled down: some organisations' receivers never
    answer, another's is fine and gets a new delivery every 0.5 s. Each of those must arrive
    within the stated bound: the attempt timeout once if a delivery becomes due in the last
    `timeout_s` of a pass (it waits for the next pass), once more if every lane is held by a
    hanging receiver (the next lane to come free is its turn), plus 1 s for the job to start
    the next pass."""
    limits = webhooks.DeliveryLimits(
        timeout_s=1.5, backoff_base_s=60.0, lanes=lanes, pass_s=5.0, poll_s=0.2
    )
    bound_s = limits.timeout_s * (2 if hanging_orgs >= lanes else 1) + 1.0
    monkeypatch.setattr(webhooks, "LIMITS", limits)
    fine = HTTPReceiver()
    hanging = [RawReceiver("hang") for _ in range(hanging_orgs)]
    slow_orgs = [new_org(db, f"slow-org-{n}") for n in range(hanging_orgs)]
    for slow_org, receiver in zip(slow_orgs, hanging, strict=True):
        hook(db, slow_org, receiver.url())
        queue_deliveries(db, slow_org, 6)
    hook(db, org_id, fine.url())
    settings = Settings.from_env({"FIELDHUB_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"})
    worker = Worker(database_url, [Job("webhooks", 1.0, webhooks.run_delivery)], settings)
    worker.poll_s = 0.1
    worker.start()
    sent = 16
    try:
        wait_for(
            lambda: all(r.connections for r in hanging[:lanes]),
            timeout=10,
            what="the hanging receivers' first calls",
        )
        for _ in range(sent):
            queue_deliveries(db, org_id)
            time.sleep(0.5)  # the load: a delivery every 0.5 s, not a wait for anything
        wait_for(
            lambda: all(d["status"] == "delivered" for d in deliveries(db, org_id)),
            timeout=10,
            what="the fine organisation's deliveries",
        )
    finally:
        worker.stop()
        fine.close()
        for receiver in hanging:
            receiver.close()
    latencies = [
        (d["delivered_at"] - d["created_at"]).total_seconds() for d in deliveries(db, org_id)
    ]
    print(
        f"\nfine org beside {hanging_orgs} hanging on {lanes} lanes, {sent} deliveries:"
        f" median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s"
        f" (bound {bound_s:.1f} s)"
    )
    assert len(latencies) == sent
    assert max(latencies) <= bound_s, latencies
    # Each hanging organisation had one attempt at a time, each cut at the timeout.
    for slow_org, receiver in zip(slow_orgs, hanging, strict=True):
        assert receiver.most_open == 1
        attempts = [a for d in deliveries(db, slow_org) for a in d["attempts"]]
        assert attempts, "every hanging organisation had turns"
        assert {a["error"] for a in attempts} == {"no answer within 1.5 s"}


def test_a_slow_orgs_backlog_does_not_hold_up_a_fast_one(db: Conn, org_id: int) -> None:
    """One lane, an organisation with a backlog of 30 and a receiver taking 50 ms, another
    with 3 deliveries and a fast receiver: the lane goes to whoever held it least."""
    slow, fast = HTTPReceiver(delay_s=0.05), HTTPReceiver()
    try:
        other = new_org(db, "fast-org")
        hook(db, org_id, slow.url())
        hook(db, other, fast.url())
        queue_deliveries(db, org_id, 30)
        queue_deliveries(db, other, 3)
        limits = webhooks.DeliveryLimits(per_org=10, lanes=1)
        result = webhooks.deliver_due(db, allowed_networks=LOOPBACK, limits=limits)
        order = [
            row["org_id"]
            for row in db.execute(
                "SELECT org_id FROM webhook_deliveries WHERE status = 'delivered'"
                " ORDER BY delivered_at, id"
            )
        ]
        # The slow one first (waiting longest), then the fast one's 3, then the slow one's
        # share of 10 for the pass; the rest waits for the next pass.
        assert order == [org_id] + [other] * 3 + [org_id] * 9
        assert result["delivered"] == 13
        # Each organisation's deliveries in the order they were queued.
        assert [json.loads(r.body)["n"] for r in slow.requests] == list(range(1, 11))
        assert [json.loads(r.body)["n"] for r in fast.requests] == [1, 2, 3]
    finally:
        slow.close()
        fast.close()


# -- targets -------------------------------------------------------------------------------------
def test_loopback_is_refused_unless_the_operator_allows_it(db: Conn, org_id: int) -> None:
    receiver = HTTPReceiver()
    try:
        for url in (receiver.url(), receiver.url("localhost"), receiver.url("[::ffff:7f00:1]")):
            with pytest.raises(service.AnalysisRequestError, match="loopback"):
                service.set_webhook(db, org_id, url, allowed_networks=())
        for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
            with pytest.raises(service.AnalysisRequestError, match="metadata"):
                service.set_webhook(db, org_id, url, allowed_networks=LOOPBACK)
        with pytest.raises(service.AnalysisRequestError, match="could not be resolved"):
            service.set_webhook(db, org_id, "https://no-such-host.invalid/", allowed_networks=())
        assert service.get_webhook(db, org_id) is None

        # Allowed when configured, then the operator withdraws the allowance: each attempt
        # checks again, and nothing reaches the receiver.
        hook(db, org_id, receiver.url())
        queue_deliveries(db, org_id)
        assert webhooks.deliver_due(db, allowed_networks=(), limits=QUICK)["failed_attempts"] == 1
        [delivery] = deliveries(db, org_id)
        assert delivery["attempts"][0]["error"] == (
            "127.0.0.1 is loopback; webhooks may not reach it unless the operator allows it"
            " with FIELDHUB_WEBHOOK_ALLOWED_NETWORKS"
        )
        assert receiver.requests == []
    finally:
        receiver.close()


def test_each_attempt_connects_to_the_address_it_checked(db: Conn, org_id: int) -> None:
    """DNS rebinding: the name first resolves to an allowed address, then to a refused one.
    The attempt that checked the allowed address must connect to it (the name itself does not
    resolve on this machine, so any second lookup would fail), and the next attempt must see
    the new answer and refuse it."""
    receiver = HTTPReceiver()
    answers: list[list[IPAddress]] = [[ipaddress.ip_address("127.0.0.1")]]
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[IPAddress]:
        lookups.append(host)
        return answers[-1]

    try:
        hook(db, org_id, receiver.url())
        name_url = f"http://hooks.rebind.test:{receiver.port}/in?x=1"
        db.execute("UPDATE org_webhooks SET url = %s WHERE org_id = %s", (name_url, org_id))
        allowed = [ipaddress.ip_network("127.0.0.1/32")]
        queue_deliveries(db, org_id)
        result = webhooks.deliver_due(db, allowed_networks=allowed, limits=QUICK, resolve=resolver)
        assert result["delivered"] == 1
        assert lookups == ["hooks.rebind.test"]
        [received] = receiver.requests
        assert received.headers["Host"] == f"hooks.rebind.test:{receiver.port}"
        assert received.path == "/in?x=1"

        answers.append([ipaddress.ip_address("10.0.0.7")])
        queue_deliveries(db, org_id)
        result = webhooks.deliver_due(db, allowed_networks=allowed, limits=QUICK, resolve=resolver)
        assert result["failed_attempts"] == 1
        assert lookups == ["hooks.rebind.test"] * 2
        assert len(receiver.requests) == 1
        error = deliveries(db, org_id)[1]["last_error"]
        assert error.startswith(
            "hooks.rebind.test resolves to 10.0.0.7, which is private (RFC 1918)"
        )
    finally:
        receiver.close()


def test_https_uses_the_urls_host_for_sni_and_the_certificate(
    db: Conn, org_id: int, tls_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The receiver's CA as the only trusted one, as the system's CAs are in production.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_dir / "ca.crt"))
    receiver = HTTPReceiver(tls=server_tls(tls_dir))
    try:
        hook(db, org_id, receiver.url("localhost"))
        queue_deliveries(db, org_id)
        assert webhooks.deliver_due(db, allowed_networks=LOOPBACK, limits=QUICK)["delivered"] == 1
        assert receiver.server_names == ["localhost"]
        assert receiver.requests[0].headers["Host"] == f"localhost:{receiver.port}"
    finally:
        receiver.close()


# -- signing -------------------------------------------------------------------------------------
def documented_receiver() -> dict[str, Any]:
    """The receiver example of docs/analysis.md, run as it is written there."""
    text = (ROOT / "docs" / "analysis.md").read_text()
    section = text[text.index("**Verifying deliveries.**") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "docs/analysis.md lost its receiver example"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "docs/analysis.md", "exec"), namespace)  # noqa: S102
    return namespace


def test_the_documented_receiver_accepts_a_delivery_once_and_refuses_replays(
    db: Conn, org_id: int
) -> None:
    receiver = HTTPReceiver()
    try:
        secret = hook(db, org_id, receiver.url())
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
        queue_deliveries(db, org_id)
        before = int(time.time())
        assert webhooks.deliver_due(db, allowed_networks=LOOPBACK, limits=QUICK)["delivered"] == 1
    finally:
        receiver.close()
    [captured] = receiver.requests
    headers, body = captured.headers, captured.body
    assert re.fullmatch(r"msg_[0-9a-f]{32}", headers["webhook-id"])
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
    assert headers["X-Fieldhub-Event"] == "alert.active"
    assert "X-Fieldhub-Signature" not in headers

    example = documented_receiver()
    verify = example["verify"]
    assert verify(secret, headers, body) == {"event": "alert.active", "n": 1}
    # The same capture again: refused by its id.
    with pytest.raises(ValueError, match="already accepted"):
        verify(secret, headers, body)
    # Re-dated to look fresh, to a receiver that has not seen the id: the signature fails.
    example["accepted"].clear()
    redated = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 60)}
    with pytest.raises(ValueError, match="no valid signature"):
        verify(secret, redated, body)
    # Replayed as it is, later than the tolerance: too old.
    with pytest.raises(ValueError, match="timestamp outside the tolerance"):
        verify(secret, headers, body, now=time.time() + 6 * 60)
    # Tampered body, wrong secret.
    with pytest.raises(ValueError, match="no valid signature"):
        verify(secret, headers, body.replace(b"1", b"2"))
    with pytest.raises(ValueError, match="no valid signature"):
        verify(webhook_rules.new_secret(), headers, body)
    # A retry of the same delivery keeps its id and gets a new timestamp and signature.
    assert verify(secret, headers, body) == {"event": "alert.active", "n": 1}


def test_hooks_from_before_0009_keep_working(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    """A database with a hook of the old scheme, migrated: the receiver that knows the old
    secret still verifies X-Fieldhub-Signature, the standard signature uses the same key, and
    saving the hook again ends the legacy header."""
    before = tmp_path / "migrations-before-0009"
    before.mkdir()
    for path in SCHEMA_DIR.glob("*.sql"):
        if int(path.name[:4]) < 9:
            shutil.copy(path, before / path.name)
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
    receiver = HTTPReceiver()
    try:
        url = pg_cluster.url(name)
        apply_migrations(url, schema_dir=before)
        old_secret = "Zm9yIHRoZSBsZWdhY3kgcmVjZWl2ZXI-_0123456789abcde"
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            org_id = int(registry.create_org(conn, "old-org")["id"])
            conn.execute(
                "INSERT INTO org_webhooks (org_id, url, secret) VALUES (%s, %s, %s)",
                (org_id, receiver.url(), old_secret),
            )
        apply_migrations(url)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            row = conn.execute(
                "SELECT secret, legacy_signature FROM org_webhooks WHERE org_id = %s", (org_id,)
            ).fetchone()
            assert row is not None
            assert row["legacy_signature"] is True
            assert row["secret"] == "whsec_" + base64.b64encode(old_secret.encode()).decode()
            assert service.get_webhook(conn, org_id)["legacy_signature"] is True  # type: ignore[index]
            conn.execute(
                "INSERT INTO webhook_deliveries (org_id, event, payload) VALUES (%s, %s, %s)",
                (org_id, "alert.active", Jsonb({"event": "alert.active"})),
            )
            assert webhooks.deliver_due(conn, allowed_networks=LOOPBACK)["delivered"] == 1
            [received] = receiver.requests
            legacy = hmac.new(old_secret.encode(), received.body, hashlib.sha256).hexdigest()
            assert received.headers["X-Fieldhub-Signature"] == f"sha256={legacy}"
            assert received.headers["X-Fieldhub-Delivery"].isdigit()
            assert documented_receiver()["verify"](row["secret"], received.headers, received.body)

            saved = service.set_webhook(conn, org_id, receiver.url(), allowed_networks=LOOPBACK)
            assert saved["legacy_signature"] is False
            conn.execute(
                "INSERT INTO webhook_deliveries (org_id, event, payload) VALUES (%s, %s, %s)",
                (org_id, "alert.cleared", Jsonb({"event": "alert.cleared"})),
            )
            assert webhooks.deliver_due(conn, allowed_networks=LOOPBACK)["delivered"] == 1
            assert "X-Fieldhub-Signature" not in receiver.requests[1].headers
            assert "X-Fieldhub-Delivery" not in receiver.requests[1].headers
    finally:
        receiver.close()
        with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def test_a_delivery_fails_for_good_after_its_last_attempt(db: Conn, org_id: int) -> None:
    receiver = HTTPReceiver(status=503)
    try:
        hook(db, org_id, receiver.url())
        queue_deliveries(db, org_id)
        limits = webhooks.DeliveryLimits(backoff_base_s=0.0, max_attempts=3)
        for _ in range(4):
            webhooks.deliver_due(db, allowed_networks=LOOPBACK, limits=limits)
        [delivery] = deliveries(db, org_id)
        assert (delivery["status"], delivery["attempt_count"]) == ("failed", 3)
        assert [a["status"] for a in delivery["attempts"]] == [503, 503, 503]
        assert len(receiver.requests) == 3
        # Every attempt of one delivery carries the same id, each its own timestamp.
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    finally:
        receiver.close()
