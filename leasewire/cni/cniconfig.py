"""Parse and validate what a CNI runtime sends: the CNI_* environment, CNI_ARGS
and the network configuration. Pure functions, no I/O.

Every problem is raised as a CniError that carries the CNI error code the
runtime gets back, and a message that names the variable, key or value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface
from typing import Any

from leasewire.drivers.base import interface_name_problem

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# Version of an error reply when the configuration names no usable cniVersion.
FALLBACK_VERSION = "1.1.0"

# Error codes defined by the CNI specification.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
# STATUS only: the plugin cannot serve ADD now.
ERR_NOT_AVAILABLE = 50
# STATUS only: existing attachments are degraded (e.g. their bridge is gone).
ERR_DEGRADED = 51
# Plugin-specific codes; the CNI specification reserves 100 and up for these.
ERR_LEASE_REJECTED = 100
ERR_INTERFACE_EXISTS = 101
ERR_ATTACH_FAILED = 102
ERR_CHECK_FAILED = 103
ERR_NETNS_NOT_FOUND = 104
# A device the driver has to take (an SR-IOV VF) is held by another attachment.
ERR_DEVICE_IN_USE = 105
# The IPAM plugin named in "ipam.type" cannot be found or run.
ERR_IPAM_PLUGIN = 106
ERR_INTERNAL = 999

# Driver used when neither the configuration nor the node's attach profile names one.
DEFAULT_DRIVER = "bridge"
DEFAULT_MTU = 1500
MIN_MTU = 68
MAX_MTU = 65535

# Same rules as libcni: a network name and a container id start with an
# alphanumeric character and continue with alphanumerics, "_", "." or "-".
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
MAC_PATTERN = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")

# Top-level keys that the node daemon itself reads or that runtimes add. All
# other top-level keys are passed to the driver as options.
COMMON_KEYS = frozenset(
    {
        "cniVersion",
        "cniVersions",
        "name",
        "type",
        "pool",
        "pools",
        "driver",
        "options",
        "mtu",
        "socket",
        "ipam",
        "dns",
        "args",
        "runtimeConfig",
        "prevResult",
        "capabilities",
        "disableCheck",
        "disableGC",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
    }
)


class CniError(Exception):
    """An error to return to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> str:
        error: dict[str, object] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            error["details"] = self.details
        return json.dumps(error) + "\n"


