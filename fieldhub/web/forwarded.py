"""Who the client is behind reverse proxies: a pure rule, applied by fieldhub.web.proxies.

Behind nginx every request's peer is nginx, so login throttling keyed on the peer would let 30
failures from anyone lock every user out. A proxy appends the address it received the request
from to X-Forwarded-For, so the header's right end was written by the proxies nearest to us and
everything to the left of the first address they did not vouch for may be made up by the
client. Hence the rule (the one nginx's real_ip_recursive and Werkzeug's ProxyFix follow):

- if the direct peer is not a trusted proxy, the header is ignored: the peer is the client;
- else walk the header from the right, skipping trusted proxies; the first address that is not
  one is the client;
- an entry that is not an IP address stops the walk at the last address a trusted proxy
  vouched for (the hop that sent the garbage);
- if every hop is trusted, the left-most one is the client."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from fieldhub.core.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> IPAddress | None:
    """An IP address in canonical form (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> str | None:
    """The client's address for a request from `peer` carrying `forwarded_for` (the
    X-Forwarded-For header, several headers joined by commas). None only without a peer."""
    peer_address = parse_address(peer or "")
    if peer_address is None:
        return peer or None
    if not forwarded_for or not is_trusted(peer_address, trusted):
        return str(peer_address)
    client = peer_address
    for hop in reversed(forwarded_for.split(",")):
        address = parse_address(hop)
        if address is None:
            break
        client = address
        if not is_trusted(address, trusted):
            break
    return str(client)
