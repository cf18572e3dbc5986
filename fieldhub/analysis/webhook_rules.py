"""The rules of webhook delivery, without I/O: which URLs and addresses a webhook may reach,
how a delivery is signed, what counts as delivered, and which organisations go next.

`fieldhub.analysis.webhooks` applies them (DNS, sockets, the database); docs/analysis.md,
"Webhooks", is the contract they implement."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import urllib.parse
from collections.abc import Collection, Mapping, Sequence

from fieldhub.core.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2000  # longer than any real endpoint; keeps the log and the pages readable
SECRET_PREFIX = "whsec_"  # noqa: S105 - the marker of the form, not a secret
# Standard Webhooks asks for 24 to 64 random bytes; 32 (256 bits) is as strong as
# HMAC-SHA256 itself, so more would add length and nothing else.
SECRET_BYTES = 32


class TargetError(ValueError):
    """The URL or an address it resolves to may not be a webhook target; says why."""


# -- targets -----------------------------------------------------------------------------------
def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in pairs)


# Refused unless FIELDHUB_WEBHOOK_ALLOWED_NETWORKS allows them: everything that is not an
# ordinary public unicast address (IANA's special-purpose registries), so a webhook URL cannot
# make the worker reach the hosts around it. The first match names the reason, so the narrow
# entries (metadata addresses) come before the ranges that contain them.
REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = _nets(
    ("168.63.129.16/32", "a cloud metadata address (Azure's host endpoint)"),
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared carrier-grade NAT space (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, where cloud metadata services (169.254.169.254) answer"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "reserved for IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "the 6to4 relay anycast range"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "reserved for benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (and broadcast)"),
    ("fd00:ec2::254/128", "a cloud metadata address (AWS's IPv6 instance metadata)"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("::/8", "reserved (IPv4-compatible and other legacy forms)"),
    ("100::/64", "discard-only"),
    ("2001::/23", "reserved for IETF protocol assignments (Teredo among them)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4, which relays to any IPv4 address"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
# The well-known NAT64 prefix carries an IPv4 address in its last 32 bits (RFC 6052): judged
# by that address, so an IPv6-only host reaches public IPv4 receivers but not 169.254.169.254.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refusal(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why `address` may not be a webhook target, or None if it may.

    An IPv4-mapped IPv6 address (::ffff:a.b.c.d) and a NAT64 address are judged as the IPv4
    address they reach. `allowed` (FIELDHUB_WEBHOOK_ALLOWED_NETWORKS) wins over every refusal."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refusal(address.ipv4_mapped, allowed)
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    if any(address in network for network in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address in NAT64:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
        reason = refusal(embedded, allowed)
        return None if reason is None else f"NAT64 to {embedded}, which is {reason}"
    for network, why in REFUSED_NETWORKS:
        if address in network:
            return why
    # A second net under the list: whatever the standard library knows is not public.
    if address.is_reserved or address.is_multicast or not address.is_global:
        return "reserved (not globally routable)"
    return None


def refused_message(address: IPAddress, reason: str, *, host: str | None = None) -> str:
    shown = str(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        shown = f"{address} ({address.ipv4_mapped})"
    what = f"{shown} is" if host is None else f"{host} resolves to {shown}, which is"
    return (
        f"{what} {reason}; webhooks may not reach it unless the operator allows it "
        "with FIELDHUB_WEBHOOK_ALLOWED_NETWORKS"
    )


@dataclasses.dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: where to connect and what to ask for."""

    url: str
    scheme: str  # "http" or "https"
    host: str  # an IDNA (ASCII) name, or an IP address without brackets
    port: int
    path: str  # the request target: path and query, at least "/"

    @property
    def address(self) -> IPAddress | None:
        """The host when the URL names an address rather than a name."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def parse_target(url: str) -> Target:
    """Check a webhook URL's form (not where it leads: that needs DNS) and take it apart."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise TargetError(f"the webhook URL is longer than {MAX_URL_LENGTH:,} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise TargetError("the webhook URL must not contain spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not url.lower().startswith(f"{scheme}://"):
        raise TargetError("the webhook URL must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise TargetError(
            "the webhook URL must not contain a user name or password: receivers verify the "
            "signature instead"
        )
    if parts.fragment:
        raise TargetError("the webhook URL must not contain a #fragment")
    host = parts.hostname or ""
    if not host:
        raise TargetError("the webhook URL has no host")
    try:
        given_port = parts.port
    except ValueError:
        given_port = 0
    if given_port == 0:
        raise TargetError("the webhook URL has an invalid port")
    port = given_port or (443 if scheme == "https" else 80)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise TargetError(f"the webhook URL's host {host!r} is not a valid name") from None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(url=url, scheme=scheme, host=host, port=port, path=path)


# -- signing (Standard Webhooks, symmetric v1) --------------------------------------------------
def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def message_id(uuid_hex: str) -> str:
    """`webhook-id`: no dots, which the signed content uses as separators."""
    return f"msg_{uuid_hex}"


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def legacy_signature(key: bytes, body: bytes) -> str:
    """X-Fieldhub-Signature of hooks configured before signing covered a timestamp (0009)."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str, msg_id: str, timestamp: int, body: bytes, *, legacy: bool
) -> dict[str, str]:
    key = secret_key(secret)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }
    if legacy:
        headers["X-Fieldhub-Signature"] = legacy_signature(key, body)
    return headers


# -- outcomes ----------------------------------------------------------------------------------
def status_error(status: int, *, location: str | None = None, detail: str = "") -> str | None:
    """None when an HTTP status means delivered (2xx), else the attempt's error."""
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        where = f" to {location}" if location else ""
        return (
            f"HTTP {status}: the receiver redirects{where}; redirects are not followed, "
            "set the webhook URL to the final address"
        )
    text = " ".join(detail.split())
    return f"HTTP {status}" + (f": {text}" if text else "")


# -- fairness ----------------------------------------------------------------------------------
def pick_orgs(
    due: Sequence[tuple[int, dt.datetime | None, dt.datetime]],
    *,
    busy: Collection[int],
    served: Mapping[int, int],
    lane_s: Mapping[int, float],
    per_org: int,
    slots: int,
) -> list[int]:
    """Which organisations get the `slots` free lanes now, one delivery each.

    `due`: (org, when its last attempt ended or None, since when its longest-waiting delivery
    has been due) of every org with something due; `busy`: orgs with an attempt in flight
    (one at a time per org, so its events go out in order); `served`: attempts per org in
    this pass, at most `per_org`; `lane_s`: the seconds its attempts held a lane in this pass.

    Round-robin weighted by lane time: the org that has held lanes least in this pass goes
    first, so a receiver that answers in milliseconds is never queued behind receivers that
    take their whole timeout, and those take turns among themselves. Ties (the start of a
    pass): the org whose last turn ended longest ago (never first), then the longest waiting."""
    candidates = sorted(
        (lane_s.get(org, 0.0), last is not None, last or oldest, oldest, org)
        for org, last, oldest in due
        if org not in busy and served.get(org, 0) < per_org
    )
    return [org for *_, org in candidates[: max(0, slots)]]
