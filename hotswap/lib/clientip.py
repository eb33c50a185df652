"""The client's address: the peer, or what a trusted proxy (TRUSTED_PROXIES) says it forwarded for."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_parse(value: str) -> Address | None:
    """The address in a REMOTE_ADDR or X-Forwarded-For hop ("::ffff:10.1.2.3" is 10.1.2.3), None if it is none."""
    try:
        address = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


@lru_cache(maxsize=8)
def networks_parse(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def client_address(request: HttpRequest) -> str:
    """REMOTE_ADDR, unless the peer is a trusted proxy: then the right-most X-Forwarded-For hop not itself trusted.

    Anyone can send X-Forwarded-For, so it is read only when a trusted proxy sent the request, and only
    from the right: each trusted proxy appends the address it received from, while everything to the left
    of the first untrusted hop was written by the client itself. Throttles, logs and anything else keyed
    on "who is calling" use this one answer (DRF's own get_ident believes the header from anyone).
    """
    peer = request.META.get("REMOTE_ADDR", "")
    trusted = networks_parse(tuple(settings.TRUSTED_PROXIES))
    address = ip_parse(peer) if trusted else None
    if address is None or not any(address in network for network in trusted):
        return peer
    for hop in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        forwarded = ip_parse(hop)
        if forwarded is None:
            break  # not an address: keep the last hop a trusted proxy vouched for
        address = forwarded
        if not any(address in network for network in trusted):
            break
    return str(address)
