"""docker-compose.yml's networks: each service is only on the networks of the services it speaks to, worked
out here from the addresses in their environments. Keycloak shares a network with PostgreSQL alone, and none
with an engine, Redis or MinIO; the fixed subnet stays the one web's published port arrives through."""

import ipaddress
from urllib.parse import urlsplit

import pytest

from portfolio.envparse import Env
from tests.compose_file import PLATFORM_SERVICES, env_of, interpolated

DATA_STORES = {"postgres", "redis", "minio"}
NODES = {"node-cpu", "node-gpu"}
# Who calls the node agents' engines: the gateway (web), eval runs, the canary judge and the serving-speed
# probe (the workers), and each agent its own (health, adapters).
ENGINE_CALLERS = {"web", "worker", "worker-long"} | NODES
# Who must get out of the compose networks: web and the workers to Keycloak's public address through the
# proxy, the workers also to the Hub and budget webhooks, Keycloak to the back-channel logout of
# PORTFOLIO_URL, the agents to PORTFOLIO_GATEWAY_IMAGE_HOSTS.
GOES_OUT = {"web", "worker", "worker-long", "keycloak"} | NODES


def networks_of(spec: dict) -> dict[str, dict]:
    """A service's networks by name (compose takes a list or a mapping)."""
    named = spec.get("networks", ["default"])
    return {name: {} for name in named} if isinstance(named, list) else {k: v or {} for k, v in named.items()}


def members(compose: dict, network: str) -> set[str]:
    return {name for name, spec in compose["services"].items() if network in networks_of(spec)}


def internal(compose: dict, network: str) -> bool:
    return bool((compose["networks"][network] or {}).get("internal"))


def share_a_network(compose: dict, one: str, other: str) -> bool:
    return bool(set(networks_of(compose["services"][one])) & set(networks_of(compose["services"][other])))


def host_of(address: str) -> str:
    return urlsplit(address if "//" in address else f"//{address}").hostname or ""


def test_every_service_names_its_networks_and_every_network_is_defined_and_used(compose):
    for name, spec in compose["services"].items():
        assert "networks" in spec, f"{name} would join `default`, web's network"
        assert set(networks_of(spec)) <= set(compose["networks"]), name
    for network in compose["networks"]:
        assert members(compose, network), f"network {network} has no service"


def test_each_service_shares_a_network_with_every_service_its_environment_names(compose):
    """The hosts in DATABASE_URL, REDIS_URL, MINIO_ENDPOINT, PORTFOLIO_GATEWAY_URL and Keycloak's database URL
    are services it must reach."""
    keys = ("DATABASE_URL", "REDIS_URL", "MINIO_ENDPOINT", "PORTFOLIO_GATEWAY_URL", "KC_DB_URL")
    checked = set()
    for name in compose["services"]:
        env = env_of(compose, name) if compose["services"][name].get("environment") else {}
        for key in keys:
            if key in env:
                host = host_of(env[key].removeprefix("jdbc:"))
                assert host in compose["services"], (name, key, host)
                assert share_a_network(compose, name, host), f"{name} cannot reach {host} ({key})"
                checked.add((name, host))
    assert {("keycloak", "postgres"), ("worker", "web"), ("node-gpu", "web"), ("beat", "redis")} <= checked
    assert share_a_network(compose, "minio-init", "minio")  # its script names MinIO's address


@pytest.mark.parametrize("node", sorted(NODES))
def test_engines_listen_on_an_alias_of_the_engines_network_which_their_callers_are_on(compose, node):
    """The service's own name resolves to one of its addresses per network: the engine binds to the address
    of PORTFOLIO_NODE_ADDRESS, so it must be a name with one network's address, which every caller is on."""
    address = env_of(compose, node)["PORTFOLIO_NODE_ADDRESS"]
    aliased = [
        net
        for net, spec in networks_of(compose["services"][node]).items()
        if address in spec.get("aliases", [])
    ]
    assert aliased == ["engines"], f"{node}: {address} is not an alias on the engines network alone"
    assert address not in compose["services"]
    for other, spec in compose["services"].items():
        if other != node:
            assert all(address not in config.get("aliases", []) for config in networks_of(spec).values())
    assert members(compose, "engines") == ENGINE_CALLERS


