"""Node side of several requested static addresses: parsing, lease request, CNI error codes."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from leasewire.api import Owner, PodRef
from leasewire.cni.cniconfig import (
    ERR_INVALID_CONFIG,
    ERR_LEASE_REJECTED,
    CniError,
    Command,
    parse_env,
    parse_network_config,
    requested_addresses,
)
from leasewire.cni.errors import to_cni_error
from leasewire.cni.ipamclient import IpamRejectedError, LeaseRequest

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c0ffee02",
    "CNI_NETNS": "/run/netns/cnitest",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/usr/lib/cni",
}
V4 = ip_address("10.22.0.50")
V6 = ip_address("fd00:22::50")


def config(**changes: object) -> str:
    return json.dumps(
        {"cniVersion": "1.0.0", "name": "dual", "type": "leasewire", "pools": ["v4", "v6"]}
        | changes
    )


def addresses_of(cni_args: str = "", **changes: object) -> tuple[object, ...]:
    env = parse_env({**ENV, "CNI_ARGS": cni_args}, Command.ADD)
    return requested_addresses(parse_network_config(config(**changes)), env)


def test_podman_bare_runtime_ips() -> None:
    assert addresses_of(runtimeConfig={"ips": ["10.22.0.50", "fd00:22::50"]}) == (V4, V6)


def test_args_cni_ips_with_prefix() -> None:
    assert addresses_of(args={"cni": {"ips": ["fd00:22::50/64", "10.22.0.50/24"]}}) == (V6, V4)


def test_cni_args_ip_list() -> None:
    assert addresses_of("IgnoreUnknown=1;IP=10.22.0.50,fd00:22::50") == (V4, V6)


def test_runtime_config_wins_over_cni_args() -> None:
    found = addresses_of("IP=10.22.0.9,fd00:22::9", runtimeConfig={"ips": ["10.22.0.50"]})
    assert found == (V4,)


@pytest.mark.parametrize(
    "ips", [["10.22.0.50", "10.22.0.50/24"], ["10.22.0.50", "fd00:22::zz"], [1, 2]]
)
def test_invalid_address_list(ips: object) -> None:
    with pytest.raises(CniError) as caught:
        addresses_of(runtimeConfig={"ips": ips})
    assert caught.value.code == ERR_INVALID_CONFIG
    assert "runtimeConfig.ips" in caught.value.msg


def request(*addresses: str) -> LeaseRequest:
    return LeaseRequest(
        owner=Owner(cluster="c1", containerID="c0ffee02", ifname="eth0"),
        pod=PodRef(),
        node="node-a",
        network="dual",
        pools=("v4", "v6"),
        addresses=addresses,
    )


def test_lease_request_body() -> None:
    # One address keeps the single-address form that older ipamd versions read.
    assert request("10.22.0.50").body()["address"] == "10.22.0.50"
    assert "addresses" not in request("10.22.0.50").body()
    two = request("10.22.0.50", "fd00:22::50").body()
    assert two["addresses"] == ["10.22.0.50", "fd00:22::50"]
    assert "address" not in two
    none = request().body()
    assert "address" not in none
    assert "addresses" not in none


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (409, "address_taken", ERR_LEASE_REJECTED),
        (422, "address_not_allocatable", ERR_LEASE_REJECTED),
        (409, "owner_holds_other_address", ERR_LEASE_REJECTED),
        (409, "no_pool_available", ERR_LEASE_REJECTED),
        (422, "invalid_request", ERR_INVALID_CONFIG),
    ],
)
def test_rejected_address_error_code(status: int, code: str, expected: int) -> None:
    error = to_cni_error(IpamRejectedError(status, code, "address 10.22.0.50 ..."), "http://x")
    assert error.code == expected
    assert code in error.details
