"""podman (CNI backend, runc) wires containers through the installed leasewire shim.

The chain under test is the real one: podman 4.3 execs the shim installed by
``install-cni``, the shim forwards to ``leasewire up``, which leases from its
ipamd and wires the container with the bridge driver.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # Fixture types only: pytest loads conftest itself, and importing it again
    # at run time would create a second copy of the module.
    from tests.e2e.conftest import AllInOne, InstallCni, Podman, StartAllInOne

pytestmark = [
    pytest.mark.root,
    pytest.mark.podman,
    pytest.mark.skipif(os.geteuid() != 0, reason="podman with CNI networks needs root"),
]

HELD_STATES = ("pending", "bound")


@dataclass
class PodmanNetwork:
    """A leasewire network that the private podman can use."""

    name: str
    pool: str
    cidr: ipaddress.IPv4Network
    bridge: str
    daemon: AllInOne
    podman: Podman
    rootfs: Path

    def container_args(self) -> list[str]:
        return ["--network", self.name, "--rootfs", str(self.rootfs)]

    def leases(self) -> list[dict[str, object]]:
        """Return this pool's leases as ipamd lists them."""
        body = self.daemon.get_json(f"/v1/leases?pool={self.pool}")
        assert isinstance(body, list), f"unexpected GET /v1/leases body: {body!r}"
        return body

    def held_leases(self) -> list[dict[str, object]]:
        return [lease for lease in self.leases() if lease.get("state") in HELD_STATES]


@pytest.fixture
def network(
    tmp_path: Path,
    podman: Podman,
    allinone_factory: StartAllInOne,
    install_cni: InstallCni,
    busybox_rootfs: Path,
) -> Iterator[PodmanNetwork]:
    """Yield a leasewire network with a fresh pool, bridge and daemon.

    Teardown removes the containers first, while the daemon still runs, so
    that their DELs release the leases; then it deletes the bridge.
    """
    suffix = secrets.token_hex(3)
    name = f"lwt{suffix}"
    pool = f"lwt{suffix}"
    bridge = f"lwt{suffix}"
    # A random /24 inside 10.253.0.0/16, so that parallel runs do not share a subnet.
    cidr = ipaddress.IPv4Network(f"10.253.{secrets.randbelow(256)}.0/24")
    socket_path = tmp_path / "node.sock"

    install_cni(
        bin_dir=tmp_path / "bin",
        conf_dir=podman.network_config_dir,
        network=name,
        pool=pool,
        bridge=bridge,
        socket=socket_path,
    )

    try:
        daemon = allinone_factory(pool=pool, pool_cidr=str(cidr))
        assert daemon.socket_path == socket_path
        yield PodmanNetwork(name, pool, cidr, bridge, daemon, podman, busybox_rootfs)
    finally:
        podman.remove_network_leftovers(name, bridge)
        # Captured output: pytest shows it only when the test failed.
        print(f"---- leasewire up log ({tmp_path / 'up.log'}) ----")
        print(
            (tmp_path / "up.log").read_text(errors="replace")
            if (tmp_path / "up.log").exists()
            else ""
        )


def link_names() -> set[str]:
    """Return the names of the links in the host network namespace."""
    output = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in output.splitlines()}


def bridge_ports(bridge: str) -> list[str]:
    """Return the links enslaved to ``bridge`` (empty if the bridge is gone)."""
    result = subprocess.run(
        ["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True
    )
    if result.returncode != 0:
        return []
    return [line.split(":")[1].strip().split("@")[0] for line in result.stdout.splitlines()]


def container_ipv4(output: str) -> list[ipaddress.IPv4Interface]:
    """Return the IPv4 interface addresses in ``ip addr`` output, without loopback."""
    found = [ipaddress.IPv4Interface(match) for match in re.findall(r"inet (\S+)", output)]
    return [address for address in found if not address.ip.is_loopback]


def test_podman_lists_leasewire_network(network: PodmanNetwork) -> None:
    # podman probes VERSION of the shim; a failing probe drops the network silently.
    listed = network.podman.check("network", "ls", "--format", "{{.Name}}")

    assert network.name in listed.split()


def test_podman_container_gets_pool_address(network: PodmanNetwork) -> None:
    netns_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()

    output = network.podman.check(
        "run", "--rm", *network.container_args(), "/bin/busybox", "ip", "addr"
    )

    addresses = container_ipv4(output)
    assert len(addresses) == 1, output
    assert addresses[0].ip in network.cidr
    assert addresses[0].network == network.cidr
    # --rm sent DEL when the container exited: its lease no longer holds the address.
    assert network.held_leases() == []
    assert bridge_ports(network.bridge) == []
    netns_after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    # podman names its network namespaces netns-<uuid>; other tests may add their own.
    assert [name for name in netns_after - netns_before if name.startswith("netns-")] == []


def test_podman_containers_ping_each_other(network: PodmanNetwork) -> None:
    podman = network.podman
    name_a = f"{network.name}-a"

    # Container A stays up while B pings it.
    container_id = podman.check(
        "run",
        "-d",
        "--name",
        name_a,
        *network.container_args(),
        "/bin/busybox",
        "sleep",
        "120",
    ).strip()
    address_text = podman.check(
        "inspect",
        name_a,
        "--format",
        f'{{{{(index .NetworkSettings.Networks "{network.name}").IPAddress}}}}',
    ).strip()
    address_a = ipaddress.IPv4Address(address_text)
    assert address_a in network.cidr

    # ipamd records A's lease, bound, with podman's container id as owner.
    held = network.held_leases()
    assert len(held) == 1, held
    lease = held[0]
    assert lease["address"] == f"{address_a}/{network.cidr.prefixlen}"
    assert lease["state"] == "bound"
    owner = lease["owner"]
    assert isinstance(owner, dict)
    assert owner["containerID"] == container_id
    assert owner["ifname"] == "eth0"
    host_veths = bridge_ports(network.bridge)
    assert len(host_veths) == 1, host_veths

    ping = podman.run(
        "run",
        "--rm",
        *network.container_args(),
        "/bin/busybox",
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        str(address_a),
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "3 packets received" in ping.stdout

    podman.check("rm", "--force", "--time", "0", name_a)

    assert network.held_leases() == []
    assert bridge_ports(network.bridge) == []
    # Other tests may add links meanwhile, so look for A's own veth by name.
    assert host_veths[0] not in link_names()
    released = [lease for lease in network.leases() if lease.get("address") == held[0]["address"]]
    assert all(lease.get("state") == "released" for lease in released)
