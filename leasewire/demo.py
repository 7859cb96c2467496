"""``leasewire demo``: wire a few network-namespace pods through the real shim.

The demo plays the container runtime: it creates one network namespace per
pod, execs the installed shim with the CNI environment and the conflist's
plugin config on stdin (as libcni does), pings every pod from every other pod
and from the node, then deletes the pods through the shim and checks that the
pool is empty again. Every step that fails stops the demo with a message that
names the step; what was created is removed in any case.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from leasewire.defaultpool import default_pool_spec
from leasewire.listen import base_url, parse_listen

log = logging.getLogger(__name__)

# How long to wait for a daemon started by the demo, in seconds. The first
# start creates the SQLite schema, which takes about a second.
DAEMON_START_TIMEOUT = 30.0


class DemoError(Exception):
    """A demo step failed; the message names the step."""


@dataclass(frozen=True)
class Network:
    """The leasewire network found in the CNI config directory."""

    path: Path
    name: str
    cni_version: str
    plugin: dict[str, object]

    @property
    def bridge(self) -> str:
        return str(self.plugin.get("bridge", "lw0"))

    @property
    def pool(self) -> str:
        return str(self.plugin.get("pool", "default"))


@dataclass
class Pod:
    name: str
    netns: str
    container_id: str
    result: dict[str, object] | None = None
    deleted: bool = False

    @property
    def address(self) -> str:
        if self.result is None:
            return ""
        ips = self.result.get("ips")
        if not isinstance(ips, list) or not ips:
            return ""
        return str(ips[0]["address"]).split("/")[0]


def find_network(conf_dir: Path) -> Network:
    """Find the first conflist, in the order runtimes read them, whose first plugin is leasewire."""
    candidates = sorted(conf_dir.glob("*.conflist")) if conf_dir.is_dir() else []
    for path in candidates:
        try:
            conflist = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        plugins = conflist.get("plugins") or []
        if plugins and plugins[0].get("type") == "leasewire":
            return Network(path, conflist["name"], conflist.get("cniVersion", "1.0.0"), plugins[0])
    raise DemoError(
        f"find the network: no conflist in {conf_dir} names the leasewire plugin; "
        f"run 'leasewire install-cni --conf-dir {conf_dir}' first, or pass the --conf-dir "
        "that holds it"
    )


def _ipamd_get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _ipamd_ready(ipamd_url: str, socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        _ipamd_get(f"{ipamd_url}/healthz")
    except (OSError, ValueError):
        return False
    return True


def ensure_daemon(
    args: argparse.Namespace, network: Network, ipamd_url: str, stack: ExitStack
) -> None:
    """Start ``leasewire up`` unless a node daemon and ipamd answer already."""
    socket_path = Path(args.socket)
    if _ipamd_ready(ipamd_url, socket_path):
        print(f"using the running leasewire daemon ({ipamd_url}, {socket_path})")
        return

    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "up.log"
    print(f"starting the all-in-one daemon: leasewire up (log: {log_path})")
    command = [
        sys.executable,
        "-m",
        "leasewire.cli",
        "up",
        "--state-dir",
        str(state_dir),
        "--socket",
        str(socket_path),
        "--listen",
        args.listen,
        "--pool",
        network.pool,
        "--pool-cidr",
        args.pool_cidr,
    ]
    log_file = stack.enter_context(log_path.open("ab"))
    daemon = subprocess.Popen(command, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL)

    def stop_daemon() -> None:
        if daemon.poll() is not None:
            return
        daemon.terminate()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        print("stopped the all-in-one daemon")

    stack.callback(stop_daemon)

    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while not _ipamd_ready(ipamd_url, socket_path):
        if daemon.poll() is not None:
            raise DemoError(
                f"start the daemon: leasewire up exited with {daemon.returncode}; see {log_path}"
            )
        if time.monotonic() > deadline:
            raise DemoError(
                f"start the daemon: not ready after {DAEMON_START_TIMEOUT:g} s; see {log_path}"
            )
        time.sleep(0.1)


def run_shim(
    shim: Path, network: Network, pod: Pod, command: str, prev_result: object = None
) -> str:
    """Exec the shim as a runtime does and return its stdout; raise on a non-zero exit."""
    config: dict[str, object] = dict(network.plugin)
    config["cniVersion"] = network.cni_version
    config["name"] = network.name
    if prev_result is not None:
        config["prevResult"] = prev_result
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": pod.netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(shim.parent),
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={pod.name}",
    }
    completed = subprocess.run(
        [str(shim)], input=json.dumps(config), env=env, capture_output=True, text=True, timeout=120
    )
    if completed.returncode != 0:
        raise DemoError(
            f"{command} {pod.name}: the shim exited with {completed.returncode}: "
            f"{completed.stdout.strip()}"
        )
    return completed.stdout


def _run(step: str, command: list[str]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr).strip()
        raise DemoError(f"{step}: '{' '.join(command)}' failed: {output}")


def create_pods(count: int, stack: ExitStack) -> list[Pod]:
    run_id = secrets.token_hex(3)
    pods = []
    for index in range(1, count + 1):
        name = f"lwdemo-{run_id}-{index}"
        _run(f"create pod {index}", ["ip", "netns", "add", name])
        stack.callback(subprocess.run, ["ip", "netns", "delete", name], capture_output=True)
        # Runtimes bring the loopback interface up themselves.
        _run(f"create pod {index}", ["ip", "-n", name, "link", "set", "lo", "up"])
        pods.append(
            Pod(
                name=f"pod-{index}",
                netns=f"/run/netns/{name}",
                container_id=f"{name}-{secrets.token_hex(8)}",
            )
        )
    return pods


def print_table(pods: list[Pod], network: Network) -> None:
    print()
    print(f"{'POD':<8} {'ADDRESS':<20} {'INTERFACE':<10} {'MAC':<18} NETNS")
    for pod in pods:
        result = pod.result or {}
        interfaces = result.get("interfaces") or []
        ips = result.get("ips") or [{}]
        if not isinstance(interfaces, list) or not isinstance(ips, list):
            raise DemoError(f"read the ADD result of {pod.name}: unexpected shape: {result}")
        # The pod's interface is the one its first address points at.
        index = ips[0].get("interface", len(interfaces) - 1)
        interface = interfaces[index] if 0 <= index < len(interfaces) else {}
        print(
            f"{pod.name:<8} {ips[0].get('address', ''):<20} {interface.get('name', ''):<10} "
            f"{interface.get('mac', ''):<18} {pod.netns}"
        )
    print(f"(network {network.name}, pool {network.pool}, bridge {network.bridge})")
    print()


def ping_all(pods: list[Pod], bridge: str) -> int:
    pings = 0
    for source in pods:
        for target in pods:
            if source is target:
                continue
            netns_name = Path(source.netns).name
            _run(
                f"ping {target.name} from {source.name}",
                ["ip", "netns", "exec", netns_name, "ping", "-c", "1", "-W", "2", target.address],
            )
            pings += 1
    for target in pods:
        # Bound to the bridge, so that the packet can only go to our pods.
        _run(
            f"ping {target.name} from the node",
            ["ping", "-c", "1", "-W", "2", "-I", bridge, target.address],
        )
        pings += 1
    return pings


def demo(args: argparse.Namespace) -> None:
    if args.pods < 1:
        raise DemoError(f"check options: --pods {args.pods} must be at least 1")
    shim = Path(args.bin_dir) / "leasewire"
    if not os.access(shim, os.X_OK):
        raise DemoError(
            f"find the shim: {shim} is missing; "
            f"run 'leasewire install-cni --bin-dir {args.bin_dir}' first"
        )
    network = find_network(Path(args.conf_dir))
    try:
        host, port = parse_listen(args.listen)
        default_pool_spec(network.pool, args.pool_cidr)
    except ValueError as error:
        raise DemoError(f"check options: {error}") from None
    ipamd_url = base_url(host, port)

    with ExitStack() as stack:
        ensure_daemon(args, network, ipamd_url, stack)
        _note_pool_cidr(ipamd_url, network.pool, args.pool_cidr)
        if not link_exists(network.bridge):
            # Registered before the pods, so it runs after their DEL.
            stack.callback(_remove_idle_bridge, network.bridge)
        pods = create_pods(args.pods, stack)

        for pod in pods:
            # Registered before ADD: a DEL after a failed ADD is what runtimes do too.
            stack.callback(_delete_quietly, shim, network, pod)
            pod.result = json.loads(run_shim(shim, network, pod, "ADD"))
        print_table(pods, network)

        pings = ping_all(pods, network.bridge)
        print(f"{pings} pings answered: every pod reached every other pod and the node")

        host_links = [
            name
            for pod in pods
            if pod.result
            for name in host_interfaces(pod.result, network.bridge)
        ]
        for pod in pods:
            run_shim(shim, network, pod, "DEL", pod.result)
            pod.deleted = True
        pool = _ipamd_get(f"{ipamd_url}/v1/pools/{network.pool}")
        assert isinstance(pool, dict)
        print(
            f"deleted {len(pods)} pods; pool {network.pool}: {pool['allocated']} allocated, "
            f"{pool.get('cooling', 0)} cooling (released addresses rest "
            f"{pool.get('cooldownSeconds', 0)} s before reuse), {pool['free']} free"
        )
        if pool["allocated"] != 0:
            raise DemoError(
                f"check the pool: {pool['allocated']} addresses are still allocated after DEL"
            )
        leftovers = [name for name in host_links if link_exists(name)]
        if leftovers:
            raise DemoError(
                f"check the node: host interfaces left after DEL: {', '.join(leftovers)}"
            )
    print("removed the demo namespaces and interfaces; nothing left behind")


def _note_pool_cidr(ipamd_url: str, pool_name: str, requested: str) -> None:
    """Say so when the pool exists already with another CIDR than --pool-cidr."""
    pool = _ipamd_get(f"{ipamd_url}/v1/pools/{pool_name}")
    if isinstance(pool, dict) and pool.get("cidr") != requested:
        print(
            f"note: pool {pool_name} exists with CIDR {pool.get('cidr')}; "
            f"--pool-cidr {requested} applies only when the pool is created"
        )


def _remove_idle_bridge(bridge: str) -> None:
    """Remove the bridge that the demo's pods made, unless something else uses it now."""
    ports = subprocess.run(
        ["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True
    ).stdout
    if ports.strip():
        print(f"kept the bridge {bridge}: other interfaces use it", file=sys.stderr)
        return
    subprocess.run(["ip", "link", "delete", bridge, "type", "bridge"], capture_output=True)


def _delete_quietly(shim: Path, network: Network, pod: Pod) -> None:
    if pod.deleted:
        return
    try:
        run_shim(shim, network, pod, "DEL", pod.result)
    except (DemoError, subprocess.TimeoutExpired) as error:
        print(f"cleanup: {error}", file=sys.stderr)


def host_interfaces(result: dict[str, object], bridge: str) -> list[str]:
    """Return the host-side interfaces that an ADD result names, other than the shared bridge."""
    interfaces = result.get("interfaces") or []
    assert isinstance(interfaces, list)
    return [str(i["name"]) for i in interfaces if not i.get("sandbox") and i.get("name") != bridge]


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def main(args: argparse.Namespace) -> int:
    try:
        demo(args)
    except DemoError as error:
        print(f"demo failed at step: {error}", file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print(f"demo failed at step: read the pool from ipamd: {error}", file=sys.stderr)
        return 1
    return 0
