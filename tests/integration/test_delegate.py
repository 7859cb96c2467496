"""Executable IPAM plugins through the real shim and node daemon: Debian's
host-local from /usr/lib/cni with the bridge driver at cniVersion 1.0.0, and a
small plugin script of the test for GC, STATUS, CHECK and stderr forwarding."""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Network, free_cidr, ip, link_exists, unique_name

REFERENCE_DIR = "/usr/lib/cni"
CNI_PATH = f"/nonexistent:{REFERENCE_DIR}"


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return f"/run/netns/{make_netns()}"


@pytest.fixture
def subnet() -> ipaddress.IPv4Network:
    return free_cidr()


def host_local(network: Network, subnet: ipaddress.IPv4Network, data_dir: Path) -> dict[str, Any]:
    return network.config(
        ipam={"type": "host-local", "subnet": str(subnet), "dataDir": str(data_dir)}
    )


def allocations(data_dir: Path) -> list[str]:
    """Return the addresses that host-local holds: its files named like an IP."""
    found = []
    for path in data_dir.rglob("*"):
        try:
            ipaddress.ip_address(path.name)
        except ValueError:
            continue
        found.append(path.name)
    return found


def test_host_local_add_check_del(
    network: Network, netns: str, subnet: ipaddress.IPv4Network, tmp_path: Path
) -> None:
    config = host_local(network, subnet, tmp_path / "hl")
    path = {"CNI_PATH": CNI_PATH}

    added = network.run("ADD", "pod-hl", netns, config=config, env_changes=path)
    assert added.exit_code == 0, added
    result = added.json
    allocated = allocations(tmp_path / "hl")
    in_pod = ip("-n", Path(netns).name, "-j", "addr", "show", "dev", "eth0").stdout
    checked = network.run(
        "CHECK", "pod-hl", netns, config={**config, "prevResult": result}, env_changes=path
    )
    deleted = network.run(
        "DEL", "pod-hl", netns, config={**config, "prevResult": result}, env_changes=path
    )

    assert result["cniVersion"] == "1.0.0"
    (entry,) = result["ips"]
    address = ipaddress.ip_interface(entry["address"])
    assert address.ip in subnet
    assert address.network == subnet
    pod_interface = result["interfaces"][entry["interface"]]
    assert pod_interface["name"] == "eth0"
    assert pod_interface["sandbox"] == netns
    assert allocated == [str(address.ip)]
    assert str(address.ip) in in_pod
    assert checked.exit_code == 0, checked
    assert deleted.exit_code == 0, deleted
    assert allocations(tmp_path / "hl") == []
    assert not link_exists("eth0", Path(netns).name)


