"""STATUS 51: find the host links that this network's live attachments hang off
and report those that are missing or down.

A pod of the bridge driver needs its bridge to exist. A macvlan or ipvlan pod
needs its master to exist and be up. Which links count comes from the driver and
options that each bound lease recorded at confirm, so a changed attach
profile does not hide the links of older pods. Other drivers are not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pyroute2 import AsyncIPRoute

from leasewire.cni.ipamclient import NodeLease
from leasewire.drivers.base import DriverError
from leasewire.drivers.bridge_options import parse_options as parse_bridge_options
from leasewire.drivers.netlink import find_link
from leasewire.drivers.podnet import is_up
from leasewire.drivers.sublink import parse_master

logger = logging.getLogger(__name__)


def needed_links(leases: Iterable[NodeLease]) -> dict[str, str]:
    """Return {host link name: what it is} for the attachments of ``leases``.

    The value is the link's role, e.g. "bridge" or "macvlan master". A master
    must also be up, a bridge only exist.
    """
    links: dict[str, str] = {}
    for lease in leases:
        try:
            if lease.driver == "bridge":
                links.setdefault(parse_bridge_options(lease.options).bridge, "bridge")
            elif lease.driver in ("macvlan", "ipvlan"):
                links.setdefault(parse_master(lease.options), f"{lease.driver} master")
        except DriverError as error:
            # A lease whose recorded options no longer parse names no link to check.
            logger.debug("Skipped the options of lease %s: %s", lease.address, error)
    return links


async def link_problems(links: dict[str, str]) -> list[str]:
    """Return one sentence per link of ``links`` that is missing, or a master that is down."""
    problems: list[str] = []
    async with AsyncIPRoute() as ipr:
        for name, role in sorted(links.items()):
            link = await find_link(ipr, name)
            if link is None:
                problems.append(f"{role} {name!r} does not exist")
            elif role != "bridge" and not is_up(link):
                problems.append(f"{role} {name!r} is down")
    return problems
