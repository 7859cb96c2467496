"""Driver checks that run inside the test VM, where the kernel has ipvlan, 8021q,
bridge VLAN filtering and an SR-IOV NIC (QEMU's igb, an Intel 82576).

Run as ``python -m tests.vm.guest RESULTS_JSON KERNEL_ROOT`` from the repository
root. It loads the modules from KERNEL_ROOT, runs every check, and writes one
result per check, ``{name: {"ok": bool, "detail": str}}``, for the host-side
tests to assert on.
A check that raises is recorded as failed with its traceback, and the next
check still runs.

The checks run one after another, so blocking file and process calls inside
the async checks are fine here. Only the daemons of the last check start
earlier, from worker threads, while the other checks run.
"""

# ruff: noqa: ASYNC221, ASYNC240, ASYNC251

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from ipaddress import ip_address, ip_interface
from pathlib import Path

from leasewire.drivers.base import (
    AttachRequest,
    CheckFailedError,
    CheckRequest,
    DetachRequest,
    DeviceInUseError,
    DriverError,
    InvalidOptionError,
)
from leasewire.drivers.bridge import BridgeDriver
from leasewire.drivers.ipvlan import IpvlanDriver
from leasewire.drivers.netlink import host_veth_name
from leasewire.drivers.sriov import SriovDriver
from tests.vm.guest_common import CheckError, expect, netns, ping, sh
from tests.vm.guest_shim import check_shim_ipvlan, start_daemons_early

MODULES = ("igb", "igbvf", "ipvlan", "8021q", "bridge")
results: dict[str, dict[str, object]] = {}


def request(
    path: str,
    container: str,
    address: str,
    gateway: str | None,
    options: dict[str, object],
    ifname: str = "eth0",
    mac: str | None = None,
) -> AttachRequest:
    return AttachRequest(
        container_id=container,
        netns=path,
        ifname=ifname,
        address=ip_interface(address),
        gateway=ip_address(gateway) if gateway else None,
        mtu=1500,
        options=options,
        mac=mac,
    )


async def check_ipvlan(mode: str) -> str:
    master = f"lwm{mode}"
    sh("ip", "link", "add", master, "type", "veth", "peer", "name", f"{master}p")
    sh("ip", "link", "set", master, "up")
    sh("ip", "link", "set", f"{master}p", "up")
    options: dict[str, object] = {"master": master, "mode": mode}
    driver = IpvlanDriver()
    pods = [netns(f"ipv{mode}a"), netns(f"ipv{mode}b")]
    attachments = [
        await driver.attach(
            request(path, f"ipvlan-{mode}-{i}", f"10.50.{len(mode)}.{10 + i}/24", None, options)
        )
        for i, path in enumerate(pods)
    ]
    master_mac = Path(f"/sys/class/net/{master}/address").read_text().strip()
    expect(attachments[0].interfaces[0].mac == master_mac, "result MAC is not the master's")
    expect(len(attachments[0].interfaces) == 1, "the master is listed in the result")
    details = sh("nsenter", f"--net={pods[0]}", "ip", "-d", "link", "show", "eth0")
    expect(f"ipvlan  mode {mode} " in details or f"ipvlan mode {mode} " in details, details)
    expect(ping(pods[0], f"10.50.{len(mode)}.11"), "pod 0 cannot ping pod 1")
    expect(ping(pods[1], f"10.50.{len(mode)}.10"), "pod 1 cannot ping pod 0")
    try:
        await driver.attach(
            request(
                pods[0], "ipvlan-mac", "10.50.9.9/24", None, options, "eth1", "c2:11:22:33:44:55"
            )
        )
        raise CheckError("a requested MAC was accepted")
    except InvalidOptionError as error:
        expect(error.key == "mac", str(error))
    for i, path in enumerate(pods):
        await driver.detach(
            DetachRequest(
                container_id=f"ipvlan-{mode}-{i}", netns=path, ifname="eth0", options=options
            )
        )
    return details.strip().splitlines()[-1].strip()


