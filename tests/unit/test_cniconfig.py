"""Parsing of the CNI environment and network configuration, and result rendering."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_interface

import pytest

from leasewire.cni.cniconfig import (
    CniError,
    Command,
    parse_cni_args,
    parse_command,
    parse_env,
    parse_network_config,
    requested_addresses,
    requested_mac,
)
from leasewire.cni.cniresult import (
    CniResult,
    ResultIP,
    default_route,
    previous_address,
    render_result,
)
from leasewire.cni.errors import to_cni_error
from leasewire.cni.ipamclient import IpamRejectedError, IpamUnavailableError
from leasewire.drivers.base import (
    AttachedInterface,
    DriverError,
    InterfaceExistsError,
    InvalidOptionError,
    NamespaceNotFoundError,
)

ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c0ffee01",
    "CNI_NETNS": "/run/netns/cnitest",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod1;K8S_POD_UID=6a1f",
    "CNI_PATH": "/usr/lib/cni",
}


def config_text(**changes: object) -> str:
    config: dict[str, object] = {
        "cniVersion": "1.1.0",
        "name": "testnet",
        "type": "leasewire",
        "pool": "p1",
    }
    config.update(changes)
    return json.dumps({key: value for key, value in config.items() if value is not None})


def error_of(call: object) -> CniError:
    assert callable(call)
    with pytest.raises(CniError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ADD_ENV["CNI_ARGS"], {"K8S_POD_NAMESPACE": "default", "K8S_POD_UID": "6a1f"}),
        ("IgnoreUnknown=true;K8S_POD_NAME=x", {"K8S_POD_NAME": "x"}),
        ("", {}),
        ("FOO=a=b", {"FOO": "a=b"}),
        ("A=1;;B=", {"A": "1", "B": ""}),
    ],
)
def test_parse_cni_args_cases(text: str, expected: dict[str, str]) -> None:
    args = parse_cni_args(text)

    for key, value in expected.items():
        assert args[key] == value


def test_parse_cni_args_rejects_pair_without_equals() -> None:
    error = error_of(lambda: parse_cni_args("A=1;broken"))

    assert error.code == 4
    assert "broken" in error.msg


def test_parse_command_missing_and_unknown() -> None:
    assert error_of(lambda: parse_command({})).code == 4
    assert "CNI_COMMAND" in error_of(lambda: parse_command({"CNI_COMMAND": ""})).msg
    unknown = error_of(lambda: parse_command({"CNI_COMMAND": "FOO"}))
    assert unknown.code == 4
    assert "FOO" in unknown.msg


def test_parse_env_names_every_missing_variable() -> None:
    env = dict(ADD_ENV, CNI_NETNS="", CNI_IFNAME="")
    del env["CNI_CONTAINERID"]

    error = error_of(lambda: parse_env(env, Command.ADD))

    assert error.code == 4
    assert "[CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME]" in error.msg


def test_parse_env_del_allows_empty_netns() -> None:
    env = parse_env(dict(ADD_ENV, CNI_COMMAND="DEL", CNI_NETNS=""), Command.DEL)

    assert env.netns == ""
    assert env.args["K8S_POD_NAME"] == "pod1"


@pytest.mark.parametrize("container_id", ["_x", "a/b", "a b"])
def test_parse_env_rejects_container_id(container_id: str) -> None:
    error = error_of(lambda: parse_env(dict(ADD_ENV, CNI_CONTAINERID=container_id), Command.ADD))

    assert error.code == 4
    assert "CNI_CONTAINERID" in error.msg


@pytest.mark.parametrize(
    "container_id", ["a" * 64, "default-t1", "working-container", "cnitool-0123456789abcdef0123"]
)
def test_parse_env_accepts_runtime_container_ids(container_id: str) -> None:
    env = parse_env(dict(ADD_ENV, CNI_CONTAINERID=container_id), Command.ADD)

    assert env.container_id == container_id


@pytest.mark.parametrize("ifname", ["a" * 16, "a/b", "a:b", "a b", ".", ".."])
def test_parse_env_rejects_ifname(ifname: str) -> None:
    error = error_of(lambda: parse_env(dict(ADD_ENV, CNI_IFNAME=ifname), Command.ADD))

    assert error.code == 4
    assert "CNI_IFNAME" in error.msg


def test_parse_env_accepts_15_byte_ifname() -> None:
    assert parse_env(dict(ADD_ENV, CNI_IFNAME="n" * 15), Command.ADD).ifname == "n" * 15


@pytest.mark.parametrize("text", ["not json", "", "   ", "[1, 2]"])
def test_parse_config_undecodable(text: str) -> None:
    assert error_of(lambda: parse_network_config(text)).code == 6


@pytest.mark.parametrize("version", [None, "0.2.0", "2.0.0", "1.0", 1])
def test_parse_config_unsupported_version(version: object) -> None:
    error = error_of(lambda: parse_network_config(config_text(cniVersion=version)))

    assert error.code == 1
    assert repr(version) in error.msg
    assert "1.1.0" in error.details


@pytest.mark.parametrize("name", [None, "-x", "a/b", 7])
def test_parse_config_invalid_name(name: object) -> None:
    error = error_of(lambda: parse_network_config(config_text(name=name)))

    assert error.code == 7
    assert "'name'" in error.msg


@pytest.mark.parametrize("mtu", [-1, 0, 67, 65536, "1500", True, 1500.0])
def test_parse_config_invalid_mtu(mtu: object) -> None:
    error = error_of(lambda: parse_network_config(config_text(mtu=mtu)))

    assert error.code == 7
    assert "'mtu'" in error.msg
    assert repr(mtu) in error.msg


def test_parse_config_defaults() -> None:
    config = parse_network_config(config_text())

    # No driver named: the node's attach profile or the bridge driver decides.
    assert (config.driver, config.mtu, config.pools) == (None, 1500, ("p1",))
    assert config.options == {}


def test_parse_config_options_merge() -> None:
    text = config_text(bridge="br-top", hairpin=True, options={"bridge": "br-opt"})

    config = parse_network_config(text)

    assert config.options == {"bridge": "br-opt", "hairpin": True}


def test_parse_config_tolerates_runtime_extras() -> None:
    text = config_text(
        capabilities={"mac": True, "portMappings": True},
        args={"cni": {"labels": [{"key": "app", "value": "x"}], "zzz": 1}},
        runtimeConfig={"io.kubernetes.cri.pod-annotations": {"a": "b"}, "zzz": True},
        deviceID="0000:3b:02.1",
        ipMasq=False,
        dns={},
        **{"cni.dev/zzz": 1},
    )

    config = parse_network_config(text)

    assert config.name == "testnet"
    assert config.options["deviceID"] == "0000:3b:02.1"
    assert "runtimeConfig" not in config.options


def test_requested_address_precedence() -> None:
    env = parse_env(dict(ADD_ENV, CNI_ARGS="IP=10.0.0.9"), Command.ADD)
    both = parse_network_config(
        config_text(runtimeConfig={"ips": ["10.0.0.7/24"]}, args={"cni": {"ips": ["10.0.0.8"]}})
    )
    args_only = parse_network_config(config_text(args={"cni": {"ips": ["10.0.0.8"]}}))

    assert requested_addresses(both, env) == (ip_address("10.0.0.7"),)
    assert requested_addresses(args_only, env) == (ip_address("10.0.0.8"),)
    assert requested_addresses(parse_network_config(config_text()), env) == (
        ip_address("10.0.0.9"),
    )


def test_requested_address_none_by_default() -> None:
    env = parse_env(ADD_ENV, Command.ADD)

    assert requested_addresses(parse_network_config(config_text()), env) == ()


@pytest.mark.parametrize("ips", [["10.0.0.7", "10.0.0.7/24"], ["not-an-ip"], "10.0.0.7"])
def test_requested_address_invalid(ips: object) -> None:
    env = parse_env(ADD_ENV, Command.ADD)
    config = parse_network_config(config_text(runtimeConfig={"ips": ips}))

    assert error_of(lambda: requested_addresses(config, env)).code == 7


def sample_result(gateway: str | None = "10.22.0.1") -> CniResult:
    gateway_address = ip_address(gateway) if gateway else None
    return CniResult(
        interfaces=(
            AttachedInterface(name="lw0", mac="02:00:00:00:00:01"),
            AttachedInterface(name="lwabc", mac="02:00:00:00:00:02"),
            AttachedInterface(name="eth0", mac="02:00:00:00:00:03", sandbox="/run/netns/x"),
        ),
        ips=(ResultIP(address=ip_interface("10.22.0.2/24"), gateway=gateway_address, interface=2),),
        routes=(default_route(gateway_address),) if gateway_address else (),
    )


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_render_result_old_versions_tag_ips(version: str) -> None:
    rendered = render_result(sample_result(), version)

    assert rendered["cniVersion"] == version
    assert rendered["ips"] == [
        {"version": "4", "address": "10.22.0.2/24", "gateway": "10.22.0.1", "interface": 2}
    ]


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_render_result_new_versions(version: str) -> None:
    rendered = render_result(sample_result(), version)

    assert rendered == {
        "cniVersion": version,
        "interfaces": [
            {"name": "lw0", "mac": "02:00:00:00:00:01"},
            {"name": "lwabc", "mac": "02:00:00:00:00:02"},
            {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/x"},
        ],
        "ips": [{"address": "10.22.0.2/24", "gateway": "10.22.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}],
    }


def test_render_result_without_gateway() -> None:
    rendered = render_result(sample_result(gateway=None), "1.0.0")

    assert rendered["ips"] == [{"address": "10.22.0.2/24", "interface": 2}]
    assert "routes" not in rendered


def test_previous_address_found() -> None:
    previous = render_result(sample_result(), "1.1.0")
    config = parse_network_config(config_text(prevResult=previous))

    found = previous_address(config, "eth0", "/run/netns/x")

    assert found.address == ip_interface("10.22.0.2/24")
    assert found.gateway == ip_address("10.22.0.1")


def test_previous_address_missing_or_other_sandbox() -> None:
    bare = parse_network_config(config_text())
    previous = render_result(sample_result(), "0.4.0")
    config = parse_network_config(config_text(prevResult=previous))

    assert error_of(lambda: previous_address(bare, "eth0", "/run/netns/x")).code == 7
    assert error_of(lambda: previous_address(config, "eth0", "/run/netns/y")).code == 103
    assert error_of(lambda: previous_address(config, "net1", "/run/netns/x")).code == 7


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (IpamUnavailableError("http://127.0.0.1:1", "connection refused"), 11),
        (IpamRejectedError(409, "pool_exhausted", "pool p1 has no free address"), 100),
        (IpamRejectedError(404, "pool_not_found", "pool 'p9' not found"), 7),
        (InvalidOptionError("mode", "l4", "unsupported"), 2),
        (InvalidOptionError("master", None, "missing"), 7),
        (NamespaceNotFoundError("gone"), 104),
        (InterfaceExistsError("eth0 exists"), 101),
        (DriverError("netlink failed"), 102),
        (RuntimeError("bug"), 999),
    ],
)
def test_to_cni_error_codes(error: Exception, code: int) -> None:
    assert to_cni_error(error, "http://127.0.0.1:1").code == code


def test_to_cni_error_unsupported_names_key_and_value() -> None:
    error = to_cni_error(InvalidOptionError("mode", "l4", "use l2, l3 or l3s"), "")

    assert "mode" in error.msg
    assert "l4" in error.msg


def test_requested_address_runtime_config_any_case() -> None:
    env = parse_env(ADD_ENV, Command.ADD)
    config = parse_network_config(config_text(runtimeConfig={"IPs": ["10.0.0.7"]}))

    assert requested_addresses(config, env) == (ip_address("10.0.0.7"),)


def test_requested_mac_precedence() -> None:
    env = parse_env(dict(ADD_ENV, CNI_ARGS="IgnoreUnknown=1;MAC=c2:11:22:33:44:03"), Command.ADD)
    runtime = {"mac": "C2:11:22:33:44:01"}
    args = {"cni": {"mac": "c2:11:22:33:44:02"}}

    all_three = parse_network_config(config_text(runtimeConfig=runtime, args=args))
    args_only = parse_network_config(config_text(args=args))
    plain = parse_network_config(config_text())

    assert requested_mac(all_three, env) == "c2:11:22:33:44:01"
    assert requested_mac(args_only, env) == "c2:11:22:33:44:02"
    assert requested_mac(plain, env) == "c2:11:22:33:44:03"
    assert requested_mac(plain, parse_env(ADD_ENV, Command.ADD)) is None


@pytest.mark.parametrize("mac", ["zz:11:22:33:44:55", "c2:11:22:33:44", "c3:11:22:33:44:55"])
def test_requested_mac_invalid(mac: str) -> None:
    env = parse_env(ADD_ENV, Command.ADD)
    config = parse_network_config(config_text(runtimeConfig={"mac": mac}))

    error = error_of(lambda: requested_mac(config, env))

    assert error.code == 7
    assert mac in error.msg


def test_render_result_appends_to_previous() -> None:
    previous = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "dummy0"}],
        "ips": [{"address": "192.0.2.10/32", "interface": 0}],
    }

    rendered = render_result(sample_result(), "1.1.0", previous)

    assert rendered["interfaces"][0] == {"name": "dummy0"}  # type: ignore[index]
    assert len(rendered["interfaces"]) == 4  # type: ignore[arg-type]
    assert rendered["ips"] == [
        {"address": "192.0.2.10/32", "interface": 0},
        {"address": "10.22.0.2/24", "gateway": "10.22.0.1", "interface": 3},
    ]


def test_render_result_converts_previous_version() -> None:
    previous = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "dummy0"}],
        "ips": [{"address": "2001:db8::5/64", "interface": 0}],
    }

    rendered = render_result(sample_result(), "0.4.0", previous)

    assert rendered["ips"][0] == {  # type: ignore[index]
        "address": "2001:db8::5/64",
        "interface": 0,
        "version": "6",
    }


def test_render_result_dns() -> None:
    result = sample_result()
    with_dns = CniResult(
        interfaces=result.interfaces,
        ips=result.ips,
        routes=result.routes,
        dns={"nameservers": ["10.22.0.53"], "search": ["svc.local"], "options": []},
    )

    assert render_result(with_dns, "1.0.0")["dns"] == {
        "nameservers": ["10.22.0.53"],
        "search": ["svc.local"],
    }
    assert "dns" not in render_result(result, "1.0.0")
