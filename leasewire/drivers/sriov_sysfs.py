"""Read SR-IOV topology from sysfs: physical functions (PF), their virtual functions (VF),
the VFs' PCI addresses, kernel drivers and network interfaces.

Everything is read below a configurable root (normally ``/sys``), so tests can
point it at a tree of their own. A PCI device directory is
``<root>/bus/pci/devices/<address>``; a VF has a ``physfn`` link to its PF, a PF
has one ``virtfn<N>`` link per VF, and ``net/`` lists the device's network
interfaces in the network namespace that mounted that sysfs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SYSFS_ROOT = "/sys"
# Domain:bus:device.function, e.g. 0000:3b:02.1.
PCI_ADDRESS = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
# Drivers that hand a device to user space; such a VF has no network interface.
USERSPACE_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio", "pci-stub"})


class SysfsError(Exception):
    """sysfs does not show what a VF lookup needs; the message names the path."""


@dataclass(frozen=True, kw_only=True)
class VirtualFunction:
    """One VF as sysfs shows it."""

    pci_address: str
    # Network interface of the PF in this namespace, e.g. "ens1f0".
    pf: str
    pf_pci_address: str
    # Index of the VF on its PF: the N of "virtfnN", used by "ip link set PF vf N".
    index: int
    # Kernel driver bound to the VF, None when none is bound.
    driver: str | None
    # Network interface of the VF in this namespace; None when it has none here
    # (userspace driver, no driver, or the interface is in another namespace).
    netdev: str | None


class Sysfs:
    def __init__(self, root: str = DEFAULT_SYSFS_ROOT) -> None:
        self.root = Path(root)

    def device_dir(self, pci_address: str) -> Path:
        return self.root / "bus" / "pci" / "devices" / pci_address

    def netdev_pci_address(self, ifname: str) -> str | None:
        """Return the PCI address behind network interface ``ifname``, None if not a PCI device."""
        device = self.root / "class" / "net" / ifname / "device"
        if not device.exists():
            return None
        return os.path.basename(os.path.realpath(device))

    def driver(self, pci_address: str) -> str | None:
        link = self.device_dir(pci_address) / "driver"
        if not link.exists():
            return None
        return os.path.basename(os.path.realpath(link))

    def netdevs(self, pci_address: str) -> list[str]:
        net = self.device_dir(pci_address) / "net"
        if not net.is_dir():
            return []
        return sorted(entry.name for entry in net.iterdir())

    def virtual_function(self, pci_address: str) -> VirtualFunction:
        """Describe the VF at ``pci_address``; raise SysfsError if there is none."""
        device = self.device_dir(pci_address)
        if not device.exists():
            raise SysfsError(f"no PCI device {pci_address} under {device.parent}")
        physfn = device / "physfn"
        if not physfn.exists():
            raise SysfsError(
                f"PCI device {pci_address} is not an SR-IOV virtual function ({physfn} is missing)"
            )
        pf_pci_address = os.path.basename(os.path.realpath(physfn))
        pf_netdevs = self.netdevs(pf_pci_address)
        if not pf_netdevs:
            raise SysfsError(
                f"the physical function {pf_pci_address} of VF {pci_address} "
                "has no network interface in this namespace"
            )
        index = self._vf_index(pf_pci_address, pci_address)
        netdevs = self.netdevs(pci_address)
        return VirtualFunction(
            pci_address=pci_address,
            pf=pf_netdevs[0],
            pf_pci_address=pf_pci_address,
            index=index,
            driver=self.driver(pci_address),
            netdev=netdevs[0] if netdevs else None,
        )

    def virtual_functions(self, pf: str) -> list[VirtualFunction]:
        """Return the VFs of the PF network interface ``pf``, in VF index order."""
        pf_pci_address = self.netdev_pci_address(pf)
        if pf_pci_address is None:
            raise SysfsError(f"network interface {pf!r} is not a PCI device under {self.root}")
        pf_dir = self.device_dir(pf_pci_address)
        indexes = sorted(
            int(entry.name.removeprefix("virtfn"))
            for entry in pf_dir.iterdir()
            if entry.name.startswith("virtfn")
        )
        return [
            self.virtual_function(os.path.basename(os.path.realpath(pf_dir / f"virtfn{index}")))
            for index in indexes
        ]

    def _vf_index(self, pf_pci_address: str, pci_address: str) -> int:
        pf_dir = self.device_dir(pf_pci_address)
        for entry in pf_dir.iterdir():
            if entry.name.startswith("virtfn") and (
                os.path.basename(os.path.realpath(entry)) == pci_address
            ):
                return int(entry.name.removeprefix("virtfn"))
        raise SysfsError(f"VF {pci_address} is not listed as a virtfn of {pf_pci_address}")
