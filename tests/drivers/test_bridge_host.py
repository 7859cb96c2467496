"""The bridge driver on this host's kernel: dual-stack pods, hairpin, promiscuous mode, MTU."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface

import pytest

from leasewire.drivers.base import (
    AttachRequest,
    CheckRequest,
    DetachRequest,
    InvalidOptionError,
    PodAddress,
)
from leasewire.drivers.bridge import BridgeDriver

from .conftest import ROOT_ONLY, Namespaces, in_netns, ping, run, sysfs_value, unique_name

pytestmark = ROOT_ONLY

V4_GATEWAY = "10.213.7.1"
V6_GATEWAY = "fd00:213:7::1"


def request(netns: str, index: int, options: dict[str, object], mtu: int = 1400) -> AttachRequest:
    return AttachRequest(
        container_id=f"bridge-pod-{index}",
        netns=netns,
        ifname="eth0",
        address=ip_interface(f"10.213.7.{10 + index}/24"),
        gateway=ip_address(V4_GATEWAY),
        mtu=mtu,
        options=options,
        extra_addresses=(
            PodAddress(
                address=ip_interface(f"fd00:213:7::{10 + index}/64"),
                gateway=ip_address(V6_GATEWAY),
            ),
        ),
    )


async def test_bridge_dual_stack_hairpin_promisc(spaces: Namespaces) -> None:
    bridge = spaces.host_link(unique_name("lwtb"))
    options: dict[str, object] = {"bridge": bridge, "hairpinMode": True, "promiscMode": True}
    driver = BridgeDriver()
    pods = [spaces.netns(), spaces.netns()]

    attachments = [await driver.attach(request(netns, i, options)) for i, netns in enumerate(pods)]

    # Reachable at once: no wait for IPv6 duplicate address detection.
    assert ping(pods[0], "fd00:213:7::11")
    assert ping(pods[0], V6_GATEWAY)
    assert ping(pods[1], "10.213.7.10")
    assert ping(pods[1], V4_GATEWAY)
    addresses = in_netns(pods[0], "ip", "-6", "addr", "show", "dev", "eth0").stdout
    (global_line,) = [line for line in addresses.splitlines() if "fd00:213:7::10/64" in line]
    assert "tentative" not in global_line

    host_veth = attachments[0].interfaces[1].name
    assert sysfs_value(f"/sys/class/net/{host_veth}/brport/hairpin_mode") == "1"
    assert int(sysfs_value(f"/sys/class/net/{bridge}/flags"), 16) & 0x100
    assert sysfs_value(f"/sys/class/net/{bridge}/mtu") == "1400"
    assert sysfs_value(f"/sys/class/net/{host_veth}/mtu") == "1400"
    assert "mtu 1400" in in_netns(pods[0], "ip", "link", "show", "eth0").stdout
    bridge_addresses = run("ip", "addr", "show", "dev", bridge)
    assert f"{V4_GATEWAY}/24" in bridge_addresses
    assert f"{V6_GATEWAY}/64" in bridge_addresses

    attach = request(pods[0], 0, options)
    await driver.check(
        CheckRequest(
            container_id=attach.container_id,
            netns=attach.netns,
            ifname="eth0",
            address=attach.address,
            gateway=attach.gateway,
            options=options,
            extra_addresses=attach.extra_addresses,
        )
    )

    for i, netns in enumerate(pods):
        await driver.detach(
            DetachRequest(
                container_id=f"bridge-pod-{i}", netns=netns, ifname="eth0", options=options
            )
        )
    assert in_netns(pods[0], "ip", "link", "show", "eth0").returncode != 0


@pytest.mark.parametrize(
    ("key", "value"),
    [("vlan", 0), ("vlan", 4095), ("vlan", "10"), ("hairpinMode", "yes"), ("promiscMode", 1)],
)
def test_bridge_rejects_option(key: str, value: object) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        BridgeDriver().validate({key: value})
    assert caught.value.key == key
    assert repr(value) in str(caught.value)
