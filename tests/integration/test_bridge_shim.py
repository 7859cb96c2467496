"""Pods in real network namespaces, wired by the bridge driver through the real shim,
the node daemon and ipamd."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from leasewire.drivers.netlink import host_veth_name

from .conftest import Network, Pool, ip, link_exists, unique_name
from .daemons import Ipamd

MAC_PATTERN = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def ping(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ping", "-c", "1", "-W", "2", *args], capture_output=True, text=True, check=False
    )


def owned_leases(ipamd: Ipamd, network: Network, container_id: str) -> list[dict[str, object]]:
    return [
        lease
        for lease in ipamd.leases(network.pool.name)
        if lease["owner"] == {"cluster": "itest", "containerID": container_id, "ifname": "eth0"}
    ]


def test_two_pods_reach_each_other_and_node(
    network: Network, ipamd: Ipamd, make_netns: Callable[[], str]
) -> None:
    results = {}
    for container_id in ("pod-a", "pod-b"):
        netns_path = f"/run/netns/{make_netns()}"
        output = network.run("ADD", container_id, netns_path)
        assert output.exit_code == 0, output
        results[container_id] = (netns_path, output.json)

    addresses = {}
    for container_id, (netns_path, result) in results.items():
        assert result["cniVersion"] == "1.0.0"
        bridge, host, pod = result["interfaces"]
        assert bridge["name"] == network.bridge
        assert host["name"] == host_veth_name(container_id, "eth0")
        assert pod == {"name": "eth0", "mac": pod["mac"], "sandbox": netns_path}
        assert all(MAC_PATTERN.match(item["mac"]) for item in result["interfaces"])
        (lease_ip,) = result["ips"]
        assert lease_ip["interface"] == 2
        assert lease_ip["gateway"] == str(network.pool.gateway)
        assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": str(network.pool.gateway)}]
        addresses[container_id] = lease_ip["address"].split("/")[0]

        # The live state matches the result.
        namespace = netns_path.rsplit("/", 1)[1]
        shown = ip("-n", namespace, "-o", "addr", "show", "dev", "eth0").stdout
        assert lease_ip["address"] in shown
        assert pod["mac"] in ip("-n", namespace, "link", "show", "dev", "eth0").stdout
        assert f"master {network.bridge}" in ip("link", "show", "dev", host["name"]).stdout

    assert addresses["pod-a"] != addresses["pod-b"]
    namespace_a = results["pod-a"][0].rsplit("/", 1)[1]
    assert ping_in(namespace_a, addresses["pod-b"]).returncode == 0
    for address in addresses.values():
        assert ping("-I", network.bridge, address).returncode == 0

    leased = {lease["address"] for lease in ipamd.leases(network.pool.name)}
    assert leased == {result["ips"][0]["address"] for _, result in results.values()}


def ping_in(namespace: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "ping", "-c", "1", "-W", "2", address],
        capture_output=True,
        text=True,
        check=False,
    )


def test_del_twice_leaves_nothing(
    network: Network, ipamd: Ipamd, make_netns: Callable[[], str]
) -> None:
    namespace = make_netns()
    netns_path = f"/run/netns/{namespace}"
    assert network.run("ADD", "pod-del", netns_path).exit_code == 0
    assert link_exists(host_veth_name("pod-del", "eth0"))

    for _ in range(2):
        output = network.run("DEL", "pod-del", netns_path)
        assert (output.exit_code, output.stdout) == (0, ""), output

    assert not link_exists(host_veth_name("pod-del", "eth0"))
    assert not link_exists("eth0", namespace)
    assert owned_leases(ipamd, network, "pod-del") == []


def test_del_without_add_succeeds(network: Network, make_netns: Callable[[], str]) -> None:
    output = network.run("DEL", "never-added", f"/run/netns/{make_netns()}")

    assert (output.exit_code, output.stdout) == (0, ""), output


@pytest.mark.parametrize("netns_on_del", ["same-path", "empty"])
def test_del_after_netns_deleted(
    network: Network, ipamd: Ipamd, make_netns: Callable[[], str], netns_on_del: str
) -> None:
    namespace = make_netns()
    netns_path = f"/run/netns/{namespace}"
    assert network.run("ADD", "pod-gone", netns_path).exit_code == 0
    ip("netns", "del", namespace)

    output = network.run("DEL", "pod-gone", netns_path if netns_on_del == "same-path" else "")

    assert (output.exit_code, output.stdout) == (0, ""), output
    assert not link_exists(host_veth_name("pod-gone", "eth0"))
    assert owned_leases(ipamd, network, "pod-gone") == []


def test_add_existing_ifname_leaves_nothing(
    network: Network, ipamd: Ipamd, make_netns: Callable[[], str]
) -> None:
    namespace = make_netns()
    ip("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")

    output = network.run("ADD", "pod-clash", f"/run/netns/{namespace}")

    assert output.exit_code != 0
    assert output.json["code"] == 101
    assert "eth0" in output.json["msg"]
    assert link_exists("eth0", namespace)
    assert not link_exists(host_veth_name("pod-clash", "eth0"))
    assert owned_leases(ipamd, network, "pod-clash") == []
    # The runtime's DEL after a failed ADD succeeds and keeps the foreign eth0.
    assert network.run("DEL", "pod-clash", f"/run/netns/{namespace}").exit_code == 0
    assert link_exists("eth0", namespace)


def test_add_late_failure_releases_lease(
    network: Network, ipamd: Ipamd, make_netns: Callable[[], str]
) -> None:
    # A veth that already has the bridge's name makes attach fail after the lease.
    ip("link", "add", network.bridge, "type", "veth", "peer", "name", unique_name())

    output = network.run("ADD", "pod-late", f"/run/netns/{make_netns()}")

    assert output.exit_code != 0
    assert output.json["code"] == 102
    assert "not a bridge" in output.json["msg"]
    assert not link_exists(host_veth_name("pod-late", "eth0"))
    assert owned_leases(ipamd, network, "pod-late") == []


def test_add_missing_netns_leases_nothing(network: Network, ipamd: Ipamd) -> None:
    output = network.run("ADD", "pod-nons", f"/run/netns/{unique_name()}")

    assert output.exit_code != 0
    assert output.json["code"] == 104
    assert owned_leases(ipamd, network, "pod-nons") == []


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_result_has_requested_version(
    network: Network, make_netns: Callable[[], str], version: str
) -> None:
    network.version = version
    netns_path = f"/run/netns/{make_netns()}"

    output = network.run("ADD", "pod-version", netns_path)

    assert output.exit_code == 0, output
    assert output.json["cniVersion"] == version
    (lease_ip,) = output.json["ips"]
    if version.startswith("0."):
        assert lease_ip["version"] == "4"
    else:
        assert "version" not in lease_ip
    assert network.run("DEL", "pod-version", netns_path).exit_code == 0


def test_check_after_add_and_after_drift(network: Network, make_netns: Callable[[], str]) -> None:
    network.version = "1.1.0"
    namespace = make_netns()
    netns_path = f"/run/netns/{namespace}"
    added = network.run("ADD", "pod-check", netns_path)
    assert added.exit_code == 0, added
    config = network.config(prevResult=added.json)

    output = network.run("CHECK", "pod-check", netns_path, config=config)
    assert (output.exit_code, output.stdout) == (0, ""), output

    ip("-n", namespace, "addr", "flush", "dev", "eth0")
    output = network.run("CHECK", "pod-check", netns_path, config=config)
    assert output.exit_code != 0
    assert output.json["code"] == 103
    assert "does not have address" in output.json["msg"]


def test_concurrent_adds_share_new_bridge(
    network: Network, ipamd: Ipamd, make_netns: Callable[[], str]
) -> None:
    pods = [(f"pod-par{index}", f"/run/netns/{make_netns()}") for index in range(6)]

    with ThreadPoolExecutor(max_workers=len(pods)) as executor:
        outputs = list(executor.map(lambda pod: network.run("ADD", *pod), pods))

    assert [output.exit_code for output in outputs] == [0] * len(pods), outputs
    addresses = {output.json["ips"][0]["address"] for output in outputs}
    assert len(addresses) == len(pods)
    assert len(ipamd.leases(network.pool.name)) == len(pods)


def test_add_into_host_netns_rejected(network: Network, ipamd: Ipamd) -> None:
    # The daemon resolves /proc/self to itself, so this is its own namespace.
    output = network.run("ADD", "pod-host", "/proc/self/ns/net")

    assert output.exit_code != 0
    assert output.json["code"] == 4
    assert "own network namespace" in output.json["msg"]
    assert owned_leases(ipamd, network, "pod-host") == []


def test_add_exhausted_pool_returns_100(
    network: Network, ipamd: Ipamd, make_pool: Callable[..., Pool], make_netns: Callable[[], str]
) -> None:
    # A /30 with a gateway leaves a single address to lease.
    name = make_pool(prefix=30).name
    config = network.config(pool=name)
    first = network.run("ADD", "pod-first", f"/run/netns/{make_netns()}", config=config)
    assert first.exit_code == 0, first

    second = network.run("ADD", "pod-second", f"/run/netns/{make_netns()}", config=config)

    assert second.exit_code != 0
    assert second.json["code"] == 100
    assert "pool_exhausted" in second.json["details"]
    assert not link_exists(host_veth_name("pod-second", "eth0"))
    assert len(ipamd.leases(name)) == 1