class Command(StrEnum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    GC = "GC"
    STATUS = "STATUS"
    VERSION = "VERSION"


# Variables that must be set and non-empty for each verb (CNI specification,
# section "Parameters"). CNI_NETNS is optional for DEL: runtimes send it empty
# once the namespace is gone.
REQUIRED_VARIABLES: dict[Command, tuple[str, ...]] = {
    Command.ADD: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.DEL: ("CNI_CONTAINERID", "CNI_IFNAME"),
    Command.CHECK: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.GC: ("CNI_PATH",),
    Command.STATUS: (),
    Command.VERSION: (),
}

# Oldest configuration version that defines each verb.
FIRST_VERSION: dict[Command, str] = {
    Command.CHECK: "0.4.0",
    Command.GC: "1.1.0",
    Command.STATUS: "1.1.0",
}


@dataclass(frozen=True, kw_only=True)
class CniEnv:
    """The CNI_* variables of one call, validated for its verb."""

    command: Command
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: str


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """The network configuration of one call, validated."""

    cni_version: str
    name: str
    # Pools to lease from, one lease each; empty lets ipamd select by its selectors.
    pools: tuple[str, ...]
    # Driver named in the configuration; None lets the node's attach profile decide.
    driver: str | None
    # MTU of the pod interface, in bytes.
    mtu: int
    # Driver-specific keys: the unknown top-level keys, overlaid by "options".
    options: dict[str, object]
    raw: dict[str, Any] = field(repr=False)


def parse_command(env: Mapping[str, str]) -> Command:
    value = env.get("CNI_COMMAND", "")
    if not value:
        raise CniError(ERR_INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    try:
        return Command(value)
    except ValueError:
        known = ", ".join(command.value for command in Command)
        raise CniError(
            ERR_INVALID_ENV, f"unknown CNI_COMMAND: {value}", f"known commands: {known}"
        ) from None


def parse_cni_args(text: str) -> dict[str, str]:
    """Split CNI_ARGS ("K1=V1;K2=V2") into a dict.

    Pairs are split on the first "=", so values may contain "=". Unknown keys
    are kept and ignored by the callers, whether or not IgnoreUnknown is set.
    """
    args: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(
                ERR_INVALID_ENV,
                f"invalid CNI_ARGS pair {pair!r}: expected KEY=VALUE",
                f"CNI_ARGS={text}",
            )
        args[key] = value
    return args


def parse_env(env: Mapping[str, str], command: Command) -> CniEnv:
    """Validate the CNI_* variables for ``command``.

    A variable that is set but empty counts as missing, as in libcni, which
    sends every variable and leaves the unused ones empty.
    """
    missing = [name for name in REQUIRED_VARIABLES[command] if not env.get(name)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")

    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not NAME_PATTERN.match(container_id):
        raise CniError(
            ERR_INVALID_ENV,
            f"invalid CNI_CONTAINERID {container_id!r}: it must start with a letter or digit "
            "and contain only letters, digits, '_', '.' and '-'",
        )
    ifname = env.get("CNI_IFNAME", "")
    if ifname:
        problem = interface_name_problem(ifname)
        if problem:
            raise CniError(ERR_INVALID_ENV, f"invalid CNI_IFNAME {ifname!r}: {problem}")

    return CniEnv(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=env.get("CNI_PATH", ""),
    )


def version_of(text: str) -> str:
    """Return the cniVersion of a configuration for error replies, or a fallback."""
    try:
        config = json.loads(text)
    except ValueError:
        return FALLBACK_VERSION
    version = config.get("cniVersion") if isinstance(config, dict) else None
    return version if isinstance(version, str) and version else FALLBACK_VERSION


def _invalid(key: str, value: object, expected: str) -> CniError:
    return CniError(ERR_INVALID_CONFIG, f"invalid value {value!r} for {key!r}: expected {expected}")


def parse_network_config(text: str) -> NetworkConfig:
    """Decode and validate the network configuration from stdin."""
    if not text.strip():
        raise CniError(ERR_DECODE, "the network configuration on stdin is empty")
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise CniError(
            ERR_DECODE, "failed to decode the network configuration: invalid JSON", str(error)
        ) from None
    if not isinstance(raw, dict):
        raise CniError(ERR_DECODE, "the network configuration is not a JSON object")

    # Without cniVersion a configuration means 0.1.0, which is not supported.
    version = raw.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config requests {version!r}",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    assert isinstance(version, str)

    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _invalid("name", name, "a network name of letters, digits, '_', '.' and '-'")

    pools: list[str] = []
    pool = raw.get("pool")
    if pool is not None:
        if not isinstance(pool, str) or not pool:
            raise _invalid("pool", pool, "the name of an ipamd pool")
        pools.append(pool)
    more_pools = raw.get("pools")
    if more_pools is not None:
        if not isinstance(more_pools, list) or not all(
            isinstance(item, str) and item for item in more_pools
        ):
            raise _invalid("pools", more_pools, "a list of ipamd pool names")
        pools.extend(item for item in more_pools if item not in pools)

    driver = raw.get("driver")
    if driver is not None and (not isinstance(driver, str) or not driver):
        raise _invalid("driver", driver, "the name of an attach driver, e.g. 'bridge'")

    mtu = raw.get("mtu", DEFAULT_MTU)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
        raise _invalid("mtu", mtu, f"an integer from {MIN_MTU} to {MAX_MTU} (bytes)")

    extra = raw.get("options", {})
    if not isinstance(extra, dict):
        raise _invalid("options", extra, "a JSON object of driver options")
    options = {key: value for key, value in raw.items() if key not in COMMON_KEYS}
    options.update(extra)
    # The SR-IOV device plugin's VF arrives in runtimeConfig with the "deviceID"
    # capability. A deviceID or pciBusID in the configuration itself wins.
    if "deviceID" not in options and "pciBusID" not in options:
        device_id = _runtime_config_lookup(raw, "deviceID")
        if device_id is not None:
            options["deviceID"] = device_id

    return NetworkConfig(
        cni_version=version,
        name=name,
        pools=tuple(pools),
        driver=driver,
        mtu=mtu,
        options=options,
        raw=raw,
    )


def runtime_config_value(config: NetworkConfig, key: str) -> object | None:
    """Return runtimeConfig[key], matching the key case-insensitively.

    containerd's go-cni marshals Go structs without JSON tags, so it sends
    "IPs" or "Mac" where the CNI conventions say "ips" and "mac"; Go decoders
    match keys case-insensitively, and so does this.
    """
    return _runtime_config_lookup(config.raw, key)


def _runtime_config_lookup(raw: dict[str, Any], key: str) -> object | None:
    runtime_config = raw.get("runtimeConfig")
    if not isinstance(runtime_config, dict):
        return None
    if key in runtime_config:
        value: object = runtime_config[key]
        return value
    folded = key.casefold()
    for name, value in runtime_config.items():
        if isinstance(name, str) and name.casefold() == folded:
            return value
    return None


def _args_cni_value(config: NetworkConfig, key: str) -> object | None:
    args = config.raw.get("args")
    cni_args = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni_args, dict):
        value: object | None = cni_args.get(key)
        return value
    return None


def requested_addresses(
    config: NetworkConfig, env: CniEnv
) -> tuple[IPv4Address | IPv6Address, ...]:
    """Return the static addresses the runtime requests, in its order; empty if none.

    Sources in the order of precedence the CNI conventions give:
    runtimeConfig "ips", then args.cni "ips", then CNI_ARGS "IP" (podman and
    CRI-O send static addresses that way, comma-separated). The first source
    present wins. A prefix length is ignored, because the pool sets it.
    ipamd puts each address into the pool of the network that contains it
    (for example one IPv4 and one IPv6 address on a dual-stack network).
    """
    candidates: list[tuple[str, object]] = []
    runtime_ips = runtime_config_value(config, "ips")
    if runtime_ips is not None:
        candidates.append(("runtimeConfig.ips", runtime_ips))
    args_ips = _args_cni_value(config, "ips")
    if args_ips is not None:
        candidates.append(("args.cni.ips", args_ips))
    if env.args.get("IP"):
        candidates.append(("CNI_ARGS IP", env.args["IP"].split(",")))

    for source, value in candidates:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _invalid(source, value, "a list of IP addresses")
        if not value:
            continue
        addresses: list[IPv4Address | IPv6Address] = []
        for item in value:
            try:
                text = item.strip()
                address = ip_interface(text).ip if "/" in text else ip_address(text)
            except ValueError:
                raise _invalid(source, item, "an IPv4 or IPv6 address") from None
            if address in addresses:
                raise _invalid(source, value, "each address once")
            addresses.append(address)
        return tuple(addresses)
    return ()


def requested_mac(config: NetworkConfig, env: CniEnv) -> str | None:
    """Return the MAC address the runtime requests for the pod interface, if any.

    Precedence as in the reference bridge plugin: runtimeConfig "mac", then
    args.cni "mac", then CNI_ARGS "MAC" (how podman and CRI-O send it). The
    result is lower-case and colon-separated.
    """
    candidates: list[tuple[str, object]] = []
    runtime_mac = runtime_config_value(config, "mac")
    if runtime_mac is not None:
        candidates.append(("runtimeConfig.mac", runtime_mac))
    args_mac = _args_cni_value(config, "mac")
    if args_mac is not None:
        candidates.append(("args.cni.mac", args_mac))
    if env.args.get("MAC"):
        candidates.append(("CNI_ARGS MAC", env.args["MAC"]))

    for source, value in candidates:
        if not isinstance(value, str) or not MAC_PATTERN.match(value):
            raise _invalid(source, value, "a MAC address such as c2:11:22:33:44:55")
        mac = value.lower().replace("-", ":")
        if int(mac[:2], 16) & 1:
            raise _invalid(source, value, "a unicast MAC address (the first octet is even)")
        return mac
    return None
