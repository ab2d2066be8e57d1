"""The addresses a budget's webhook may be sent to: an IPv6 address carrying an IPv4 one (NAT64, 6to4,
IPv4-compatible or -mapped) is judged by the IPv4 address it carries, as a gateway on the way would translate
it. Python 3.11 counts 64:ff9b::7f00:1 (127.0.0.1 behind a NAT64 gateway) a global address."""

from __future__ import annotations

import ipaddress

import pytest

from portfolio.billing import budgets, webhooks
from portfolio.errors import Invalid
from tests.conftest import actor_for

INTERNAL = [
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::808:808",  # the local-use NAT64 prefix, whatever it carries
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254, the cloud metadata address
    "::127.0.0.1",  # IPv4-compatible
    "::ffff:10.1.2.3",  # IPv4-mapped
    "::1",
    "10.0.0.1",
    "fd00::1",
]
PUBLIC = ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "8.8.8.8", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", INTERNAL)
def test_an_address_carrying_an_internal_ipv4_one_is_internal(address):
    assert not webhooks.is_global(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_a_public_address_stays_public(address):
    assert webhooks.is_global(ipaddress.ip_address(address))


@pytest.mark.django_db
@pytest.mark.parametrize("host", ["[64:ff9b::7f00:1]", "[2002:a9fe:a9fe::1]", "[::127.0.0.1]"])
def test_a_budget_refuses_a_webhook_to_such_an_address(org, team, host):
    with pytest.raises(Invalid, match="this host is internal"):
        budgets.set_budget(
            actor=actor_for(org["admin"]), team=team, amount="10", webhook_url=f"https://{host}/hook"
        )
