"""A dual-stack pod that requests one IPv4 and one IPv6 address, through the real shim,
the node daemon, ipamd and the bridge driver."""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from .conftest import Network, ip, link_exists, release_pool, unique_name
from .daemons import Ipamd


def _host_ipv6_networks() -> list[ipaddress.IPv6Network]:
    output = ip("-j", "-6", "route", "show", "table", "all").stdout
    networks = []
    for route in json.loads(output):
        try:
            networks.append(ipaddress.IPv6Network(route.get("dst", ""), strict=False))
        except ValueError:
            continue
    return networks


@dataclass(frozen=True)
class V6Pool:
    name: str
    cidr: ipaddress.IPv6Network


@pytest.fixture
def v6_pool(ipamd: Ipamd) -> Iterator[V6Pool]:
    """An IPv6 pool in a random unique local /64 that no route on the host overlaps."""
    host_networks = _host_ipv6_networks()
    for _ in range(20):
        cidr = ipaddress.IPv6Network(f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}::/64")
        if any(cidr.overlaps(network) for network in host_networks):
            continue
        name = unique_name("pool-")
        gateway = cidr.network_address + 1
        body = {"name": name, "cidr": str(cidr), "gateway": str(gateway)}
        status, payload = ipamd.request("POST", "/v1/pools", body)
        if status == 201:
            break
        assert payload.get("code") == "pool_overlap", payload
    else:
        raise AssertionError("no free IPv6 /64 for a test pool after 20 tries")
    try:
        yield V6Pool(name=name, cidr=cidr)
    finally:
        release_pool(ipamd, name)


def dual_config(network: Network, v6: V6Pool, **extra: object) -> dict[str, object]:
    config = network.config(**extra)
    config["pools"] = [config.pop("pool"), v6.name]
    return config


def ping_until(*args: str, attempts: int = 10) -> subprocess.CompletedProcess[str]:
    # A new IPv6 address is tentative until duplicate address detection ends.
    for _ in range(attempts):
        done = subprocess.run(
            ["ping", "-c", "1", "-W", "1", *args], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            break
        time.sleep(0.5)
    return done


def held_by(ipamd: Ipamd, pools: list[str], container_id: str) -> list[str]:
    return [
        lease["address"]
        for pool in pools
        for lease in ipamd.leases(pool)
        if lease["owner"]["containerID"] == container_id
    ]


def test_dual_stack_static_addresses(
    network: Network, v6_pool: V6Pool, ipamd: Ipamd, make_netns: Callable[[], str]
) -> None:
    v4 = network.pool
    pools = [v4.name, v6_pool.name]
    v4_address = v4.cidr.network_address + 50
    v6_address = v6_pool.cidr.network_address + 0x50

    # podman sends bare addresses in runtimeConfig.ips when there are two or more.
    namespace = make_netns()
    config = dual_config(
        network, v6_pool, runtimeConfig={"ips": [str(v6_address), str(v4_address)]}
    )
    added = network.run("ADD", "pod-static", f"/run/netns/{namespace}", config=config)
    assert added.exit_code == 0, added
    addresses = [item["address"] for item in added.json["ips"]]
    assert addresses == [f"{v4_address}/24", f"{v6_address}/64"]
    pod_addresses = ip("-n", namespace, "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{v4_address}/24" in pod_addresses
    assert f"{v6_address}/64" in pod_addresses
    assert ping_until("-I", network.bridge, str(v4_address)).returncode == 0
    assert ping_until("-6", "-I", network.bridge, str(v6_address)).returncode == 0

    # CNI_ARGS IP=a,b (podman and CRI-O) requests both as well.
    other = make_netns()
    other_v4 = v4.cidr.network_address + 51
    other_v6 = v6_pool.cidr.network_address + 0x51
    added_other = network.run(
        "ADD",
        "pod-args",
        f"/run/netns/{other}",
        config=dual_config(network, v6_pool),
        cni_args=f"IgnoreUnknown=1;IP={other_v4},{other_v6}",
    )
    assert added_other.exit_code == 0, added_other
    assert [item["address"] for item in added_other.json["ips"]] == [
        f"{other_v4}/24",
        f"{other_v6}/64",
    ]

    # A taken IPv6 address fails the whole ADD: no IPv4 lease, no interface.
    loser = make_netns()
    free_v4 = v4.cidr.network_address + 52
    clashing = dual_config(network, v6_pool, runtimeConfig={"ips": [str(free_v4), str(v6_address)]})
    rejected = network.run("ADD", "pod-loser", f"/run/netns/{loser}", config=clashing)
    assert rejected.exit_code != 0
    error = json.loads(rejected.stdout)
    assert error["code"] == 100
    assert str(v6_address) in error["msg"]
    assert held_by(ipamd, pools, "pod-loser") == []
    assert not link_exists("eth0", loser)

    for container_id, netns in (("pod-static", namespace), ("pod-args", other)):
        deleted = network.run("DEL", container_id, f"/run/netns/{netns}", config=config)
        assert deleted.exit_code == 0, deleted
        assert held_by(ipamd, pools, container_id) == []
