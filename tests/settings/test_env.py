"""hotswap.settings.env: lists of networks are checked when the settings load, not at the first request."""

import environ
import pytest

from hotswap.settings.env import networks


def test_it_reads_a_list_of_networks(monkeypatch):
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,2001:db8::/32,")

    assert networks("TRUSTED_PROXIES", default=[]) == ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"]


@pytest.mark.parametrize("value", ["10.0.0.0/33", "proxy.internal", "10.0.0.0/8,10.1.2.3.4"])
def test_it_refuses_what_is_not_a_network_and_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("TRUSTED_PROXIES", value)

    with pytest.raises(environ.ImproperlyConfigured, match=r"^TRUSTED_PROXIES: "):
        networks("TRUSTED_PROXIES", default=[])
