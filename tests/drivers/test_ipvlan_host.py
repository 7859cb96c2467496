"""The ipvlan driver on this host's kernel: real pods where the kernel has ipvlan,
otherwise a clear error and nothing left behind. tests/vm runs it on a kernel
that has ipvlan in any case."""

from __future__ import annotations

import subprocess
from ipaddress import ip_interface

import pytest

from leasewire.drivers.base import AttachRequest, DetachRequest, DriverError, InvalidOptionError
from leasewire.drivers.ipvlan import IpvlanDriver

from .conftest import ROOT_ONLY, Namespaces, in_netns, ping, run, unique_name

pytestmark = ROOT_ONLY


def kernel_has_ipvlan(master: str) -> bool:
    probe = unique_name("lwti")
    created = subprocess.run(
        ["ip", "link", "add", "link", master, "name", probe, "type", "ipvlan"],
        capture_output=True,
        check=False,
    )
    subprocess.run(["ip", "link", "del", probe], capture_output=True, check=False)
    return created.returncode == 0


def request(netns: str, index: int, master: str, mac: str | None = None) -> AttachRequest:
    return AttachRequest(
        container_id=f"ipvlan-host-{index}",
        netns=netns,
        ifname="eth0",
        address=ip_interface(f"10.219.1.{10 + index}/24"),
        gateway=None,
        mtu=1500,
        options={"master": master, "mode": "l2"},
        mac=mac,
    )


async def test_ipvlan_on_host_kernel(spaces: Namespaces) -> None:
    master, _peer = spaces.veth_pair()
    pods = [spaces.netns(), spaces.netns()]
    driver = IpvlanDriver()

    if not kernel_has_ipvlan(master):
        with pytest.raises(DriverError) as caught:
            await driver.attach(request(pods[0], 0, master))
        assert "no ipvlan support" in str(caught.value)
        assert "modprobe ipvlan" in str(caught.value)
        assert f"@{master}" not in run("ip", "link", "show", "type", "ipvlan")
        return

    attachments = [await driver.attach(request(netns, i, master)) for i, netns in enumerate(pods)]
    master_mac = run("cat", f"/sys/class/net/{master}/address").strip()
    assert attachments[0].interfaces[0].mac == master_mac
    assert ping(pods[0], "10.219.1.11")
    await driver.detach(
        DetachRequest(container_id="ipvlan-host-0", netns=pods[0], ifname="eth0", options={})
    )
    assert in_netns(pods[0], "ip", "link", "show", "eth0").returncode != 0


async def test_ipvlan_rejects_requested_mac(spaces: Namespaces) -> None:
    master, _peer = spaces.veth_pair()
    with pytest.raises(InvalidOptionError) as caught:
        await IpvlanDriver().attach(request(spaces.netns(), 0, master, mac="c2:11:22:33:44:55"))
    assert caught.value.key == "mac"


@pytest.mark.parametrize("mode", ["bridge", "L2", 2])
def test_ipvlan_rejects_mode(mode: object) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        IpvlanDriver().validate({"master": "eth0", "mode": mode})
    assert caught.value.key == "mode"
