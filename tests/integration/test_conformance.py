"""CNI conformance of every verb through the real shim, node daemon and ipamd:
environment and configuration checks, versions, result shapes, chained
prevResult, requested MAC and IPs, CHECK, GC and STATUS."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from leasewire.cni.journal import ATTACHMENTS_DIRECTORY
from leasewire.drivers.netlink import host_veth_name

from .conftest import (
    CLUSTER,
    SHIM,
    Network,
    Pool,
    ip,
    link_exists,
)
from .daemons import Ipamd

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return f"/run/netns/{make_netns()}"


def held(ipamd: Ipamd, network: Network, container_id: str) -> list[dict[str, Any]]:
    owner = {"cluster": CLUSTER, "containerID": container_id, "ifname": "eth0"}
    return [lease for lease in ipamd.leases(network.pool.name) if lease["owner"] == owner]


def check_result_invariants(result: dict[str, Any], ifname: str, netns: str) -> None:
    """The invariants that podman, go-cni and portmap rely on."""
    interfaces = result["interfaces"]
    assert interfaces
    for entry in result["ips"]:
        index = entry["interface"]
        assert 0 <= index < len(interfaces)
    ours = interfaces[result["ips"][-1]["interface"]]
    assert ours["name"] == ifname
    assert ours["sandbox"] == netns
    assert len(ours["mac"].split(":")) == 6


# ---- environment and configuration ---------------------------------------------


@pytest.mark.parametrize(
    ("command", "dropped", "expected"),
    [
        ("ADD", ["CNI_NETNS"], "[CNI_NETNS]"),
        ("ADD", ["CNI_CONTAINERID", "CNI_IFNAME"], "[CNI_CONTAINERID,CNI_IFNAME]"),
        ("DEL", ["CNI_CONTAINERID"], "[CNI_CONTAINERID]"),
        ("CHECK", ["CNI_NETNS"], "[CNI_NETNS]"),
        ("GC", ["CNI_PATH"], "[CNI_PATH]"),
    ],
)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_missing_env_is_error_4(
    network: Network, netns: str, command: str, dropped: list[str], expected: str, how: str
) -> None:
    network.version = "1.1.0"
    changes: dict[str, str | None] = {name: None if how == "unset" else "" for name in dropped}

    output = network.run(command, "pod-env", netns, env_changes=changes)

    assert output.exit_code != 0
    assert output.json["code"] == 4
    assert expected in output.json["msg"]


def test_optional_env_really_optional(network: Network, ipamd: Ipamd) -> None:
    network.version = "1.1.0"
    # STATUS and GC with what libcni sends: the unused variables empty.
    empty = {"CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_IFNAME": "", "CNI_ARGS": ""}

    status = network.run("STATUS", "", "", env_changes=empty)
    gc = network.run("GC", "", "", env_changes=empty)
    deleted = network.run("DEL", "pod-optional", "")

    assert (status.exit_code, status.stdout) == (0, ""), status
    assert (gc.exit_code, gc.stdout) == (0, ""), gc
    assert (deleted.exit_code, deleted.stdout) == (0, ""), deleted


@pytest.mark.parametrize("container_id", ["_x", "a/b", "a b"])
def test_invalid_container_id_creates_nothing(
    network: Network, ipamd: Ipamd, netns: str, container_id: str
) -> None:
    output = network.run("ADD", container_id, netns)

    assert output.json["code"] == 4
    assert ipamd.leases(network.pool.name) == []


@pytest.mark.parametrize("ifname", ["a" * 16, "a/b", "a:b", "a b", ".", ".."])
def test_invalid_ifname_creates_nothing(
    network: Network, ipamd: Ipamd, netns: str, ifname: str
) -> None:
    output = network.run("ADD", "pod-ifname", netns, ifname=ifname)

    assert output.exit_code != 0
    assert output.json["code"] == 4
    assert ipamd.leases(network.pool.name) == []


@pytest.mark.parametrize("version", ["0.2.0", "2.0.0", "1.0", None])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_unsupported_version_is_error_1(
    network: Network, netns: str, version: str | None, command: str
) -> None:
    config = network.config()
    if version is None:
        del config["cniVersion"]
    else:
        config["cniVersion"] = version

    output = network.run(command, "pod-version", netns, config=config)

    assert output.exit_code != 0
    assert output.json["code"] == 1
    assert "1.1.0" in output.json["details"]


@pytest.mark.parametrize(
    ("command", "version"), [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0")]
)
def test_newer_verbs_gated_by_version(
    network: Network, netns: str, command: str, version: str
) -> None:
    network.version = version

    output = network.run(command, "pod-gate", netns)

    assert output.json["code"] == 1
    assert f"does not allow {command}" in output.json["msg"]


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        ({"name": "-x"}, 7, ["name"]),
        ({"mtu": -1}, 7, ["mtu", "-1"]),
        ({"bridge": "a/b"}, 2, ["bridge", "a/b"]),
        ({"driver": "nosuchdriver"}, 7, ["nosuchdriver"]),
    ],
)
def test_invalid_config_names_key_and_value(
    network: Network,
    ipamd: Ipamd,
    netns: str,
    extra: dict[str, object],
    code: int,
    words: list[str],
) -> None:
    output = network.run("ADD", "pod-config", netns, config=network.config(**extra))

    assert output.json["code"] == code, output
    for word in words:
        assert word in output.json["msg"]
    assert ipamd.leases(network.pool.name) == []


@pytest.mark.parametrize("stdin", ["not json", ""])
def test_undecodable_stdin_is_error_6(network: Network, netns: str, stdin: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-I", "-S", str(SHIM)],
        input=stdin,
        env={
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "pod-stdin",
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "LEASEWIRE_SHIM_TIMEOUT": "30",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Without a config the shim cannot name a socket; it tries the default one,
    # so it answers 6 from the daemon or 11 without one. Both are well-formed.
    assert completed.returncode != 0
    assert json.loads(completed.stdout)["code"] in (6, 11)


def test_runtime_extras_tolerated(network: Network, netns: str) -> None:
    network.version = "1.1.0"
    config = network.config(
        capabilities={"mac": True, "portMappings": True},
        args={"cni": {"labels": [{"key": "app", "value": "x"}], "zzz": 1}},
        runtimeConfig={"io.kubernetes.cri.pod-annotations": {"a": "b"}, "zzz": True},
        deviceID="0000:3b:02.1",
        pciBusID="0000:3b:02.1",
        ipMasq=False,
        dns={},
        **{"cni.dev/zzz": 1},
    )

    output = network.run("ADD", "pod-extras", netns, config=config)

    assert output.exit_code == 0, output
    assert output.json["cniVersion"] == "1.1.0"
    check_result_invariants(output.json, "eth0", netns)


def test_add_runtime_execution_environment(network: Network, make_netns: Callable[[], str]) -> None:
    # ctr passes /proc/<pid>/ns/net of the task; a sleeping process stands in for it.
    namespace = make_netns()
    holder = subprocess.Popen(["ip", "netns", "exec", namespace, "sleep", "60"])
    try:
        netns = f"/proc/{holder.pid}/ns/net"
        config = json.dumps(network.config())
        completed = subprocess.run(
            [
                "env",
                "-i",
                "PATH=/usr/bin:/bin",
                "XDG_RUNTIME_DIR=",
                "TRACEPARENT=00-ab-cd-01",
                "CNI_COMMAND=ADD",
                "CNI_CONTAINERID=default-t1",
                f"CNI_NETNS={netns}",
                "CNI_IFNAME=eth0",
                "CNI_ARGS=",
                "CNI_PATH=/opt/cni/bin",
                sys.executable,
                "-I",
                "-S",
                str(SHIM),
            ],
            input=config,
            capture_output=True,
            text=True,
            cwd="/",
            timeout=60,
        )
        assert completed.returncode == 0, completed
        result = json.loads(completed.stdout)
        check_result_invariants(result, "eth0", netns)
    finally:
        holder.kill()
        holder.wait()
    assert network.run("DEL", "default-t1", "").exit_code == 0


# ---- ADD results -----------------------------------------------------------------


def test_add_appends_to_prev_result(network: Network, netns: str) -> None:
    network.version = "1.1.0"
    previous = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "dummy0"}],
        "ips": [{"address": "192.0.2.10/32", "interface": 0}],
    }

    output = network.run("ADD", "pod-chain", netns, config=network.config(prevResult=previous))

    assert output.exit_code == 0, output
    result = output.json
    assert result["interfaces"][0] == {"name": "dummy0"}
    assert result["ips"][0] == {"address": "192.0.2.10/32", "interface": 0}
    assert result["ips"][1]["interface"] == 3
    check_result_invariants(result, "eth0", netns)


@pytest.mark.parametrize("version", VERSIONS)
def test_add_result_shape_per_version(
    network: Network, ipamd: Ipamd, netns: str, version: str
) -> None:
    network.version = version

    output = network.run("ADD", "pod-shape", netns)

    assert output.exit_code == 0, output
    assert output.json["cniVersion"] == version
    check_result_invariants(output.json, "eth0", netns)
    (lease,) = held(ipamd, network, "pod-shape")
    assert lease["state"] == "bound"
    assert lease["driver"] == "bridge"
    assert lease["network"] == "itestnet"


@pytest.mark.parametrize(
    ("runtime_config", "args", "cni_args"),
    [
        ({"mac": "c2:11:22:33:44:55"}, None, ""),
        (None, {"cni": {"mac": "c2:11:22:33:44:55"}}, ""),
        (None, None, "IgnoreUnknown=1;MAC=c2:11:22:33:44:55"),
        (
            {"Mac": "c2:11:22:33:44:55"},
            {"cni": {"mac": "c2:11:22:33:44:66"}},
            "MAC=c2:11:22:33:44:77",
        ),
    ],
    ids=["runtimeConfig", "args", "CNI_ARGS", "all-three"],
)
def test_add_requested_mac(
    network: Network, netns: str, runtime_config: Any, args: Any, cni_args: str
) -> None:
    extra: dict[str, object] = {}
    if runtime_config is not None:
        extra["runtimeConfig"] = runtime_config
    if args is not None:
        extra["args"] = args

    output = network.run("ADD", "pod-mac", netns, config=network.config(**extra), cni_args=cni_args)

    assert output.exit_code == 0, output
    assert output.json["interfaces"][2]["mac"] == "c2:11:22:33:44:55"
    shown = ip("-n", netns.rsplit("/", 1)[1], "link", "show", "dev", "eth0").stdout
    assert "c2:11:22:33:44:55" in shown


@pytest.mark.parametrize("how", ["runtimeConfig-prefix", "runtimeConfig-bare", "args", "CNI_ARGS"])
def test_add_requested_ip(network: Network, ipamd: Ipamd, netns: str, how: str) -> None:
    wanted = str(network.pool.cidr.network_address + 50)
    prefix = network.pool.cidr.prefixlen
    extra: dict[str, object] = {}
    cni_args = ""
    if how == "runtimeConfig-prefix":
        extra["runtimeConfig"] = {"ips": [f"{wanted}/{prefix}"]}
    elif how == "runtimeConfig-bare":
        extra["runtimeConfig"] = {"ips": [wanted]}
    elif how == "args":
        extra["args"] = {"cni": {"ips": [wanted]}}
    else:
        cni_args = f"IgnoreUnknown=1;IP={wanted}"

    output = network.run("ADD", "pod-ip", netns, config=network.config(**extra), cni_args=cni_args)
    taken = network.run(
        "ADD", "pod-ip2", netns, config=network.config(**extra), cni_args=cni_args, ifname="net1"
    )

    assert output.exit_code == 0, output
    assert output.json["ips"][0]["address"] == f"{wanted}/{prefix}"
    assert taken.exit_code != 0
    assert taken.json["code"] >= 100


@pytest.mark.parametrize(
    "cni_args",
    [
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=pod1;"
        "K8S_POD_INFRA_CONTAINER_ID=c0ffee01;K8S_POD_UID=u1",
        "IgnoreUnknown=true;K8S_POD_UID=u1;K8S_POD_NAME=pod1;K8S_POD_NAMESPACE=web",
        "IgnoreUnknown=1;K8S_POD_NAME=ctr_name",
        "",
        "FOO=a=b",
    ],
)
def test_add_cni_args_variants(network: Network, ipamd: Ipamd, netns: str, cni_args: str) -> None:
    output = network.run("ADD", "pod-args", netns, cni_args=cni_args)

    assert output.exit_code == 0, output
    (lease,) = held(ipamd, network, "pod-args")
    if "K8S_POD_UID" in cni_args:
        assert lease["pod"] == {"namespace": "web", "name": "pod1", "uid": "u1"}


def test_add_pool_routes_and_dns(
    network: Network, make_pool: Callable[..., Pool], make_netns: Callable[[], str]
) -> None:
    pool = make_pool(
        routes=[{"dst": "10.99.0.0/16"}],
        dns={"nameservers": ["10.22.0.53"], "search": ["svc.local"]},
    )
    netns = f"/run/netns/{make_netns()}"

    output = network.run("ADD", "pod-routes", netns, config=network.config(pool=pool.name))
    configured = network.run(
        "ADD",
        "pod-routes2",
        f"/run/netns/{make_netns()}",
        config=network.config(pool=pool.name, dns={"nameservers": ["10.0.0.10"]}),
    )

    assert output.exit_code == 0, output
    gateway = str(pool.gateway)
    assert {"dst": "10.99.0.0/16", "gw": gateway} in output.json["routes"]
    assert output.json["dns"] == {"nameservers": ["10.22.0.53"], "search": ["svc.local"]}
    shown = ip("-n", netns.rsplit("/", 1)[1], "route", "show", "10.99.0.0/16").stdout
    assert f"via {gateway}" in shown
    assert configured.exit_code == 0, configured
    assert configured.json["dns"] == {"nameservers": ["10.0.0.10"]}


def test_duplicate_add_keeps_first(network: Network, ipamd: Ipamd, netns: str) -> None:
    first = network.run("ADD", "pod-dup", netns)
    second = network.run("ADD", "pod-dup", netns)

    assert first.exit_code == 0, first
    assert second.exit_code != 0
    assert link_exists(host_veth_name("pod-dup", "eth0"))
    (lease,) = held(ipamd, network, "pod-dup")
    assert lease["address"] == first.json["ips"][0]["address"]
    assert lease["state"] == "bound"


# ---- DEL ---------------------------------------------------------------------------


@pytest.mark.parametrize("previous", ["none", "same", "stale", "0.4.0"])
def test_del_with_and_without_prev_result(
    network: Network, ipamd: Ipamd, netns: str, previous: str
) -> None:
    added = network.run("ADD", "pod-prev", netns)
    assert added.exit_code == 0, added
    config = network.config()
    if previous == "same":
        config["prevResult"] = added.json
    elif previous == "stale":
        stale = json.loads(added.stdout)
        stale["ips"][0]["address"] = "192.0.2.99/24"
        config["prevResult"] = stale
    elif previous == "0.4.0":
        config["cniVersion"] = "0.4.0"
        ips = [dict(item, version="4") for item in added.json["ips"]]
        config["prevResult"] = dict(added.json, cniVersion="0.4.0", ips=ips)

    output = network.run("DEL", "pod-prev", netns, config=config)

    assert (output.exit_code, output.stdout) == (0, ""), output
    assert held(ipamd, network, "pod-prev") == []


# ---- CHECK -------------------------------------------------------------------------


@pytest.fixture
def checked_pod(network: Network, netns: str) -> tuple[str, dict[str, object]]:
    """ADD one pod at 1.1.0 and yield its netns and the CHECK configuration."""
    network.version = "1.1.0"
    added = network.run("ADD", "pod-check", netns)
    assert added.exit_code == 0, added
    return netns, network.config(prevResult=added.json)


def test_check_passes_and_tolerates_additions(
    network: Network, checked_pod: tuple[str, dict[str, object]]
) -> None:
    netns, config = checked_pod
    namespace = netns.rsplit("/", 1)[1]
    ip("-n", namespace, "addr", "add", "192.0.2.77/32", "dev", "eth0")
    ip("-n", namespace, "route", "add", "198.51.100.0/24", "dev", "eth0")

    output = network.run("CHECK", "pod-check", netns, config=config)

    assert (output.exit_code, output.stdout) == (0, ""), output


def test_check_prev_result_from_older_plugin(
    network: Network, checked_pod: tuple[str, dict[str, object]]
) -> None:
    netns, config = checked_pod
    previous = dict(config["prevResult"])  # type: ignore[call-overload]
    previous["cniVersion"] = "1.0.0"

    output = network.run("CHECK", "pod-check", netns, config=dict(config, prevResult=previous))

    assert (output.exit_code, output.stdout) == (0, ""), output


@pytest.mark.parametrize(
    ("drift", "words"),
    [
        (["link", "del", "eth0"], "does not exist"),
        (["route", "del", "default"], "default route"),
        (["link", "set", "eth0", "address", "c2:00:00:00:00:09"], "MAC"),
    ],
    ids=["interface", "route", "mac"],
)
def test_check_detects_drift(
    network: Network, checked_pod: tuple[str, dict[str, object]], drift: list[str], words: str
) -> None:
    netns, config = checked_pod
    ip("-n", netns.rsplit("/", 1)[1], *drift)

    output = network.run("CHECK", "pod-check", netns, config=config)

    assert output.exit_code != 0
    assert output.json["code"] == 103, output
    assert words in output.json["msg"]


def test_check_unplugged_veth_and_other_sandbox(
    network: Network, checked_pod: tuple[str, dict[str, object]]
) -> None:
    netns, config = checked_pod
    previous = json.loads(json.dumps(config["prevResult"]))
    previous["interfaces"][2]["sandbox"] = "/run/netns/elsewhere"
    other = network.run("CHECK", "pod-check", netns, config=dict(config, prevResult=previous))

    ip("link", "set", host_veth_name("pod-check", "eth0"), "nomaster")
    unplugged = network.run("CHECK", "pod-check", netns, config=config)

    assert other.json["code"] == 103
    assert "sandbox" in other.json["msg"]
    assert unplugged.json["code"] == 103
    assert "not attached" in unplugged.json["msg"]


def test_check_needs_prev_result_and_lease(
    network: Network, ipamd: Ipamd, checked_pod: tuple[str, dict[str, object]]
) -> None:
    netns, config = checked_pod
    missing = network.run("CHECK", "pod-check", netns)
    status, _ = ipamd.request(
        "DELETE", f"/v1/leases?cluster={CLUSTER}&containerID=pod-check&ifname=eth0"
    )
    assert status == 200
    released = network.run("CHECK", "pod-check", netns, config=config)

    assert missing.json["code"] == 7
    assert "prevResult" in missing.json["msg"]
    assert released.json["code"] == 103
    assert "no lease" in released.json["msg"]


def test_check_after_netns_gone(
    network: Network, checked_pod: tuple[str, dict[str, object]]
) -> None:
    netns, config = checked_pod
    ip("netns", "del", netns.rsplit("/", 1)[1])

    output = network.run("CHECK", "pod-check", netns, config=config)

    assert output.exit_code != 0
    assert output.json["code"] not in (0, 3)


# ---- GC and STATUS -----------------------------------------------------------------


def gc_config(network: Network, **lists: object) -> dict[str, object]:
    config = network.config()
    config.update(lists)
    return config


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_releases_stale_attachments(
    network: Network, ipamd: Ipamd, make_netns: Callable[[], str], key: str
) -> None:
    network.version = "1.1.0"
    for container_id in ("pod-c1", "pod-c2"):
        assert network.run("ADD", container_id, f"/run/netns/{make_netns()}").exit_code == 0
    empty = {"CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_IFNAME": "", "CNI_ARGS": ""}

    config = gc_config(network, **{key: [{"containerID": "pod-c1", "ifname": "eth0"}]})
    output = network.run("GC", "", "", config=config, env_changes=empty)

    assert (output.exit_code, output.stdout) == (0, ""), output
    assert len(held(ipamd, network, "pod-c1")) == 1
    assert held(ipamd, network, "pod-c2") == []
    assert link_exists(host_veth_name("pod-c1", "eth0"))
    assert not link_exists(host_veth_name("pod-c2", "eth0"))
    # GC also drops the node daemon's record of the released attachment.
    records = network.daemon.socket_path.parent / "state" / ATTACHMENTS_DIRECTORY
    recorded = {
        json.loads(path.read_text())["owner"]["containerID"] for path in records.glob("*.json")
    }
    assert "pod-c1" in recorded
    assert "pod-c2" not in recorded


def test_gc_without_list_releases_nothing(network: Network, ipamd: Ipamd, netns: str) -> None:
    network.version = "1.1.0"
    assert network.run("ADD", "pod-keep", netns).exit_code == 0

    output = network.run("GC", "", "", env_changes={"CNI_CONTAINERID": "", "CNI_IFNAME": ""})

    assert (output.exit_code, output.stdout) == (0, ""), output
    assert "nothing was released" in output.stderr
    assert len(held(ipamd, network, "pod-keep")) == 1


def test_gc_keeps_other_network(network: Network, ipamd: Ipamd, netns: str) -> None:
    network.version = "1.1.0"
    other = network.config(name="othernet")
    assert network.run("ADD", "pod-other", netns, config=other).exit_code == 0

    config = gc_config(network, **{"cni.dev/valid-attachments": []})
    output = network.run("GC", "", "", config=config)

    assert output.exit_code == 0, output
    assert len(held(ipamd, network, "pod-other")) == 1


def test_status_ready_then_exhausted(
    network: Network, make_pool: Callable[..., Pool], make_netns: Callable[[], str]
) -> None:
    network.version = "1.1.0"
    # A /30 with a gateway leaves a single address to lease.
    name = make_pool(prefix=30).name
    config = network.config(pool=name)

    ready = network.run("STATUS", "", "", config=config)
    assert (
        network.run("ADD", "pod-full", f"/run/netns/{make_netns()}", config=config).exit_code == 0
    )
    full = network.run("STATUS", "", "", config=config)
    # STATUS is informational: ADD is still attempted and fails on its own.
    after = network.run("ADD", "pod-more", f"/run/netns/{make_netns()}", config=config)

    assert (ready.exit_code, ready.stdout) == (0, ""), ready
    assert full.json["code"] == 50
    assert "exhausted" in full.json["msg"]
    assert name in full.json["msg"]
    assert after.json["code"] == 100