def test_host_local_existing_ifname_leaves_no_allocation(
    network: Network, netns: str, subnet: ipaddress.IPv4Network, tmp_path: Path
) -> None:
    ip("-n", Path(netns).name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")

    output = network.run(
        "ADD",
        "pod-hl-exists",
        netns,
        config=host_local(network, subnet, tmp_path / "hl"),
        env_changes={"CNI_PATH": CNI_PATH},
    )

    assert output.json["code"] == 101, output
    assert allocations(tmp_path / "hl") == []


@pytest.fixture
def not_a_bridge() -> Iterator[str]:
    """A host veth end, which the bridge driver cannot use as the pod's bridge."""
    name = unique_name()
    ip("link", "add", name, "type", "veth", "peer", "name", unique_name())
    yield name
    ip("link", "del", name, check=False)


def test_host_local_released_when_attach_fails(
    network: Network,
    netns: str,
    subnet: ipaddress.IPv4Network,
    tmp_path: Path,
    not_a_bridge: str,
) -> None:
    config = host_local(network, subnet, tmp_path / "hl")
    path = {"CNI_PATH": CNI_PATH}

    # host-local allocates, then the bridge driver fails on a link that is no bridge.
    failed = network.run(
        "ADD", "pod-hl-fail", netns, config={**config, "bridge": not_a_bridge}, env_changes=path
    )
    after_failure = allocations(tmp_path / "hl")
    retried = network.run("ADD", "pod-hl-fail", netns, config=config, env_changes=path)
    after_retry = allocations(tmp_path / "hl")
    network.run("DEL", "pod-hl-fail", netns, config=config, env_changes=path)

    assert failed.exit_code != 0
    assert failed.json["code"] == 102, failed
    assert not_a_bridge in failed.json["msg"]
    # host-local had allocated: its round robin moved on past the first address.
    assert (tmp_path / "hl" / "itestnet" / "last_reserved_ip.0").exists()
    assert after_failure == []
    assert retried.exit_code == 0, retried
    assert after_retry == [str(ipaddress.ip_interface(retried.json["ips"][0]["address"]).ip)]


@pytest.mark.parametrize(
    ("plugin_type", "search", "code", "words"),
    [
        ("host-local", "/nonexistent", 106, ["'host-local'", "/nonexistent"]),
        ("nosuchipam", f"{REFERENCE_DIR}", 106, ["'nosuchipam'", REFERENCE_DIR]),
        ("../host-local", f"{REFERENCE_DIR}", 7, ["'../host-local'", "'/'"]),
    ],
)
def test_plugin_lookup_errors(
    network: Network, netns: str, plugin_type: str, search: str, code: int, words: list[str]
) -> None:
    config = network.config(ipam={"type": plugin_type, "subnet": "10.0.0.0/24"})

    output = network.run(
        "ADD", "pod-lookup", netns, config=config, env_changes={"CNI_PATH": search}
    )

    assert output.json["code"] == code, output
    for word in words:
        assert word in output.json["msg"]


# A plugin that records each call (verb, CNI_* variables, stdin) and fails
# STATUS and CHECK with its own errors; a real subprocess like any plugin.
RECORDING_PLUGIN = """\
#!{python}
import json, os, sys
config = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
entry = {{"command": command, "config": config,
          "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}}}
with open({log!r}, "a") as log:
    log.write(json.dumps(entry) + "\\n")
sys.stderr.write("lwt-ipam says " + command + "\\n")
if command == "STATUS":
    print(json.dumps({{"cniVersion": "1.1.0", "code": 50, "msg": "no addresses left"}}))
    sys.exit(1)
if command == "CHECK":
    print(json.dumps({{"cniVersion": "1.1.0", "code": 103, "msg": "not allocated"}}))
    sys.exit(1)
"""


@pytest.fixture
def recording_plugin(tmp_path: Path) -> tuple[Path, Path]:
    """Return the plugin's directory and its call log."""
    directory = tmp_path / "bin"
    directory.mkdir()
    log = tmp_path / "calls.jsonl"
    script = directory / "lwt-ipam"
    script.write_text(RECORDING_PLUGIN.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    return directory, log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_gc_status_check_del_forwarded(
    network: Network, netns: str, recording_plugin: tuple[Path, Path]
) -> None:
    directory, log = recording_plugin
    network.version = "1.1.0"
    valid = [{"containerID": "pod-kept", "ifname": "eth0"}]
    config = network.config(ipam={"type": "lwt-ipam", "custom": [1, 2]})
    path = {"CNI_PATH": f"/nonexistent:{directory}"}
    previous = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": netns, "mac": "c2:11:22:33:44:55"}],
        "ips": [{"address": "10.9.9.2/24", "interface": 0}],
    }

    gc = network.run(
        "GC", "", "", config={**config, "cni.dev/valid-attachments": valid}, env_changes=path
    )
    status = network.run("STATUS", "", "", config=config, env_changes=path)
    check = network.run(
        "CHECK", "pod-x", netns, config={**config, "prevResult": previous}, env_changes=path
    )
    deleted = network.run("DEL", "pod-x", netns, config=config, env_changes=path)

    assert (gc.exit_code, gc.stdout) == (0, ""), gc
    assert "lwt-ipam says GC" in gc.stderr
    assert status.json["code"] == 50
    assert "no addresses left" in status.json["msg"]
    assert "lwt-ipam says STATUS" in status.stderr
    assert check.json["code"] == 103
    assert "not allocated" in check.json["msg"]
    assert deleted.exit_code == 0, deleted
    recorded = calls(log)
    assert [call["command"] for call in recorded] == ["GC", "STATUS", "CHECK", "DEL"]
    # The complete configuration, unchanged, and the same CNI_* variables.
    assert recorded[0]["config"]["cni.dev/valid-attachments"] == valid
    assert recorded[0]["config"]["ipam"] == {"type": "lwt-ipam", "custom": [1, 2]}
    assert recorded[0]["config"]["name"] == config["name"]
    assert recorded[2]["config"]["prevResult"] == previous
    assert recorded[3]["env"]["CNI_CONTAINERID"] == "pod-x"
    assert recorded[3]["env"]["CNI_NETNS"] == netns
    assert recorded[3]["env"]["CNI_PATH"] == path["CNI_PATH"]
    assert "K8S_POD_NAME=pod" in recorded[3]["env"]["CNI_ARGS"]