def test_keycloak_shares_a_network_with_postgresql_alone(compose):
    keycloak = set(networks_of(compose["services"]["keycloak"]))
    assert "engines" not in keycloak and "data" not in keycloak
    neighbours = set().union(*(members(compose, network) for network in keycloak)) - {"keycloak"}
    assert neighbours == {"postgres"}
    # Not even web or the workers: they reach it at its public address, through the TLS proxy.
    assert env_of(compose, "web")["PORTFOLIO_OIDC_SERVER_URL"].startswith("https://")
    assert host_of(env_of(compose, "web")["PORTFOLIO_OIDC_SERVER_URL"]) not in compose["services"]


def test_the_data_stores_and_the_engines_network_have_no_way_out_and_those_who_go_out_do(compose):
    for store in DATA_STORES | {"minio-init"}:
        assert all(internal(compose, net) for net in networks_of(compose["services"][store])), store
    assert internal(compose, "data") and internal(compose, "engines") and internal(compose, "keycloak-db")
    for name, spec in compose["services"].items():
        outward = [net for net in networks_of(spec) if not internal(compose, net)]
        assert bool(outward) is (name in GOES_OUT), (name, outward)
    # Nobody that goes out shares that way with Keycloak but PostgreSQL's network: Keycloak's is its own.
    assert members(compose, "sso") == {"keycloak"}


def test_web_s_published_port_arrives_through_the_network_with_the_fixed_subnet(compose):
    """Docker publishes a port through the container's one network with a gateway (an internal network has
    none): for web that must be the network whose gateway PORTFOLIO_TRUSTED_PROXIES names."""
    for name, spec in compose["services"].items():
        if spec.get("ports"):
            outward = [net for net in networks_of(spec) if not internal(compose, net)]
            assert len(outward) == 1, f"{name}: its published port could arrive through any of {outward}"
    web = [net for net in networks_of(compose["services"]["web"]) if not internal(compose, net)]
    assert web == ["default"] and members(compose, "default") == {"web"}
    assert "ipam" in compose["networks"]["default"]


@pytest.mark.parametrize(
    "variables, proxy",
    [
        ({}, "172.30.0.1"),
        ({"PORTFOLIO_SUBNET": "10.77.0.0/24", "PORTFOLIO_SUBNET_GATEWAY": "10.77.0.1"}, "10.77.0.1"),
        (
            {
                "PORTFOLIO_SUBNET": "10.77.0.0/24",
                "PORTFOLIO_SUBNET_GATEWAY": "10.77.0.1",
                "PORTFOLIO_TRUSTED_PROXIES": "192.0.2.10",
            },
            "192.0.2.10",
        ),
    ],
)
def test_the_trusted_proxy_follows_the_network_gateway_unless_set(compose, variables, proxy):
    """A moved subnet with the old literal default made every client the new gateway's address: IP
    allow-lists refused everyone, and one lockout locked out all."""
    config = compose["networks"]["default"]["ipam"]["config"][0]
    gateway = ipaddress.ip_address(interpolated(config["gateway"], variables))
    assert gateway in ipaddress.ip_network(interpolated(config["subnet"], variables))
    value = interpolated(compose["services"]["web"]["environment"]["PORTFOLIO_TRUSTED_PROXIES"], variables)
    assert Env({"P": value}).networks("P", []) == [proxy, "127.0.0.1"]
    if "PORTFOLIO_TRUSTED_PROXIES" not in variables:
        assert proxy == str(gateway)


def test_platform_services_are_on_the_data_network_and_only_callers_of_engines_on_theirs(compose):
    for name in PLATFORM_SERVICES:
        nets = set(networks_of(compose["services"][name]))
        assert "data" in nets, name
        assert ("engines" in nets) is (name in ENGINE_CALLERS), name
