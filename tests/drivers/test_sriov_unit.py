"""SR-IOV VF lookup and refusals on a fake sysfs tree; the real VF test runs in tests/vm."""

from __future__ import annotations

import os
import re
from ipaddress import ip_interface
from pathlib import Path

import pytest

from leasewire.drivers.base import (
    AttachRequest,
    DetachRequest,
    DeviceInUseError,
    DriverError,
    InvalidOptionError,
)
from leasewire.drivers.sriov import SriovDriver
from leasewire.drivers.sriov_state import VfRecord, VfSettings, VfStore
from leasewire.drivers.sriov_sysfs import Sysfs

from .conftest import ROOT_ONLY, Namespaces

PF = "0000:01:00.0"
VF_KERNEL = "0000:01:10.0"
VF_USERSPACE = "0000:01:10.2"
VF_UNBOUND = "0000:01:10.4"


def make_sysfs(root: Path) -> Path:
    """Build a PF "ens9" with three VFs: one with a netdev, one on vfio-pci, one unbound."""
    devices = root / "bus" / "pci" / "devices"
    drivers = root / "bus" / "pci" / "drivers"
    for name in ("igb", "igbvf", "vfio-pci"):
        (drivers / name).mkdir(parents=True)
    (devices / PF / "net" / "ens9").mkdir(parents=True)
    os.symlink(drivers / "igb", devices / PF / "driver")
    for index, (address, driver, netdev) in enumerate(
        [(VF_KERNEL, "igbvf", "ens9v0"), (VF_USERSPACE, "vfio-pci", None), (VF_UNBOUND, None, None)]
    ):
        (devices / address).mkdir()
        os.symlink(f"../{PF}", devices / address / "physfn")
        os.symlink(f"../{address}", devices / PF / f"virtfn{index}")
        if driver is not None:
            os.symlink(drivers / driver, devices / address / "driver")
        if netdev is not None:
            (devices / address / "net" / netdev).mkdir(parents=True)
    (root / "class" / "net" / "ens9").mkdir(parents=True)
    os.symlink(devices / PF, root / "class" / "net" / "ens9" / "device")
    return root


def test_sysfs_lists_virtual_functions(tmp_path: Path) -> None:
    sysfs = Sysfs(str(make_sysfs(tmp_path)))
    vfs = sysfs.virtual_functions("ens9")
    assert [vf.pci_address for vf in vfs] == [VF_KERNEL, VF_USERSPACE, VF_UNBOUND]
    assert [vf.index for vf in vfs] == [0, 1, 2]
    assert [vf.driver for vf in vfs] == ["igbvf", "vfio-pci", None]
    assert [vf.netdev for vf in vfs] == ["ens9v0", None, None]
    assert {vf.pf for vf in vfs} == {"ens9"}


def test_sysfs_rejects_non_vf(tmp_path: Path) -> None:
    sysfs = Sysfs(str(make_sysfs(tmp_path)))
    with pytest.raises(Exception, match="not an SR-IOV virtual function"):
        sysfs.virtual_function(PF)
    with pytest.raises(Exception, match=re.escape("no PCI device 0000:09:00.0")):
        sysfs.virtual_function("0000:09:00.0")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "deviceID"),
        ({"deviceID": "3b:02.1"}, "deviceID"),
        ({"pciBusID": "nonsense"}, "pciBusID"),
        ({"pf": "ens9", "vlan": 4095}, "vlan"),
        ({"pf": "ens9", "vlanQoS": 8}, "vlanQoS"),
        ({"pf": "ens9", "trust": "on"}, "trust"),
        ({"pf": "ens9", "linkState": "up"}, "linkState"),
        ({"pf": "ens9", "minTxRate": 100, "maxTxRate": 10}, "minTxRate"),
    ],
)
def test_sriov_rejects_option(options: dict[str, object], key: str) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        SriovDriver().validate(options)
    assert caught.value.key == key


def attach_request(netns: str, options: dict[str, object]) -> AttachRequest:
    return AttachRequest(
        container_id="sriov-unit",
        netns=netns,
        ifname="net1",
        address=ip_interface("10.218.0.5/24"),
        gateway=None,
        mtu=1500,
        options=options,
    )


@ROOT_ONLY
async def test_sriov_refuses_unusable_vfs(tmp_path: Path, spaces: Namespaces) -> None:
    root = make_sysfs(tmp_path / "sys")
    state = tmp_path / "state"
    driver = SriovDriver(sysfs_root=str(root), state_dir=str(state))
    netns = spaces.netns()

    with pytest.raises(DriverError, match="userspace driver 'vfio-pci'"):
        await driver.attach(attach_request(netns, {"deviceID": VF_USERSPACE}))
    with pytest.raises(DriverError, match="bound to no driver"):
        await driver.attach(attach_request(netns, {"deviceID": VF_UNBOUND}))
    with pytest.raises(InvalidOptionError, match=re.escape("no PCI device 0000:02:00.1")):
        await driver.attach(attach_request(netns, {"deviceID": "0000:02:00.1"}))

    settings = VfSettings(
        mac="00:00:00:00:00:00",
        vlan=0,
        qos=0,
        trust=False,
        spoof_check=True,
        link_state=0,
        min_tx_rate=0,
        max_tx_rate=0,
    )
    VfStore(str(state)).claim(
        VfRecord(
            pci_address=VF_KERNEL,
            pf="ens9",
            vf_index=0,
            container_id="holder-pod",
            ifname="net7",
            netns="/run/netns/holder",
            original_name="ens9v0",
            original_mac="02:00:00:00:00:01",
            original=settings,
        )
    )
    with pytest.raises(DeviceInUseError) as caught:
        await driver.attach(attach_request(netns, {"deviceID": VF_KERNEL}))
    assert "holder-pod" in str(caught.value)
    assert "net7" in caught.value.holder
    # The only VF with a netdev is taken, so the PF has no free VF.
    with pytest.raises(DriverError, match="PF 'ens9' has no free VF"):
        await driver.attach(attach_request(netns, {"pf": "ens9"}))

    # DEL of an owner without a record has nothing to undo, whatever the options.
    await driver.detach(
        DetachRequest(container_id="other", netns="", ifname="net1", options={"pf": "ens9"})
    )
    await driver.detach(DetachRequest(container_id="other", netns="", ifname="net1", options={}))
    assert VfStore(str(state)).read(VF_KERNEL) is not None
