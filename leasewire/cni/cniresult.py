"""CNI results: build the ADD result, render it for the requested version
(appended to the previous plugins' result when leasewire is not first in a
chain), and read the previous result that CHECK gets back. Pure functions, no I/O.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

from leasewire.cni.cniconfig import ERR_CHECK_FAILED, ERR_INVALID_CONFIG, CniError, NetworkConfig
from leasewire.drivers.base import AttachedInterface, IPAddress, IPInterface

# Versions whose results tag every IP with "version": "4" or "6".
VERSIONS_WITH_IP_VERSION = frozenset({"0.3.0", "0.3.1", "0.4.0"})
# Versions before 1.1.0, whose interfaces have no "pciID".
VERSIONS_WITHOUT_PCI_ID = frozenset({"0.3.0", "0.3.1", "0.4.0", "1.0.0"})


@dataclass(frozen=True, kw_only=True)
class ResultIP:
    address: IPInterface
    gateway: IPAddress | None
    # Index into the result's interfaces.
    interface: int


@dataclass(frozen=True, kw_only=True)
class ResultRoute:
    # Destination CIDR, e.g. "0.0.0.0/0".
    dst: str
    gateway: IPAddress | None


@dataclass(frozen=True, kw_only=True)
class CniResult:
    interfaces: tuple[AttachedInterface, ...]
    ips: tuple[ResultIP, ...]
    routes: tuple[ResultRoute, ...]
    # The "dns" object of the result (nameservers, domain, search, options);
    # empty leaves the key out.
    dns: dict[str, object] = field(default_factory=dict)


def default_route(gateway: IPAddress) -> ResultRoute:
    return ResultRoute(dst="0.0.0.0/0" if gateway.version == 4 else "::/0", gateway=gateway)


def _render_ip(ip: dict[str, Any], version: str) -> dict[str, Any]:
    """Convert one "ips" entry to the shape of ``version``; other keys stay."""
    entry = dict(ip)
    if version in VERSIONS_WITH_IP_VERSION:
        if "version" not in entry:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                entry["version"] = str(ip_interface(entry["address"]).version)
    else:
        entry.pop("version", None)
    return entry


def render_result(
    result: CniResult, version: str, previous: dict[str, Any] | None = None
) -> dict[str, object]:
    """Return the result as the JSON object of CNI ``version``.

    0.3.x and 0.4.0 results carry "version" on each IP; 1.x results do not.
    Empty optional keys are left out, as the Go types do. With ``previous``
    (the prevResult of a chain), its interfaces, IPs, routes and DNS come first
    and the interface indexes of this result's IPs are shifted past them.
    """
    previous = previous or {}
    interfaces: list[dict[str, object]] = [
        dict(item) for item in previous.get("interfaces") or [] if isinstance(item, dict)
    ]
    offset = len(interfaces)
    for interface in result.interfaces:
        item: dict[str, object] = {"name": interface.name, "mac": interface.mac}
        if interface.sandbox is not None:
            item["sandbox"] = interface.sandbox
        if interface.pci_id is not None and version not in VERSIONS_WITHOUT_PCI_ID:
            item["pciID"] = interface.pci_id
        interfaces.append(item)

    ips: list[dict[str, object]] = [
        _render_ip(item, version) for item in previous.get("ips") or [] if isinstance(item, dict)
    ]
    for ip in result.ips:
        entry: dict[str, object] = {"address": str(ip.address)}
        if ip.gateway is not None:
            entry["gateway"] = str(ip.gateway)
        entry["interface"] = ip.interface + offset
        ips.append(_render_ip(entry, version))

    routes: list[dict[str, object]] = [
        dict(item) for item in previous.get("routes") or [] if isinstance(item, dict)
    ]
    for route in result.routes:
        rendered_route: dict[str, object] = {"dst": route.dst}
        if route.gateway is not None:
            rendered_route["gw"] = str(route.gateway)
        if rendered_route not in routes:
            routes.append(rendered_route)

    rendered: dict[str, object] = {"cniVersion": version, "interfaces": interfaces, "ips": ips}
    if routes:
        rendered["routes"] = routes
    dns = result.dns or previous.get("dns")
    if isinstance(dns, dict) and any(dns.values()):
        rendered["dns"] = {key: value for key, value in dns.items() if value}
    return rendered


def format_result(result: CniResult, version: str, previous: dict[str, Any] | None = None) -> str:
    return json.dumps(render_result(result, version, previous)) + "\n"


def previous_result(config: NetworkConfig) -> dict[str, Any] | None:
    """Return the configuration's prevResult, or None when there is none.

    libcni passes a plugin's result on unchanged, so the object may carry
    another cniVersion than the configuration; it is read by its own shape
    (entries with or without "version"), which both render_result and
    previous_address accept.
    """
    previous = config.raw.get("prevResult")
    if previous is None:
        return None
    if not isinstance(previous, dict):
        raise CniError(ERR_INVALID_CONFIG, f"invalid prevResult {previous!r}: expected an object")
    for key in ("interfaces", "ips", "routes"):
        if not isinstance(previous.get(key, []), list):
            raise CniError(
                ERR_INVALID_CONFIG, f"invalid prevResult.{key} {previous[key]!r}: expected a list"
            )
    return previous


@dataclass(frozen=True, kw_only=True)
class PreviousAddress:
    address: IPInterface
    gateway: IPAddress | None
    # MAC of the pod interface as ADD reported it; empty when prevResult has none.
    mac: str = ""
    # Every route of prevResult, to be found in the pod's netns.
    routes: tuple[ResultRoute, ...] = ()


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
        return PreviousAddress(
            address=address,
            gateway=gateway,
            mac=str(interface.get("mac") or "").lower(),
            routes=_previous_routes(previous),
        )

    raise CniError(ERR_INVALID_CONFIG, f"prevResult has no address for interface {ifname!r}")


def _previous_routes(previous: dict[str, Any]) -> tuple[ResultRoute, ...]:
    routes: list[ResultRoute] = []
    for item in previous.get("routes") or []:
        try:
            dst = str(ip_network(item["dst"], strict=False))
            gateway = ip_address(item["gw"]) if item.get("gw") else None
        except (KeyError, TypeError, ValueError):
            raise CniError(
                ERR_INVALID_CONFIG, f"prevResult has an unreadable route: {item!r}"
            ) from None
        routes.append(ResultRoute(dst=dst, gateway=gateway))
    return tuple(routes)
