"""The SR-IOV driver: the pod gets a virtual function (VF) of a physical NIC.

The VF's network interface moves into the pod's namespace and takes CNI_IFNAME;
its MAC, VLAN, trust, spoof check, link state and TX rates are set through the
physical function (PF), where the pod cannot change them. Detach restores the
VF's original name, MAC and PF-side settings and moves it back to the node's
namespace. When the pod's namespace is already gone, the kernel has moved
the interface back to the initial namespace by itself (possibly still named
like the pod interface), and detach finds it by its PCI address.

Network configuration keys read by this driver:

- ``deviceID`` (or ``pciBusID``): PCI address of the VF, e.g. ``0000:3b:02.1``,
  as the SR-IOV device plugin and Multus pass it.
- ``pf``: PF network interface to take a free VF from when no deviceID is given.
- ``mac``: MAC address for the VF (a MAC requested by the runtime wins).
- ``vlan`` (0-4094, 0 = none) and ``vlanQoS`` (0-7): VLAN the PF tags the VF's traffic with.
- ``spoofChk``, ``trust``: booleans set through the PF.
- ``linkState``: ``auto``, ``enable`` or ``disable``.
- ``minTxRate``, ``maxTxRate``: TX rate limits in Mbit/s (0 = none).
- ``sysfsRoot`` (default ``/sys``) and ``stateDir`` (default ``/run/leasewire/sriov``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from leasewire.drivers.announce import announce_addresses
from leasewire.drivers.base import (
    AttachedInterface,
    Attachment,
    AttachRequest,
    CheckFailedError,
    CheckRequest,
    DetachRequest,
    DeviceInUseError,
    Driver,
    DriverError,
    InterfaceExistsError,
    InvalidOptionError,
    NamespaceNotFoundError,
)
from leasewire.drivers.netlink import find_link, link_mac, netlink_step, open_netns
from leasewire.drivers.podnet import (
    check_pod_link,
    configure_pod_link,
    require_host_link_up,
)
from leasewire.drivers.sriov_options import SriovOptions, parse_options
from leasewire.drivers.sriov_pf import read_vf_settings, restore_vf_settings, set_vf_settings
from leasewire.drivers.sriov_state import DEFAULT_STATE_DIR, VfRecord, VfStore
from leasewire.drivers.sriov_sysfs import (
    DEFAULT_SYSFS_ROOT,
    USERSPACE_DRIVERS,
    Sysfs,
    SysfsError,
    VirtualFunction,
)

logger = logging.getLogger(__name__)


class SriovDriver(Driver):
    name: ClassVar[str] = "sriov"

    def __init__(
        self, sysfs_root: str = DEFAULT_SYSFS_ROOT, state_dir: str = DEFAULT_STATE_DIR
    ) -> None:
        self._sysfs_root = sysfs_root
        self._state_dir = state_dir
        # Serialises choosing and claiming a VF within this daemon.
        self._lock = asyncio.Lock()

    def _options(self, options: Mapping[str, object]) -> SriovOptions:
        return parse_options(options, self._sysfs_root, self._state_dir)

    def validate(self, options: Mapping[str, object]) -> None:
        self._options(options)

    async def attach(self, request: AttachRequest) -> Attachment:
        options = self._options(request.options)
        sysfs = Sysfs(options.sysfs_root)
        store = VfStore(options.state_dir)

        async with AsyncIPRoute() as ipr, open_netns(request.netns) as pod:
            if await find_link(pod, request.ifname) is not None:
                raise InterfaceExistsError(
                    f"interface {request.ifname!r} already exists in {request.netns!r}"
                )
            async with self._lock:
                vf = self._choose_vf(sysfs, store, options)
                assert vf.netdev is not None
                netdev = await find_link(ipr, vf.netdev)
                pf = await find_link(ipr, vf.pf)
                if netdev is None or pf is None:
                    raise DriverError(
                        f"VF {vf.pci_address} ({vf.netdev}) or its PF {vf.pf} vanished"
                    )
                record = VfRecord(
                    pci_address=vf.pci_address,
                    pf=vf.pf,
                    vf_index=vf.index,
                    container_id=request.container_id,
                    ifname=request.ifname,
                    netns=request.netns,
                    original_name=vf.netdev,
                    original_mac=link_mac(netdev),
                    original=await read_vf_settings(ipr, pf["index"], vf.index),
                )
                existing = store.claim(record)
                if existing is not None:
                    raise DeviceInUseError(
                        f"VF {vf.pci_address} is in use by {existing.holder}", existing.holder
                    )

            try:
                mac = request.mac or options.mac
                await set_vf_settings(ipr, pf["index"], vf, options, mac)
                pod_link = await self._move_into_pod(ipr, pod, netdev, vf, request, mac)
            except BaseException:
                await self._restore(record, sysfs, store)
                raise

        await announce_addresses(
            request.netns,
            request.ifname,
            link_mac(pod_link),
            [item.address.ip for item in request.addresses()],
        )
        logger.info(
            "Attached VF %s (PF %s vf %d) as %s in %s",
            vf.pci_address,
            vf.pf,
            vf.index,
            request.ifname,
            request.netns,
        )
        return Attachment(
            interfaces=(
                AttachedInterface(
                    name=request.ifname,
                    mac=link_mac(pod_link),
                    sandbox=request.netns,
                    pci_id=vf.pci_address,
                ),
            ),
            pod_interface=0,
        )

    async def detach(self, request: DetachRequest) -> None:
        # Only the paths count here: a DEL must succeed even with options that
        # attach would reject, because the record says what to undo.
        state_dir = request.options.get("stateDir", self._state_dir)
        sysfs_root = request.options.get("sysfsRoot", self._sysfs_root)
        store = VfStore(state_dir if isinstance(state_dir, str) else self._state_dir)
        record = store.find_owner(request.container_id, request.ifname)
        if record is None:
            logger.debug("No VF recorded for %s/%s", request.container_id, request.ifname)
            return
        sysfs = Sysfs(sysfs_root if isinstance(sysfs_root, str) else self._sysfs_root)
        await self._restore(record, sysfs, store, netns=request.netns)

    async def check(self, request: CheckRequest) -> None:
        options = self._options(request.options)
        record = VfStore(options.state_dir).find_owner(request.container_id, request.ifname)
        if record is None:
            raise CheckFailedError(f"no VF is recorded for {request.ifname!r} in {request.netns!r}")
        await require_host_link_up(record.pf, f"PF {record.pf!r} of VF {record.pci_address}")
        async with open_netns(request.netns) as pod:
            link = await check_pod_link(
                pod, ifname=request.ifname, netns=request.netns, addresses=request.addresses()
            )
        parent = link.get("IFLA_PARENT_DEV_NAME")
        if parent is not None and parent != record.pci_address:
            raise CheckFailedError(
                f"interface {request.ifname!r} in {request.netns!r} is PCI device {parent}, "
                f"not VF {record.pci_address}"
            )

    def _choose_vf(self, sysfs: Sysfs, store: VfStore, options: SriovOptions) -> VirtualFunction:
        """Return the requested VF, or the first free VF of the PF; raise if unusable."""
        if options.device_id is not None:
            try:
                vf = sysfs.virtual_function(options.device_id)
            except SysfsError as error:
                raise InvalidOptionError("deviceID", options.device_id, str(error)) from None
            self._ensure_usable(vf, store)
            return vf

        assert options.pf is not None
        try:
            candidates = sysfs.virtual_functions(options.pf)
        except (SysfsError, OSError) as error:
            raise InvalidOptionError("pf", options.pf, str(error)) from None
        for vf in candidates:
            if vf.netdev is not None and store.read(vf.pci_address) is None:
                return vf
        raise DriverError(
            f"PF {options.pf!r} has no free VF: all {len(candidates)} are in use or have no "
            "network interface; raise sriov_numvfs or free a VF"
        )

    def _ensure_usable(self, vf: VirtualFunction, store: VfStore) -> None:
        record = store.read(vf.pci_address)
        if record is not None:
            raise DeviceInUseError(
                f"VF {vf.pci_address} is in use by {record.holder}", record.holder
            )
        if vf.netdev is not None:
            return
        if vf.driver is None:
            raise DriverError(
                f"VF {vf.pci_address} is bound to no driver, so it has no network interface; "
                "bind it to its kernel driver (e.g. igbvf, iavf, mlx5_core)"
            )
        if vf.driver in USERSPACE_DRIVERS:
            raise DriverError(
                f"VF {vf.pci_address} is bound to the userspace driver {vf.driver!r} and has no "
                "network interface; bind it to its kernel driver to attach it with leasewire"
            )
        raise DeviceInUseError(
            f"VF {vf.pci_address} (driver {vf.driver}) has no network interface in this "
            "namespace: the interface is in another network namespace",
            "an unknown network namespace",
        )

    async def _move_into_pod(
        self,
        ipr: Any,
        pod: Any,
        netdev: Any,
        vf: VirtualFunction,
        request: AttachRequest,
        mac: str | None,
    ) -> Any:
        index = netdev["index"]
        with netlink_step(f"set VF interface {vf.netdev!r} down"):
            await ipr.link("set", index=index, state="down")
        if mac is not None and link_mac(netdev) != mac.lower():
            with netlink_step(f"set MAC {mac} on VF interface {vf.netdev!r}"):
                await ipr.link("set", index=index, address=mac)
        with netlink_step(f"move VF interface {vf.netdev!r} into {request.netns!r}"):
            fd = os.open(request.netns, os.O_RDONLY)
            try:
                await ipr.link("set", index=index, net_ns_fd=fd)
            finally:
                os.close(fd)
        with netlink_step(f"rename VF interface {vf.netdev!r} to {request.ifname!r}"):
            (link,) = await pod.link("get", ifname=vf.netdev)
            await pod.link("set", index=link["index"], ifname=request.ifname)
        return await configure_pod_link(
            pod,
            link["index"],
            ifname=request.ifname,
            netns=request.netns,
            addresses=request.addresses(),
            mtu=request.mtu,
        )

    async def _restore(
        self, record: VfRecord, sysfs: Sysfs, store: VfStore, netns: str = ""
    ) -> None:
        """Move the VF back, restore its name, MAC and PF-side settings, and drop the record."""
        async with AsyncIPRoute() as ipr:
            await self._return_netdev(ipr, record, sysfs, netns or record.netns)
            netdev = await self._find_host_netdev(ipr, record, sysfs)
            if netdev is None:
                raise DriverError(
                    f"VF {record.pci_address} has no network interface in the node's namespace "
                    "after detach; check its driver"
                )
            index = netdev["index"]
            with netlink_step(f"set VF interface {netdev.get('IFLA_IFNAME')!r} down"):
                await ipr.link("set", index=index, state="down")
            pf = await find_link(ipr, record.pf)
            if pf is None:
                raise DriverError(f"PF {record.pf!r} of VF {record.pci_address} does not exist")
            await restore_vf_settings(ipr, pf["index"], record)
            await self._restore_name_and_mac(ipr, index, record)
        store.release(record.pci_address)
        logger.info(
            "Returned VF %s as %s (was %s of %s)",
            record.pci_address,
            record.original_name,
            record.ifname,
            record.container_id,
        )

    async def _return_netdev(self, ipr: Any, record: VfRecord, sysfs: Sysfs, netns: str) -> None:
        if not netns or sysfs.netdevs(record.pci_address):
            return
        try:
            async with open_netns(netns) as pod:
                link = await find_link(pod, record.ifname)
                if link is None:
                    return
                parent = link.get("IFLA_PARENT_DEV_NAME")
                if parent is not None and parent != record.pci_address:
                    logger.warning(
                        "Left %s in %s alone: it is PCI device %s, not VF %s",
                        record.ifname,
                        netns,
                        parent,
                        record.pci_address,
                    )
                    return
                with netlink_step(f"move {record.ifname!r} from {netns!r} back to the node"):
                    await pod.link("set", index=link["index"], state="down")
                    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
                    try:
                        await pod.link("set", index=link["index"], net_ns_fd=fd)
                    finally:
                        os.close(fd)
        except NamespaceNotFoundError:
            # The kernel moved the interface to the initial namespace with the netns.
            logger.debug("Netns %s is gone; VF %s is back on the node", netns, record.pci_address)

    async def _find_host_netdev(self, ipr: Any, record: VfRecord, sysfs: Sysfs) -> Any:
        for name in sysfs.netdevs(record.pci_address):
            link = await find_link(ipr, name)
            if link is not None:
                return link
        # A sysfs tree of a test, or one mounted from another namespace: ask netlink.
        async for link in await ipr.link("dump"):
            if link.get("IFLA_PARENT_DEV_NAME") == record.pci_address:
                return link
        return None

    async def _restore_name_and_mac(self, ipr: Any, index: int, record: VfRecord) -> None:
        (link,) = await ipr.link("get", index=index)
        name = link.get("IFLA_IFNAME")
        if name != record.original_name:
            try:
                await ipr.link("set", index=index, ifname=record.original_name)
            except NetlinkError as error:
                logger.warning(
                    "Could not rename VF %s from %s back to %s: %s",
                    record.pci_address,
                    name,
                    record.original_name,
                    os.strerror(error.code),
                )
        if link_mac(link) != record.original_mac:
            try:
                await ipr.link("set", index=index, address=record.original_mac)
            except NetlinkError as error:
                logger.warning(
                    "Could not restore MAC %s on VF %s: %s",
                    record.original_mac,
                    record.pci_address,
                    os.strerror(error.code),
                )
