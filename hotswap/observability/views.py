"""GET /metrics, for Prometheus: open to the allowed networks, or to anyone with the bearer token."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from hotswap.exceptions import error_body
from hotswap.lib.clientip import ip_parse, networks_parse
from hotswap.observability.metrics import exposition


def from_allowed_network(request: HttpRequest) -> bool:
    """The peer and every X-Forwarded-For hop are inside METRICS_ALLOWED_NETWORKS.

    A proxy on the same host makes every request come from 127.0.0.1: the hops it forwards for
    must be allowed too, so the internet never gets in through a local proxy. Stricter than
    hotswap.lib.clientip.client_address on purpose: a forged hop can only shut the door, never open it.
    """
    networks = networks_parse(tuple(settings.METRICS_ALLOWED_NETWORKS))
    if not networks:
        return False
    hops = [request.META.get("REMOTE_ADDR", "")]
    hops += [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    addresses = [ip_parse(hop) for hop in hops]
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
