"""client_address: the peer, or the right-most X-Forwarded-For hop that no trusted proxy wrote."""

import pytest
from django.test import RequestFactory

from hotswap.lib.clientip import client_address


@pytest.mark.parametrize(("trusted", "peer", "forwarded_for", "client"), [
    ([], "198.51.100.7", "203.0.113.1", "198.51.100.7"),
    (["10.0.0.0/8"], "198.51.100.7", "203.0.113.1", "198.51.100.7"),
    (["10.0.0.0/8"], "10.0.0.2", "203.0.113.1", "203.0.113.1"),
    (["10.0.0.0/8"], "10.0.0.2", "6.6.6.6, 203.0.113.1", "203.0.113.1"),
    (["10.0.0.0/8"], "10.0.0.2", "203.0.113.1, 10.9.9.9", "203.0.113.1"),
    (["10.0.0.0/8"], "10.0.0.2", "10.1.1.1, 10.9.9.9", "10.1.1.1"),
    (["10.0.0.0/8"], "10.0.0.2", "", "10.0.0.2"),
    (["10.0.0.0/8"], "10.0.0.2", "not-an-address", "10.0.0.2"),
    (["10.0.0.0/8"], "10.0.0.2", "203.0.113.1, garbage, 10.9.9.9", "10.9.9.9"),
    (["10.0.0.0/8", "2001:db8::/32"], "2001:db8::1", "[2001:db8:ffff::2], ::ffff:203.0.113.9", "203.0.113.9"),
    (["127.0.0.1"], "::ffff:127.0.0.1", "2001:db8::7", "2001:db8::7"),
])
def test_it_believes_forwarded_addresses_only_from_trusted_proxies(settings, trusted, peer, forwarded_for, client):
    settings.TRUSTED_PROXIES = trusted
    request = RequestFactory().get("/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded_for)

    assert client_address(request) == client
