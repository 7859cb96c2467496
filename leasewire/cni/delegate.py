"""Executable IPAM plugins: when the configuration's ``ipam.type`` names one
(host-local, static, dhcp, ...), the node daemon runs it instead of asking ipamd.

The plugin is found as the first regular file named exactly like the type in
the CNI_PATH directories, gets the complete network configuration on stdin and
the call's CNI_* variables, and its stderr goes to the runtime with ours.
``DelegatedLeases`` gives ADD the same three calls as ipamd's client (lease,
confirm, release), so the ADD path, its rollback included, stays the same.
Without an ``ipam`` object, or with ``"type": "leasewire"``, ipamd serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import ip_interface, ip_network
from pathlib import Path
from typing import Any, Protocol

from leasewire.api import LeaseState, Owner
from leasewire.cni.cniconfig import (
    ERR_INVALID_CONFIG,
    ERR_IPAM_PLUGIN,
    ERR_TRY_AGAIN_LATER,
    CniEnv,
    CniError,
    Command,
    NetworkConfig,
    parse_env,
    parse_network_config,
)
from leasewire.cni.ipamclient import LeaseRequest, NodeLease
from leasewire.cni.journal import PluginCall
from leasewire.cni.timings import measure

logger = logging.getLogger(__name__)

# ``ipam.type`` values that mean leasewire's own ipamd.
OWN_IPAM_TYPES = frozenset({"leasewire"})
# Seconds an IPAM plugin may take for one call before it is killed.
PLUGIN_TIMEOUT = 60.0
# PATH of the plugin process, for plugins that run other programs.
PLUGIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

_stderr: ContextVar[list[str] | None] = ContextVar("leasewire_plugin_stderr", default=None)


@contextmanager
def collect_stderr() -> Iterator[list[str]]:
    """Collect the stderr of the IPAM plugins that the current call runs."""
    chunks: list[str] = []
    token = _stderr.set(chunks)
    try:
        yield chunks
    finally:
        _stderr.reset(token)


def find_plugin(plugin_type: str, search_path: str) -> Path:
    """Return the first regular file named ``plugin_type`` in the ``search_path`` directories."""
    if "/" in plugin_type:
        raise CniError(
            ERR_INVALID_CONFIG,
            f"invalid ipam.type {plugin_type!r}: a plugin type must not contain '/'",
            "name an executable in a CNI_PATH directory",
        )
    for directory in search_path.split(os.pathsep):
        if not directory:
            continue
        candidate = Path(directory) / plugin_type
        if candidate.is_file():
            return candidate
    raise CniError(
        ERR_IPAM_PLUGIN,
        f"failed to find IPAM plugin {plugin_type!r} in CNI_PATH [{search_path}]",
        "install the plugin in one of these directories or fix ipam.type",
    )


@dataclass(frozen=True)
class IpamPlugin:
    """An executable IPAM plugin and the CNI call it serves."""

    type: str
    executable: Path
    config: NetworkConfig
    env: CniEnv

    def cni_variables(self) -> dict[str, str]:
        """Return the CNI_* variables of the call, CNI_COMMAND aside."""
        return {
            "CNI_CONTAINERID": self.env.container_id,
            "CNI_NETNS": self.env.netns,
            "CNI_IFNAME": self.env.ifname,
            "CNI_ARGS": ";".join(f"{key}={value}" for key, value in self.env.args.items()),
            "CNI_PATH": self.env.path,
        }

    def journal_entry(self) -> PluginCall:
        """Build the ADD journal's entry from which a restarted daemon can run the plugin's DEL."""
        return PluginCall(config=dict(self.config.raw), env=self.cni_variables())

    async def run(self, command: Command) -> dict[str, Any] | None:
        """Run the plugin for ``command``; return its result for ADD, raise its error."""
        env = {"PATH": PLUGIN_PATH, "CNI_COMMAND": command.value, **self.cni_variables()}
        with measure("ipam-plugin"):
            process = await asyncio.create_subprocess_exec(
                str(self.executable),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd="/",
            )
            try:
                stdout, stderr = await asyncio.wait_for(
                    process.communicate(json.dumps(self.config.raw).encode()), PLUGIN_TIMEOUT
                )
            except TimeoutError:
                process.kill()
                await process.wait()
                raise CniError(
                    ERR_TRY_AGAIN_LATER,
                    f"IPAM plugin {self.type!r} ({self.executable}) did not answer "
                    f"{command.value} within {PLUGIN_TIMEOUT:.0f} s",
                ) from None
        text = stderr.decode(errors="replace")
        chunks = _stderr.get()
        if text and chunks is not None:
            chunks.append(text if text.endswith("\n") else text + "\n")
        if process.returncode != 0:
            raise self._error(command, process.returncode or 0, stdout, text)
        if command is not Command.ADD:
            return None
        try:
            result = json.loads(stdout)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise CniError(
                ERR_IPAM_PLUGIN,
                f"IPAM plugin {self.type!r} printed no result object for ADD",
                stdout.decode(errors="replace")[:500],
            )
        return result

    def _error(self, command: Command, exit_code: int, stdout: bytes, stderr: str) -> CniError:
        try:
            error = json.loads(stdout)
        except ValueError:
            error = None
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            return CniError(
                error["code"],
                f"IPAM plugin {self.type!r}: {error.get('msg', '')}",
                str(error.get("details", "")),
            )
        return CniError(
            ERR_IPAM_PLUGIN,
            f"IPAM plugin {self.type!r} failed {command.value} with exit code {exit_code}",
            (stderr or stdout.decode(errors="replace")).strip()[-500:],
        )


def ipam_plugin(config: NetworkConfig, env: CniEnv) -> IpamPlugin | None:
    """Return the executable IPAM plugin that the configuration names, or None for ipamd."""
    ipam = config.raw.get("ipam")
    if ipam is None:
        return None
    if not isinstance(ipam, dict):
        raise CniError(ERR_INVALID_CONFIG, f"invalid value {ipam!r} for 'ipam': expected an object")
    plugin_type = ipam.get("type")
    if plugin_type is None or plugin_type in OWN_IPAM_TYPES:
        return None
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CniError(
            ERR_INVALID_CONFIG,
            f"invalid value {plugin_type!r} for 'ipam.type': expected the name of an IPAM plugin",
        )
    return IpamPlugin(plugin_type, find_plugin(plugin_type, env.path), config, env)


def plugin_for_del(call: PluginCall) -> IpamPlugin:
    """Rebuild the plugin of a journaled ADD for its DEL. Raises CniError when that fails.

    The configuration and variables are validated again, and the plugin is
    looked up again in CNI_PATH, because it may have been removed since.
    """
    config = parse_network_config(json.dumps(call.config))
    env = parse_env({**call.env, "CNI_COMMAND": Command.DEL.value}, Command.DEL)
    plugin = ipam_plugin(config, env)
    if plugin is None:
        raise CniError(
            ERR_INVALID_CONFIG,
            f"the journaled configuration of network {config.name!r} names no IPAM plugin",
        )
    return plugin


def leases_from_result(result: dict[str, Any], plugin: IpamPlugin, owner: Owner) -> list[NodeLease]:
    """Turn an IPAM plugin's ADD result into leases, one per IP, in the result's order.

    Each route goes with the first lease of its family, so that a route
    without "gw" uses that lease's gateway, as ipamd's pool routes do.
    """
    ips = result.get("ips")
    if not isinstance(ips, list) or not ips:
        raise CniError(
            ERR_IPAM_PLUGIN,
            f"IPAM plugin {plugin.type!r} returned no IPs",
            json.dumps(result)[:500],
        )
    entries: list[dict[str, Any]] = []
    try:
        for ip in ips:
            address = ip_interface(ip["address"])
            entries.append(
                {
                    "pool": f"ipam:{plugin.type}",
                    "address": str(address),
                    "gateway": ip.get("gateway") or None,
                    "state": LeaseState.PENDING,
                    "owner": owner,
                    "network": plugin.config.name,
                    "routes": [],
                    "dns": {},
                    "version": address.version,
                }
            )
        for route in result.get("routes") or []:
            family = ip_network(route["dst"], strict=False).version
            target = next((entry for entry in entries if entry["version"] == family), entries[0])
            target["routes"].append({"dst": route["dst"], "gw": route.get("gw") or None})
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CniError(
            ERR_IPAM_PLUGIN,
            f"IPAM plugin {plugin.type!r} returned an unusable result: {error!r}",
            json.dumps(result)[:500],
        ) from None
    dns = result.get("dns")
    if isinstance(dns, dict):
        entries[0]["dns"] = dns
    return [NodeLease.model_validate(entry) for entry in entries]


class LeaseSource(Protocol):
    """Source of ADD's addresses: ipamd's client or an executable IPAM plugin."""

    async def create_leases(self, request: LeaseRequest) -> tuple[list[NodeLease], bool]: ...

    async def confirm_leases(
        self, owner: Owner, driver: str, options: dict[str, object]
    ) -> list[NodeLease]: ...

    async def release_leases(
        self, owner: Owner, *, network: str | None = None, created_before: str | None = None
    ) -> list[NodeLease]: ...


class DelegatedLeases:
    """Leases of an executable IPAM plugin, with the calls of ipamd's client.

    The ADD journal records the plugin before its ADD runs, so a node daemon
    killed mid-ADD, even while the plugin runs, runs the plugin's DEL on restart.
    """

    def __init__(self, plugin: IpamPlugin) -> None:
        self.plugin = plugin

    async def create_leases(self, request: LeaseRequest) -> tuple[list[NodeLease], bool]:
        """Run the plugin's ADD; the allocation counts as this call's, so rollback undoes it.

        A failed ADD may have allocated something, so the plugin's DEL runs
        before the error is returned, as the CNI specification recommends for a
        plugin that delegates.
        """
        try:
            result = await self.plugin.run(Command.ADD)
        except CniError as error:
            try:
                await self.plugin.run(Command.DEL)
            except CniError as cleanup:
                logger.warning(
                    "IPAM plugin %r failed DEL after its failed ADD (%s): %s",
                    self.plugin.type,
                    error.msg,
                    cleanup.msg,
                )
            raise
        assert result is not None
        return leases_from_result(result, self.plugin, request.owner), True

    async def confirm_leases(
        self, owner: Owner, driver: str, options: dict[str, object]
    ) -> list[NodeLease]:
        # The plugin keeps its allocation from ADD on, so there is nothing to confirm.
        return []

    async def release_leases(
        self, owner: Owner, *, network: str | None = None, created_before: str | None = None
    ) -> list[NodeLease]:
        await self.plugin.run(Command.DEL)
        return []
