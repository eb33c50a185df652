"""GET /metrics, for Prometheus: open to the allowed networks, or to anyone with the bearer token."""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from hotswap.exceptions import error_body
from hotswap.observability.metrics import exposition

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def from_allowed_network(request: HttpRequest) -> bool:
    """The peer and every X-Forwarded-For hop are inside METRICS_ALLOWED_NETWORKS.

    A proxy on the same host makes every request come from 127.0.0.1: the hops it forwards for
    must be allowed too, so the internet never gets in through a local proxy.
    """
    networks = _networks(tuple(settings.METRICS_ALLOWED_NETWORKS))
    if not networks:
        return False
    hops = [request.META.get("REMOTE_ADDR", "")]
    hops += [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    addresses = [_address(hop) for hop in hops]
    return all(a is not None and any(a in network for network in networks) for a in addresses)


def has_token(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(),
                                                                             token.encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not (has_token(request) or from_allowed_network(request)):
        if settings.METRICS_TOKEN:
            response = JsonResponse(error_body(request, code="NOT_AUTHENTICATED", message=(
                "Send 'Authorization: Bearer <METRICS_TOKEN>' to read the metrics.")), status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return JsonResponse(error_body(request, code="PERMISSION_DENIED", message=(
            "The metrics are open only to METRICS_ALLOWED_NETWORKS (or with METRICS_TOKEN).")), status=403)
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
