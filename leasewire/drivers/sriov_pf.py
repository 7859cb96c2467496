"""Read and change a VF's settings through its PF, as "ip link set PF vf N ..." does.

The kernel reports them in the PF's IFLA_VFINFO_LIST when the request asks for
VF details (RTEXT_FILTER_VF), and takes changes as IFLA_VFINFO_LIST in a link
set request on the PF. Each setting goes in a request of its own, so that an
error names the setting that the PF's driver rejected.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

from leasewire.drivers.base import DriverError
from leasewire.drivers.sriov_state import VfRecord, VfSettings

if TYPE_CHECKING:
    from leasewire.drivers.sriov_options import SriovOptions
    from leasewire.drivers.sriov_sysfs import VirtualFunction

logger = logging.getLogger(__name__)

RTEXT_FILTER_VF = 1
# IFLA_VF_LINK_STATE_* values by name, as "ip link set PF vf N state ..." takes them.
LINK_STATE_NAMES = {0: "auto", 1: "enable", 2: "disable"}


def _attribute(info: Any, name: str, field: str, default: int | str) -> Any:
    attribute = info.get_attr(name)
    if attribute is None:
        return default
    return attribute[field]


async def read_vf_settings(ipr: Any, pf_index: int, vf_index: int) -> VfSettings:
    """Return the PF-side settings of VF ``vf_index``."""
    (pf,) = await ipr.link("get", index=pf_index, ext_mask=RTEXT_FILTER_VF)
    vf_list = pf.get_attr("IFLA_VFINFO_LIST")
    infos = vf_list.get_attrs("IFLA_VF_INFO") if vf_list is not None else []
    for info in infos:
        mac = info.get_attr("IFLA_VF_MAC")
        if mac is None or mac["vf"] != vf_index:
            continue
        return VfSettings(
            mac=str(mac["mac"]).lower(),
            vlan=int(_attribute(info, "IFLA_VF_VLAN", "vlan", 0)),
            qos=int(_attribute(info, "IFLA_VF_VLAN", "qos", 0)),
            trust=bool(_attribute(info, "IFLA_VF_TRUST", "trust", 0)),
            spoof_check=bool(_attribute(info, "IFLA_VF_SPOOFCHK", "spoofchk", 0)),
            link_state=int(_attribute(info, "IFLA_VF_LINK_STATE", "link_state", 0)),
            min_tx_rate=int(_attribute(info, "IFLA_VF_RATE", "min_tx_rate", 0)),
            max_tx_rate=int(_attribute(info, "IFLA_VF_RATE", "max_tx_rate", 0)),
        )
    raise DriverError(f"PF index {pf_index} does not report VF {vf_index}")


async def _set(ipr: Any, pf_index: int, pf: str, setting: str, vf: dict[str, Any]) -> None:
    number = vf["vf"]
    try:
        # A copy, because pyroute2 pops keys off the dict it gets.
        await ipr.link("set", index=pf_index, vf=dict(vf))
    except NetlinkError as error:
        raise DriverError(
            f"failed to set {setting} of VF {number} through PF {pf!r}: "
            f"{os.strerror(error.code)} (errno {error.code})"
        ) from error


async def set_vf_settings(
    ipr: Any, pf_index: int, vf: VirtualFunction, options: SriovOptions, mac: str | None
) -> None:
    """Apply the requested settings of ``options``; the ones not given stay as they are."""
    number = vf.index
    if mac is not None:
        await _set(ipr, pf_index, vf.pf, f"MAC {mac}", {"vf": number, "mac": mac})
    if options.vlan is not None:
        await _set(
            ipr,
            pf_index,
            vf.pf,
            f"VLAN {options.vlan}",
            {"vf": number, "vlan": {"vlan": options.vlan, "qos": options.qos}},
        )
    if options.spoof_check is not None:
        await _set(
            ipr,
            pf_index,
            vf.pf,
            f"spoof check {options.spoof_check}",
            {"vf": number, "spoofchk": int(options.spoof_check)},
        )
    if options.trust is not None:
        await _set(
            ipr,
            pf_index,
            vf.pf,
            f"trust {options.trust}",
            {"vf": number, "trust": int(options.trust)},
        )
    if options.link_state is not None:
        await _set(
            ipr,
            pf_index,
            vf.pf,
            f"link state {LINK_STATE_NAMES[options.link_state]}",
            {"vf": number, "link_state": options.link_state},
        )
    if options.min_tx_rate is not None or options.max_tx_rate is not None:
        await _set(
            ipr,
            pf_index,
            vf.pf,
            f"TX rate {options.min_tx_rate}-{options.max_tx_rate} Mbit/s",
            {
                "vf": number,
                "rate": {
                    "min_tx_rate": options.min_tx_rate or 0,
                    "max_tx_rate": options.max_tx_rate or 0,
                },
            },
        )


async def restore_vf_settings(ipr: Any, pf_index: int, record: VfRecord) -> None:
    """Set back every PF-side setting that differs from the record; log what fails."""
    current = await read_vf_settings(ipr, pf_index, record.vf_index)
    original = record.original
    number = record.vf_index
    changes: list[tuple[str, dict[str, Any]]] = []
    if current.mac != original.mac:
        changes.append((f"MAC {original.mac}", {"vf": number, "mac": original.mac}))
    if (current.vlan, current.qos) != (original.vlan, original.qos):
        changes.append(
            (
                f"VLAN {original.vlan}",
                {"vf": number, "vlan": {"vlan": original.vlan, "qos": original.qos}},
            )
        )
    if current.spoof_check != original.spoof_check:
        changes.append(
            (
                f"spoof check {original.spoof_check}",
                {"vf": number, "spoofchk": int(original.spoof_check)},
            )
        )
    if current.trust != original.trust:
        changes.append((f"trust {original.trust}", {"vf": number, "trust": int(original.trust)}))
    if current.link_state != original.link_state:
        changes.append(
            (
                f"link state {LINK_STATE_NAMES.get(original.link_state, original.link_state)}",
                {"vf": number, "link_state": original.link_state},
            )
        )
    if (current.min_tx_rate, current.max_tx_rate) != (original.min_tx_rate, original.max_tx_rate):
        changes.append(
            (
                "TX rate",
                {
                    "vf": number,
                    "rate": {
                        "min_tx_rate": original.min_tx_rate,
                        "max_tx_rate": original.max_tx_rate,
                    },
                },
            )
        )
    for setting, vf in changes:
        try:
            await _set(ipr, pf_index, record.pf, setting, vf)
        except DriverError as error:
            logger.warning("Could not restore VF %s: %s", record.pci_address, error)