async def check_bridge_vlan() -> str:
    bridge = "lwvb"
    driver = BridgeDriver()
    pods = [netns("vlan10a"), netns("vlan10b"), netns("vlan20")]
    specs = [
        (pods[0], 10, "10.60.0.10/24"),
        (pods[1], 10, "10.60.0.11/24"),
        (pods[2], 20, "10.60.0.12/24"),
    ]
    for i, (path, vlan, address) in enumerate(specs):
        await driver.attach(
            request(path, f"vlan-{i}", address, "10.60.0.1", {"bridge": bridge, "vlan": vlan})
        )
    expect(ping(pods[0], "10.60.0.11"), "pods in VLAN 10 cannot reach each other")
    expect(ping(pods[0], "10.60.0.1"), "the gateway on VLAN link lwvb.10 is unreachable")
    expect(not ping(pods[2], "10.60.0.10"), "a pod in VLAN 20 reaches a pod in VLAN 10")
    expect(
        Path(f"/sys/class/net/{bridge}/bridge/vlan_filtering").read_text().strip() == "1",
        "VLAN filtering is off",
    )
    vlans = sh("bridge", "vlan", "show")
    expect(re.search(r"\b10 PVID Egress Untagged", vlans) is not None, vlans)
    notes = [vlans]

    # CHECK reads the port's VLAN back. It passes as attach left it and fails
    # once the port is moved to VLAN 20 by hand, or VLAN filtering is turned off.
    options: dict[str, object] = {"bridge": bridge, "vlan": 10}
    attach = request(pods[0], "vlan-0", "10.60.0.10/24", "10.60.0.1", options)
    check = CheckRequest(
        container_id=attach.container_id,
        netns=attach.netns,
        ifname=attach.ifname,
        address=attach.address,
        gateway=attach.gateway,
        options=options,
    )
    await driver.check(check)
    notes.append("CHECK after attach: passed")
    port = host_veth_name("vlan-0", "eth0")
    sh("bridge", "vlan", "del", "dev", port, "vid", "10")
    sh("bridge", "vlan", "add", "dev", port, "vid", "20", "pvid", "untagged")
    try:
        await driver.check(check)
        raise CheckError(f"CHECK passed with port {port} moved to VLAN 20")
    except CheckFailedError as error:
        expect(port in str(error), str(error))
        notes.append(f"CHECK after the move: {error}")
    sh("ip", "link", "set", bridge, "type", "bridge", "vlan_filtering", "0")
    try:
        await driver.check(check)
        raise CheckError(f"CHECK passed with VLAN filtering off on bridge {bridge}")
    except CheckFailedError as error:
        notes.append(f"CHECK without VLAN filtering: {error}")
    return "\n".join(notes)


def igb_pf() -> str:
    for device in Path("/sys/class/net").iterdir():
        driver = device / "device" / "driver"
        if driver.exists() and os.path.basename(os.path.realpath(driver)) == "igb":
            return device.name
    raise CheckError("no igb network interface: is QEMU's -device igb present?")


def vf_line(pf: str, index: int) -> str:
    for line in sh("ip", "link", "show", pf).splitlines():
        if line.strip().startswith(f"vf {index} "):
            return line.strip()
    raise CheckError(f"ip link show {pf} lists no vf {index}")


