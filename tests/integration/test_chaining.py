"""leasewire first in a conflist, followed by the reference portmap, tuning and
bandwidth plugins from Debian's containernetworking-plugins, driven by the
libcni-faithful harness; and the 1.1.0 verbs GC and STATUS through it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from leasewire.cni.install import install
from leasewire.drivers.netlink import host_veth_name

from .cniharness import Attachment, CniCallError, CniHarness
from .conftest import CLUSTER, Pool, ip, link_exists, unique_name
from .daemons import Ipamd, NodeDaemon, free_port

REFERENCE_PLUGINS = Path("/usr/lib/cni")


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A plugin directory holding the installed shim, searched before Debian's."""
    shim, _ = install(
        bin_dir=tmp_path / "bin",
        conf_dir=tmp_path / "net.d",
        conf_name=None,
        network="unused",
        pool="unused",
        driver="bridge",
        bridge="unused0",
        mtu=1500,
        socket_path=None,
    )
    return shim.parent


def leasewire_plugin(daemon: NodeDaemon, pool: Pool, bridge: str) -> dict[str, object]:
    return {
        "type": "leasewire",
        "pool": pool.name,
        "driver": "bridge",
        "bridge": bridge,
        "socket": str(daemon.socket_path),
    }


def harness(
    tmp_path: Path, bin_dir: Path, version: str, plugins: list[dict[str, object]]
) -> CniHarness:
    conflist = {"cniVersion": version, "name": unique_name("chain"), "plugins": plugins}
    return CniHarness(
        conflist=conflist, bin_dirs=[bin_dir, REFERENCE_PLUGINS], cache_dir=tmp_path / "cache"
    )


def held(ipamd: Ipamd, pool: Pool, container_id: str) -> list[dict[str, Any]]:
    owner = {"cluster": CLUSTER, "containerID": container_id, "ifname": "eth0"}
    return [lease for lease in ipamd.leases(pool.name) if lease["owner"] == owner]


@pytest.fixture
def http_server() -> Iterator[Callable[[str, int], None]]:
    """Return a function that serves HTTP in a netns on a port; all are stopped at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def serve(namespace: str, port: int) -> None:
        processes.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    namespace,
                    sys.executable,
                    "-m",
                    "http.server",
                    str(port),
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                    "/proc/self",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    yield serve
    for process in processes:
        process.kill()
        process.wait()


def fetch(url: str, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_chain_with_reference_plugins(
    tmp_path: Path,
    bin_dir: Path,
    node_daemon: NodeDaemon,
    ipamd: Ipamd,
    pool: Pool,
    bridge: str,
    make_netns: Callable[[], str],
    http_server: Callable[[str, int], None],
) -> None:
    runtime = harness(
        tmp_path,
        bin_dir,
        "1.0.0",
        [
            leasewire_plugin(node_daemon, pool, bridge),
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    )
    namespace = make_netns()
    host_port = free_port()
    pod = Attachment(
        container_id=unique_name("chain-"),
        netns=f"/run/netns/{namespace}",
        ifname="eth0",
        args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=chained",
        capability_args={
            "portMappings": [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}],
            "bandwidth": {
                "ingressRate": 100_000_000,
                "ingressBurst": 1_000_000,
                "egressRate": 100_000_000,
                "egressBurst": 1_000_000,
            },
        },
    )

    try:
        result = runtime.add(pod)

        # prevResult flowed through every plugin: ours is still the pod's entry.
        assert result["cniVersion"] == "1.0.0"
        (lease_ip,) = result["ips"]
        pod_interface = result["interfaces"][lease_ip["interface"]]
        assert pod_interface["name"] == "eth0"
        assert pod_interface["sandbox"] == pod.netns
        sysctl = ip("netns", "exec", namespace, "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify")
        assert sysctl.stdout.strip() == "1"

        # portmap's DNAT reaches the pod through the gateway, a local address on the bridge.
        http_server(namespace, 8080)
        assert fetch(f"http://{pool.gateway}:{host_port}/") == 200

        # Debian's portmap 1.1.1 fails CHECK on IPv4-only results: it looks for
        # IPv6 chains that its ADD never made (containernetworking/plugins#819).
        with pytest.raises(CniCallError) as raised:
            runtime.check(pod)
        assert (raised.value.plugin, raised.value.code) == ("portmap", 999)
        assert "ipv6" in raised.value.msg
        # The rest of the chain passes CHECK with the same cached result.
        without_portmap = [item for item in runtime.plugins() if item["type"] != "portmap"]
        CniHarness(
            conflist={**runtime.conflist, "plugins": without_portmap},
            bin_dirs=runtime.bin_dirs,
            cache_dir=runtime.cache_dir,
        ).check(pod)
    finally:
        runtime.delete(pod)

    assert not link_exists(host_veth_name(pod.container_id, "eth0"))
    assert held(ipamd, pool, pod.container_id) == []
    assert runtime.cached(pod.container_id, "eth0") is None
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert pod.container_id not in nat


def test_harness_gc_status_at_1_1_0(
    tmp_path: Path,
    bin_dir: Path,
    node_daemon: NodeDaemon,
    ipamd: Ipamd,
    pool: Pool,
    bridge: str,
    make_netns: Callable[[], str],
) -> None:
    runtime = harness(tmp_path, bin_dir, "1.1.0", [leasewire_plugin(node_daemon, pool, bridge)])
    assert runtime.version_probe("leasewire")["supportedVersions"][-1] == "1.1.0"
    pods = [
        Attachment(
            container_id=unique_name("gc-"), netns=f"/run/netns/{make_netns()}", ifname="eth0"
        )
        for _ in range(2)
    ]
    for pod in pods:
        assert runtime.add(pod)["cniVersion"] == "1.1.0"
        runtime.check(pod)
    runtime.status()
    keep, stale = pods
    # The stale pod's cache entry is lost, as after a runtime restart, so only GC can find it.
    (tmp_path / "cache" / f"{runtime.name}-{stale.container_id}-eth0").unlink()

    errors = runtime.gc([(keep.container_id, "eth0")])

    assert errors == []
    assert len(held(ipamd, pool, keep.container_id)) == 1
    assert held(ipamd, pool, stale.container_id) == []
    assert link_exists(host_veth_name(keep.container_id, "eth0"))
    assert not link_exists(host_veth_name(stale.container_id, "eth0"))
    runtime.delete(keep)
    assert held(ipamd, pool, keep.container_id) == []


def test_harness_status_names_unreachable_daemon(
    tmp_path: Path, bin_dir: Path, pool: Pool, bridge: str
) -> None:
    missing = NodeDaemon(tmp_path / "absent.sock", tmp_path / "absent.log")
    runtime = harness(tmp_path, bin_dir, "1.1.0", [leasewire_plugin(missing, pool, bridge)])

    with pytest.raises(CniCallError) as raised:
        runtime.status()

    assert raised.value.code == 50
    assert "node daemon" in raised.value.msg
    assert json.dumps(str(tmp_path / "absent.sock"))[1:-1] in raised.value.msg
