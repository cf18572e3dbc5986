"""The pure rules of webhook delivery: targets, signatures, outcomes, round-robin."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
from typing import Any

import pytest

from fieldhub.analysis import webhook_rules
from fieldhub.analysis.webhook_rules import TargetError, parse_target, refusal


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("fd12:3456::1", "unique local"),
        ("fc00::1", "unique local"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.100.100.200", "carrier-grade NAT"),  # Alibaba Cloud's metadata service
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "documentation"),
        ("2001:db8::1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("fd00:ec2::254", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),
        ("192.0.0.192", "IETF"),  # Oracle Cloud's old metadata address
        # IPv4-mapped IPv6 forms reach the IPv4 address: judged as it.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:100.64.0.1", "carrier-grade NAT"),
        ("::ffff:0.0.0.0", "unspecified"),
        # Other IPv6 forms that carry an IPv4 address.
        ("::127.0.0.1", "reserved"),
        ("64:ff9b::a9fe:a9fe", "NAT64 to 169.254.169.254"),
        ("64:ff9b:1::1", "NAT64"),
        ("2002:a9fe:a9fe::1", "6to4"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ],
)
def test_refused_targets_say_why(address: str, says: str) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None
    assert says in reason, reason


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::6810:85e5", "64:ff9b::5db8:d822"]
)
def test_public_addresses_are_targets(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_the_operator_allows_networks_and_nothing_else() -> None:
    allowed = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("fd00:ec2::/32")]
    assert refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.2"), allowed) is None
    assert refusal(ipaddress.ip_address("fd00:ec2::254"), allowed) is None
    assert refusal(ipaddress.ip_address("::1"), allowed) == "loopback"
    assert refusal(ipaddress.ip_address("10.0.0.1"), allowed) == "private (RFC 1918)"
    message = webhook_rules.refused_message(ipaddress.ip_address("10.0.0.1"), "private")
    assert "FIELDHUB_WEBHOOK_ALLOWED_NETWORKS" in message


def test_targets_are_taken_apart() -> None:
    target = parse_target("  HTTPS://Hooks.Example.com:8443/in?k=v ")
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "hooks.example.com",
        8443,
        "/in?k=v",
    )
    assert target.address is None
    assert parse_target("http://[::1]/").address == ipaddress.ip_address("::1")
    assert parse_target("http://203.0.113.9").path == "/"
    assert parse_target("https://bücher.example/").host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/", "must start with http:// or https://"),
        ("example.com/hook", "must start with http:// or https://"),
        ("javascript:alert(1)", "must start with http:// or https://"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http://example.com/#part", "fragment"),
        ("http://example.com:0/", "invalid port"),
        ("http://example.com:99999/", "invalid port"),
        ("http:///path", "no host"),
        ("http://exa mple.com/", "spaces or control characters"),
        ("http://example.com/\r\nX-Injected: 1", "spaces or control characters"),
        ("https://" + "a" * 2000 + ".com/", "longer than 2,000 characters"),
    ],
)
def test_malformed_urls_are_refused(url: str, says: str) -> None:
    with pytest.raises(TargetError, match=says):
        parse_target(url)


def test_signature_is_standard_webhooks_v1() -> None:
    secret = webhook_rules.new_secret()
    assert secret.startswith("whsec_")
    key = webhook_rules.secret_key(secret)
    assert len(key) == webhook_rules.SECRET_BYTES
    body = b'{"event":"alert.active"}'
    headers = webhook_rules.signed_headers(secret, "msg_1", 1700000000, body, legacy=False)
    digest = hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    assert headers == {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
    # Another timestamp, another signature: a capture cannot be re-dated.
    assert webhook_rules.signature(key, "msg_1", 1700000001, body) != headers["webhook-signature"]
    legacy = webhook_rules.signed_headers(secret, "msg_1", 1700000000, body, legacy=True)
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    assert legacy["X-Fieldhub-Signature"] == f"sha256={expected}"


def test_the_standard_webhooks_reference_vector() -> None:
    """The example of the Standard Webhooks reference libraries' tests."""
    key = webhook_rules.secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert (
        webhook_rules.signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_only_2xx_is_delivered_and_redirects_are_not_followed() -> None:
    assert webhook_rules.status_error(200) is None
    assert webhook_rules.status_error(204) is None
    moved = webhook_rules.status_error(301, location="https://elsewhere.example/")
    assert moved is not None
    assert "redirects are not followed" in moved
    assert "elsewhere.example" in moved
    assert webhook_rules.status_error(503) == "HTTP 503"
    assert webhook_rules.status_error(401, detail="bad\n  signature") == "HTTP 401: bad signature"


def test_lanes_go_to_the_org_that_held_them_least_then_round_robin() -> None:
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

    def at(minutes: int) -> dt.datetime:
        return t0 + dt.timedelta(minutes=minutes)

    def pick(due: list[tuple[int, dt.datetime | None, dt.datetime]], **kw: Any) -> list[int]:
        options = {"busy": set(), "served": {}, "lane_s": {}, "per_org": 5, "slots": 8, **kw}
        return webhook_rules.pick_orgs(due, **options)

    never: list[tuple[int, dt.datetime | None, dt.datetime]] = [
        (1, None, at(0)),
        (2, None, at(1)),
        (3, None, at(2)),
    ]
    # Never attempted: the longest waiting first, as many as there are free lanes.
    assert pick(never, slots=2) == [1, 2]
    # Orgs 1 and 2 had their turn, 1's ended last: the org never served goes first, then 2,
    # then 1, however long their deliveries have waited.
    turns = [(1, at(30), at(0)), (2, at(20), at(1)), (3, None, at(25))]
    assert pick(turns) == [3, 2, 1]
    # In a pass, lane time decides: 1 answers in milliseconds, 2 and 3 took their timeouts.
    assert pick(turns, lane_s={1: 0.2, 2: 10.0, 3: 10.0}) == [1, 3, 2]
    # One attempt at a time per org: an org in flight is not picked.
    assert pick(turns, busy={3}) == [2, 1]
    # A share used up is used up for the pass.
    assert pick(turns, served={1: 5, 2: 5, 3: 4}) == [3]
    assert pick(turns, slots=0) == []