async def check_sriov() -> str:
    pf = igb_pf()
    sh("ip", "link", "set", pf, "up")
    Path(f"/sys/class/net/{pf}/device/sriov_numvfs").write_text("2")
    vf_addresses = [
        os.path.basename(os.path.realpath(f"/sys/class/net/{pf}/device/virtfn{i}"))
        for i in range(2)
    ]
    deadline = time.monotonic() + 20
    while not all(list(Path(f"/sys/bus/pci/devices/{a}/net").glob("*")) for a in vf_addresses):
        expect(time.monotonic() < deadline, "the VFs got no igbvf network interface")
        time.sleep(0.2)
    names = [next(Path(f"/sys/bus/pci/devices/{a}/net").iterdir()).name for a in vf_addresses]
    original_mac = Path(f"/sys/class/net/{names[0]}/address").read_text().strip()
    notes = [f"PF {pf}, VFs {vf_addresses} as {names}"]

    driver = SriovDriver()
    pod = netns("sriova")
    options: dict[str, object] = {
        "deviceID": vf_addresses[0],
        "vlan": 100,
        "trust": True,
        "spoofChk": False,
    }
    attachment = await driver.attach(
        request(pod, "sriov-0", "10.70.0.10/24", None, options, "net1", "02:aa:bb:cc:dd:01")
    )
    line = vf_line(pf, 0)
    notes.append(f"after attach: {line}")
    expect("02:aa:bb:cc:dd:01" in line, line)
    expect("vlan 100" in line, line)
    expect("trust on" in line, line)
    expect("spoof checking off" in line, line)
    expect(attachment.interfaces[0].pci_id == vf_addresses[0], "result has no pciID")
    pod_link = sh("nsenter", f"--net={pod}", "ip", "addr", "show", "net1")
    expect("10.70.0.10/24" in pod_link and "02:aa:bb:cc:dd:01" in pod_link, pod_link)
    expect(not Path(f"/sys/class/net/{names[0]}").exists(), "the VF is still in the node's netns")

    # The same VF again: rejected, and the error names the holder.
    other = netns("sriovb")
    try:
        await driver.attach(request(other, "sriov-1", "10.70.0.11/24", None, options, "net1"))
        raise CheckError("a VF in use was given to a second pod")
    except DeviceInUseError as error:
        expect("sriov-0" in str(error) and "net1" in str(error), str(error))
        notes.append(f"second attach: {error}")

    await driver.detach(
        DetachRequest(container_id="sriov-0", netns=pod, ifname="net1", options=options)
    )
    line = vf_line(pf, 0)
    notes.append(f"after detach: {line}")
    expect("vlan 100" not in line, line)
    expect("trust off" in line, line)
    expect("spoof checking on" in line, line)
    expect("02:aa:bb:cc:dd:01" not in line, line)
    expect(Path(f"/sys/class/net/{names[0]}").exists(), f"{names[0]} is not back under its name")
    restored = Path(f"/sys/class/net/{names[0]}/address").read_text().strip()
    expect(restored == original_mac, f"MAC {restored} is not the original {original_mac}")

    # igb rejects a VF link state: the attach fails naming the setting and leaves the VF free.
    try:
        await driver.attach(
            request(
                pod,
                "sriov-4",
                "10.70.0.14/24",
                None,
                {"deviceID": vf_addresses[0], "linkState": "enable"},
                "net1",
            )
        )
        raise CheckError("igb accepted a VF link state")
    except DriverError as error:
        expect("link state enable" in str(error), str(error))
        notes.append(f"link state: {error}")
    expect(Path(f"/sys/class/net/{names[0]}").exists(), "a failed attach did not give the VF back")

    # A TX rate limit set through the PF, and cleared again by detach.
    rate_options: dict[str, object] = {"deviceID": vf_addresses[0], "maxTxRate": 100}
    await driver.attach(request(pod, "sriov-5", "10.70.0.15/24", None, rate_options, "net1"))
    line = vf_line(pf, 0)
    notes.append(f"with a TX limit: {line}")
    expect("max_tx_rate 100Mbps" in line, line)
    await driver.detach(
        DetachRequest(container_id="sriov-5", netns=pod, ifname="net1", options=rate_options)
    )
    expect("max_tx_rate" not in vf_line(pf, 0), vf_line(pf, 0))

    # Without deviceID: a free VF of the PF; then the netns goes before DEL.
    free_options: dict[str, object] = {"pf": pf, "vlan": 200}
    attachment = await driver.attach(
        request(other, "sriov-2", "10.70.0.12/24", None, free_options, "net1")
    )
    taken = attachment.interfaces[0].pci_id
    notes.append(f"free VF taken: {taken}")
    sh("ip", "netns", "del", "sriovb")
    deadline = time.monotonic() + 10
    while not list(Path(f"/sys/bus/pci/devices/{taken}/net").glob("*")):
        expect(time.monotonic() < deadline, "the kernel did not return the VF to the node")
        time.sleep(0.2)
    await driver.detach(
        DetachRequest(container_id="sriov-2", netns=other, ifname="net1", options=free_options)
    )
    index = vf_addresses.index(str(taken))
    expect(Path(f"/sys/class/net/{names[index]}").exists(), f"{names[index]} not renamed back")
    expect("vlan 200" not in vf_line(pf, index), vf_line(pf, index))

    # A VF without a network interface: no driver bound.
    Path(f"/sys/bus/pci/devices/{vf_addresses[1]}/driver/unbind").write_text(vf_addresses[1])
    try:
        await driver.attach(
            request(
                netns("sriovc"),
                "sriov-3",
                "10.70.0.13/24",
                None,
                {"deviceID": vf_addresses[1]},
                "net1",
            )
        )
        raise CheckError("a VF without a network interface was attached")
    except DriverError as error:
        expect("no driver" in str(error), str(error))
        notes.append(f"unbound VF: {error}")
    return "\n".join(notes)


async def run(name: str, check: Callable[[], Awaitable[str]]) -> None:
    started = time.monotonic()
    try:
        detail = await check()
        results[name] = {"ok": True, "detail": detail}
    except BaseException:
        results[name] = {"ok": False, "detail": traceback.format_exc()}
    results[name]["seconds"] = round(time.monotonic() - started, 2)


async def main(output: Path, kernel_root: str) -> None:
    loaded = subprocess.run(
        ["modprobe", "-a", "-d", kernel_root, *MODULES], capture_output=True, text=True, check=False
    )
    results["modules"] = {"ok": loaded.returncode == 0, "detail": loaded.stderr}
    results["kernel"] = {"ok": True, "detail": os.uname().release}
    daemons = start_daemons_early()
    await run("ipvlan_l2", lambda: check_ipvlan("l2"))
    await run("ipvlan_l3", lambda: check_ipvlan("l3"))
    await run("ipvlan_l3s", lambda: check_ipvlan("l3s"))
    await run("bridge_vlan", check_bridge_vlan)
    await run("sriov", check_sriov)
    await run("shim_ipvlan", lambda: check_shim_ipvlan(daemons))
    output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
