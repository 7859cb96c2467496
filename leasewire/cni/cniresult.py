"""CNI results: build the ADD result, render it for the requested version, and
read the previous result that CHECK gets back. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import ip_address, ip_interface

from leasewire.cni.cniconfig import ERR_CHECK_FAILED, ERR_INVALID_CONFIG, CniError, NetworkConfig
from leasewire.drivers.base import AttachedInterface, IPAddress, IPInterface

# Versions whose results tag every IP with "version": "4" or "6".
VERSIONS_WITH_IP_VERSION = frozenset({"0.3.0", "0.3.1", "0.4.0"})


@dataclass(frozen=True, kw_only=True)
class ResultIP:
    address: IPInterface
    gateway: IPAddress | None
    # Index into the result's interfaces.
    interface: int


@dataclass(frozen=True, kw_only=True)
class ResultRoute:
    dst: str
    gateway: IPAddress | None


@dataclass(frozen=True, kw_only=True)
class CniResult:
    interfaces: tuple[AttachedInterface, ...]
    ips: tuple[ResultIP, ...]
    routes: tuple[ResultRoute, ...]


def default_route(gateway: IPAddress) -> ResultRoute:
    return ResultRoute(dst="0.0.0.0/0" if gateway.version == 4 else "::/0", gateway=gateway)


def render_result(result: CniResult, version: str) -> dict[str, object]:
    """Return the result as the JSON object of CNI ``version``.

    0.3.x and 0.4.0 results carry "version" on each IP; 1.x results do not.
    Empty optional keys are left out, as the Go types do.
    """
    interfaces: list[dict[str, object]] = []
    for interface in result.interfaces:
        item: dict[str, object] = {"name": interface.name, "mac": interface.mac}
        if interface.sandbox is not None:
            item["sandbox"] = interface.sandbox
        interfaces.append(item)

    ips: list[dict[str, object]] = []
    for ip in result.ips:
        entry: dict[str, object] = {}
        if version in VERSIONS_WITH_IP_VERSION:
            entry["version"] = str(ip.address.version)
        entry["address"] = str(ip.address)
        if ip.gateway is not None:
            entry["gateway"] = str(ip.gateway)
        entry["interface"] = ip.interface
        ips.append(entry)

    routes: list[dict[str, object]] = []
    for route in result.routes:
        item = {"dst": route.dst}
        if route.gateway is not None:
            item["gw"] = str(route.gateway)
        routes.append(item)

    rendered: dict[str, object] = {"cniVersion": version, "interfaces": interfaces, "ips": ips}
    if routes:
        rendered["routes"] = routes
    return rendered


def format_result(result: CniResult, version: str) -> str:
    return json.dumps(render_result(result, version)) + "\n"


@dataclass(frozen=True, kw_only=True)
class PreviousAddress:
    address: IPInterface
    gateway: IPAddress | None


def previous_address(config: NetworkConfig, ifname: str, netns: str) -> PreviousAddress:
    """Find the pod interface's address in the configuration's prevResult.

    Raises ERR_INVALID_CONFIG when prevResult is missing or unreadable, and
    ERR_CHECK_FAILED when it names another sandbox than CNI_NETNS.
    """
    previous = config.raw.get("prevResult")
    if not isinstance(previous, dict):
        raise CniError(
            ERR_INVALID_CONFIG, "required prevResult missing: CHECK needs the ADD result"
        )
    interfaces = previous.get("interfaces", [])
    ips = previous.get("ips")
    if not isinstance(interfaces, list) or not isinstance(ips, list) or not ips:
        raise CniError(ERR_INVALID_CONFIG, "prevResult has no 'ips' list")

    for entry in ips:
        if not isinstance(entry, dict):
            continue
        index = entry.get("interface")
        if not isinstance(index, int) or not 0 <= index < len(interfaces):
            continue
        interface = interfaces[index]
        if not isinstance(interface, dict) or interface.get("name") != ifname:
            continue
        if interface.get("sandbox") != netns:
            raise CniError(
                ERR_CHECK_FAILED,
                f"prevResult puts {ifname!r} in sandbox {interface.get('sandbox')!r}, "
                f"not in CNI_NETNS {netns!r}",
            )
        try:
            address = ip_interface(entry["address"])
            gateway = ip_address(entry["gateway"]) if entry.get("gateway") else None
        except (KeyError, TypeError, ValueError):
            raise CniError(
                ERR_INVALID_CONFIG, f"prevResult has an unreadable IP entry: {entry!r}"
            ) from None
        return PreviousAddress(address=address, gateway=gateway)

    raise CniError(ERR_INVALID_CONFIG, f"prevResult has no address for interface {ifname!r}")
