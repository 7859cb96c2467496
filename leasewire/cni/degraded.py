"""STATUS 51: find the host links that this network's live attachments hang off
and report those that are missing or down.

A pod of the bridge driver needs its bridge to exist. A macvlan or ipvlan pod
needs its master to exist and be up, and an SR-IOV pod the physical function
(PF) of its VF. Which links count comes from the driver and options that each
bound lease recorded at confirm, so a changed attach profile does not hide the
links of older pods. Other drivers are not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroute2 import AsyncIPRoute

from leasewire.cni.ipamclient import NodeLease
from leasewire.drivers.base import DriverError
from leasewire.drivers.bridge_options import parse_options as parse_bridge_options
from leasewire.drivers.netlink import find_link
from leasewire.drivers.podnet import is_up
from leasewire.drivers.sriov_options import parse_options as parse_sriov_options
from leasewire.drivers.sriov_state import DEFAULT_STATE_DIR
from leasewire.drivers.sriov_sysfs import DEFAULT_SYSFS_ROOT, Sysfs, SysfsError
from leasewire.drivers.sublink import parse_master

logger = logging.getLogger(__name__)

SRIOV_PF = "SR-IOV PF"


@dataclass
class NeededLinks:
    """Host links that live attachments need, and the attachments whose link has no name."""

    # {host link name: its role, e.g. "bridge" or "macvlan master"}. A bridge
    # must exist, and a link of any other role must also be up.
    links: dict[str, str] = field(default_factory=dict)
    # One sentence per attachment whose host link cannot be found at all, such
    # as an SR-IOV VF that sysfs no longer shows.
    unresolved: list[str] = field(default_factory=list)


def sriov_pf(options: dict[str, object]) -> str:
    """Return the PF network interface of an SR-IOV attachment from its recorded options.

    The VF's PCI address (``deviceID`` or ``pciBusID``) wins over ``pf``, as in
    the driver's attach, and its PF is read from sysfs (the VF's ``physfn``).
    Raises DriverError for unusable options and SysfsError when sysfs does not
    show the VF or a network interface of its PF.
    """
    parsed = parse_sriov_options(options, DEFAULT_SYSFS_ROOT, DEFAULT_STATE_DIR)
    if parsed.device_id is None:
        assert parsed.pf is not None
        return parsed.pf
    return Sysfs(parsed.sysfs_root).virtual_function(parsed.device_id).pf


def needed_links(leases: Iterable[NodeLease]) -> NeededLinks:
    """Collect the host links that the attachments of ``leases`` need."""
    needed = NeededLinks()
    for lease in leases:
        try:
            if lease.driver == "bridge":
                needed.links.setdefault(parse_bridge_options(lease.options).bridge, "bridge")
            elif lease.driver in ("macvlan", "ipvlan"):
                needed.links.setdefault(parse_master(lease.options), f"{lease.driver} master")
            elif lease.driver == "sriov":
                needed.links.setdefault(sriov_pf(lease.options), SRIOV_PF)
        except (SysfsError, OSError) as error:
            # The leases of one dual-stack pod record the same VF: report it once.
            problem = f"the {SRIOV_PF} of an attachment cannot be found: {error}"
            if problem not in needed.unresolved:
                needed.unresolved.append(problem)
        except DriverError as error:
            # A lease whose recorded options no longer parse names no link to check.
            logger.debug("Skipped the options of lease %s: %s", lease.address, error)
    return needed


async def link_problems(needed: NeededLinks) -> list[str]:
    """Return one sentence per needed link that is missing, or that is down but must be up."""
    problems = list(needed.unresolved)
    async with AsyncIPRoute() as ipr:
        for name, role in sorted(needed.links.items()):
            link = await find_link(ipr, name)
            if link is None:
                problems.append(f"{role} {name!r} does not exist")
            elif role != "bridge" and not is_up(link):
                problems.append(f"{role} {name!r} is down")
    return problems
