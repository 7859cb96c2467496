"""The node side of SR-IOV: the runtime's deviceID reaches the driver options,
the VF's PCI address shows in 1.1.0 results only, and a VF in use has its own code."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_interface

import pytest

from leasewire.cni.cniconfig import ERR_ATTACH_FAILED, ERR_DEVICE_IN_USE, parse_network_config
from leasewire.cni.cniresult import CniResult, ResultIP, render_result
from leasewire.cni.errors import to_cni_error
from leasewire.drivers.base import AttachedInterface, DeviceInUseError, DriverError

VF = "0000:3b:02.1"


def config(**extra: object) -> str:
    return json.dumps(
        {"cniVersion": "1.1.0", "name": "sriovnet", "type": "leasewire", "driver": "sriov", **extra}
    )


def test_runtime_device_id_fills_options() -> None:
    parsed = parse_network_config(
        config(capabilities={"deviceID": True}, runtimeConfig={"deviceID": VF})
    )

    assert parsed.options["deviceID"] == VF


def test_runtime_device_id_capitalised_key() -> None:
    # containerd's go-cni sends runtimeConfig keys as Go field names.
    parsed = parse_network_config(config(runtimeConfig={"DeviceID": VF}))

    assert parsed.options["deviceID"] == VF


@pytest.mark.parametrize(
    "named",
    [
        {"deviceID": "0000:3b:02.2"},
        {"pciBusID": "0000:3b:02.2"},
        {"options": {"deviceID": "0000:3b:02.2"}},
    ],
)
def test_configured_device_id_wins(named: dict[str, object]) -> None:
    parsed = parse_network_config(config(runtimeConfig={"deviceID": VF}, **named))

    assert VF not in parsed.options.values()
    assert parsed.options.get("deviceID", parsed.options.get("pciBusID")) == "0000:3b:02.2"


def test_no_device_id_adds_nothing() -> None:
    parsed = parse_network_config(config(runtimeConfig={"mac": "c2:11:22:33:44:55"}))

    assert "deviceID" not in parsed.options


def vf_result() -> CniResult:
    return CniResult(
        interfaces=(
            AttachedInterface(
                name="net1", mac="c2:11:22:33:44:55", sandbox="/run/netns/p", pci_id=VF
            ),
        ),
        ips=(
            ResultIP(
                address=ip_interface("10.9.0.5/24"), gateway=ip_address("10.9.0.1"), interface=0
            ),
        ),
        routes=(),
    )


def test_pci_id_in_1_1_0_result() -> None:
    rendered = render_result(vf_result(), "1.1.0")

    assert rendered["interfaces"] == [
        {"name": "net1", "mac": "c2:11:22:33:44:55", "sandbox": "/run/netns/p", "pciID": VF}
    ]
    assert rendered["ips"] == [{"address": "10.9.0.5/24", "gateway": "10.9.0.1", "interface": 0}]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_no_pci_id_before_1_1_0(version: str) -> None:
    rendered = render_result(vf_result(), version)

    assert rendered["interfaces"] == [
        {"name": "net1", "mac": "c2:11:22:33:44:55", "sandbox": "/run/netns/p"}
    ]


def test_pci_id_after_previous_interfaces() -> None:
    previous = {"interfaces": [{"name": "lo"}], "ips": []}

    rendered = json.loads(json.dumps(render_result(vf_result(), "1.1.0", previous)))

    assert rendered["interfaces"][1]["pciID"] == VF
    assert rendered["ips"][0]["interface"] == 1


def test_device_in_use_names_holder() -> None:
    holder = "cluster/c0ffee01/net1"
    error = to_cni_error(DeviceInUseError(f"VF {VF} is in use by {holder}", holder), "x")

    assert error.code == ERR_DEVICE_IN_USE
    assert error.code >= 100
    assert holder in error.msg
    assert VF in error.msg


def test_device_in_use_adds_holder_missing_from_message() -> None:
    error = to_cni_error(DeviceInUseError(f"VF {VF} has no interface here", "netns x"), "x")

    assert error.code == ERR_DEVICE_IN_USE
    assert "netns x" in error.msg


def test_other_driver_error_keeps_attach_code() -> None:
    assert to_cni_error(DriverError("boom"), "x").code == ERR_ATTACH_FAILED != ERR_DEVICE_IN_USE
