"""Options of the SR-IOV driver, validated; see ``leasewire.drivers.sriov`` for their meaning."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from leasewire.drivers.base import InvalidOptionError, interface_name_problem
from leasewire.drivers.sriov_sysfs import PCI_ADDRESS

LINK_STATES = {"auto": 0, "enable": 1, "disable": 2}
MAX_VLAN = 4094
MAX_QOS = 7


@dataclass(frozen=True, kw_only=True)
class SriovOptions:
    device_id: str | None
    pf: str | None
    mac: str | None
    vlan: int | None
    qos: int
    spoof_check: bool | None
    trust: bool | None
    link_state: int | None
    min_tx_rate: int | None
    max_tx_rate: int | None
    sysfs_root: str
    state_dir: str


def _integer(options: Mapping[str, object], key: str, low: int, high: int) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOptionError(key, value, f"expected an integer from {low} to {high}")
    return value


def _boolean(options: Mapping[str, object], key: str) -> bool | None:
    value = options.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidOptionError(key, value, "expected true or false")
    return value


def _string(options: Mapping[str, object], key: str, default: str | None) -> str | None:
    value = options.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidOptionError(key, value, "expected a non-empty string")
    return value


def parse_options(options: Mapping[str, object], sysfs_root: str, state_dir: str) -> SriovOptions:
    key = "deviceID" if "deviceID" in options else "pciBusID"
    device_id = _string(options, key, None)
    if device_id is not None and not PCI_ADDRESS.match(device_id):
        raise InvalidOptionError(key, device_id, "expected a PCI address like 0000:3b:02.1")
    pf = _string(options, "pf", None)
    if pf is not None and interface_name_problem(pf):
        raise InvalidOptionError(
            "pf", pf, f"not a valid interface name: {interface_name_problem(pf)}"
        )
    if device_id is None and pf is None:
        raise InvalidOptionError(
            "deviceID", None, "missing: give the VF's PCI address, or 'pf' to take a free VF"
        )
    link_state_name = _string(options, "linkState", None)
    if link_state_name is not None and link_state_name not in LINK_STATES:
        raise InvalidOptionError(
            "linkState", link_state_name, f"expected one of {', '.join(LINK_STATES)}"
        )
    min_rate = _integer(options, "minTxRate", 0, 2**32 - 1)
    max_rate = _integer(options, "maxTxRate", 0, 2**32 - 1)
    if min_rate and max_rate and min_rate > max_rate:
        raise InvalidOptionError("minTxRate", min_rate, f"larger than maxTxRate {max_rate}")
    return SriovOptions(
        device_id=device_id.lower() if device_id else None,
        pf=pf,
        mac=_string(options, "mac", None),
        vlan=_integer(options, "vlan", 0, MAX_VLAN),
        qos=_integer(options, "vlanQoS", 0, MAX_QOS) or 0,
        spoof_check=_boolean(options, "spoofChk"),
        trust=_boolean(options, "trust"),
        link_state=LINK_STATES[link_state_name] if link_state_name else None,
        min_tx_rate=min_rate,
        max_tx_rate=max_rate,
        sysfs_root=_string(options, "sysfsRoot", sysfs_root) or sysfs_root,
        state_dir=_string(options, "stateDir", state_dir) or state_dir,
    )
