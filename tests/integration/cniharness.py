"""A CNI runtime for tests that follows libcni's rules for conflists.

It execs plugins the way libcni does: all six CNI_* variables (unused ones
empty) on top of an inherited environment, the plugin found as a regular
file in the CNI_PATH directories, and the per-plugin request built from the
conflist (cniVersion, name, runtimeConfig for declared capabilities only,
prevResult). ADD runs forward and chains prevResult, DEL runs in reverse,
CHECK forward, both with the cached result; GC first DELs the cached
attachments that are not valid, then sends GC with both list keys to
1.1.0 lists; STATUS stops at the first error. Results are cached per
(network, container id, ifname) and the entry is dropped after DEL.

Debian's runtimes speak CNI 1.0.0 at most, so this is what exercises 1.1.0,
GC and STATUS.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# CNI versions in order, for "is this version at least that one".
ORDER = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


class CniCallError(Exception):
    """A plugin returned an error object; ``code`` and ``msg`` are its fields."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str) -> None:
        super().__init__(f"{plugin} {command} failed with code {code}: {msg} {details}".strip())
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg


def at_least(version: str, minimum: str) -> bool:
    return ORDER.index(version) >= ORDER.index(minimum)


def _flag(value: object) -> bool:
    # libcni accepts booleans and the strings "true"/"false".
    return value is True or (isinstance(value, str) and value.lower() == "true")


@dataclass
class Attachment:
    container_id: str
    netns: str
    ifname: str
    args: str = ""
    capability_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class CniHarness:
    conflist: dict[str, Any]
    bin_dirs: list[Path]
    cache_dir: Path
    # Extra environment every plugin inherits, e.g. LEASEWIRE_SHIM_TIMEOUT.
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        name: str = self.conflist["name"]
        return name

    @property
    def version(self) -> str:
        version: str = self.conflist["cniVersion"]
        return version

    def plugins(self) -> list[dict[str, Any]]:
        plugins: list[dict[str, Any]] = self.conflist["plugins"]
        return plugins

    def _find(self, plugin_type: str) -> Path:
        if "/" in plugin_type:
            raise ValueError(f"invalid plugin type {plugin_type!r}: it contains '/'")
        for directory in self.bin_dirs:
            candidate = directory / plugin_type
            if candidate.is_file():
                return candidate
        search = ":".join(str(directory) for directory in self.bin_dirs)
        raise FileNotFoundError(f"failed to find plugin {plugin_type!r} in path [{search}]")

    def _request(
        self, plugin: dict[str, Any], attachment: Attachment | None, previous: Any
    ) -> dict[str, Any]:
        request = dict(plugin)
        request["cniVersion"] = self.version
        request["name"] = self.name
        capabilities = plugin.get("capabilities") or {}
        if attachment is not None:
            runtime_config = {
                key: value
                for key, value in attachment.capability_args.items()
                if capabilities.get(key)
            }
            if runtime_config:
                request["runtimeConfig"] = runtime_config
        if previous is not None:
            request["prevResult"] = previous
        return request

    def _exec(
        self, plugin: dict[str, Any], command: str, env: Mapping[str, str], request: dict[str, Any]
    ) -> Any:
        executable = self._find(plugin["type"])
        full_env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            **self.environment,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": env.get("CNI_CONTAINERID", ""),
            "CNI_NETNS": env.get("CNI_NETNS", ""),
            "CNI_IFNAME": env.get("CNI_IFNAME", ""),
            "CNI_ARGS": env.get("CNI_ARGS", ""),
            "CNI_PATH": os.pathsep.join(str(directory) for directory in self.bin_dirs),
        }
        completed = subprocess.run(
            [str(executable)],
            input=json.dumps(request),
            env=full_env,
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
            check=False,
        )
        if completed.returncode != 0:
            # The error object is on stdout; libcni falls back to stderr.
            try:
                error = json.loads(completed.stdout)
            except ValueError:
                error = {"code": 999, "msg": completed.stderr.strip() or completed.stdout}
            raise CniCallError(
                plugin["type"],
                command,
                int(error.get("code", 999)),
                str(error.get("msg", "")),
                str(error.get("details", "")),
            )
        if command == "ADD":
            return json.loads(completed.stdout)
        return None

    @staticmethod
    def _env(attachment: Attachment) -> dict[str, str]:
        return {
            "CNI_CONTAINERID": attachment.container_id,
            "CNI_NETNS": attachment.netns,
            "CNI_IFNAME": attachment.ifname,
            "CNI_ARGS": attachment.args,
        }

    def _cache_path(self, container_id: str, ifname: str) -> Path:
        return self.cache_dir / f"{self.name}-{container_id}-{ifname}"

    def cached(self, container_id: str, ifname: str) -> dict[str, Any] | None:
        path = self._cache_path(container_id, ifname)
        if not path.exists():
            return None
        entry: dict[str, Any] = json.loads(path.read_text())
        return entry

    def add(self, attachment: Attachment) -> Any:
        previous: Any = None
        for plugin in self.plugins():
            request = self._request(plugin, attachment, previous)
            previous = self._exec(plugin, "ADD", self._env(attachment), request)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {
            "result": previous,
            "netns": attachment.netns,
            "args": attachment.args,
            "capabilityArgs": attachment.capability_args,
        }
        self._cache_path(attachment.container_id, attachment.ifname).write_text(json.dumps(entry))
        return previous

    def _cached_result(self, attachment: Attachment) -> Any:
        entry = self.cached(attachment.container_id, attachment.ifname)
        # libcni sends no prevResult to 0.3.x lists.
        if entry is None or not at_least(self.version, "0.4.0"):
            return None
        return entry["result"]

    def delete(self, attachment: Attachment) -> None:
        previous = self._cached_result(attachment)
        for plugin in reversed(self.plugins()):
            request = self._request(plugin, attachment, previous)
            self._exec(plugin, "DEL", self._env(attachment), request)
        self._cache_path(attachment.container_id, attachment.ifname).unlink(missing_ok=True)

    def check(self, attachment: Attachment) -> None:
        if not at_least(self.version, "0.4.0") or _flag(self.conflist.get("disableCheck")):
            return
        previous = self._cached_result(attachment)
        for plugin in self.plugins():
            request = self._request(plugin, attachment, previous)
            self._exec(plugin, "CHECK", self._env(attachment), request)

    def gc(self, valid: list[tuple[str, str]]) -> list[CniCallError]:
        """DEL the cached attachments that are not valid, then send GC; return the errors."""
        errors: list[CniCallError] = []
        if _flag(self.conflist.get("disableGC")):
            return errors
        prefix = f"{self.name}-"
        for path in sorted(self.cache_dir.glob(f"{prefix}*")):
            container_id, _, ifname = path.name[len(prefix) :].rpartition("-")
            if (container_id, ifname) in valid:
                continue
            entry = json.loads(path.read_text())
            try:
                self.delete(
                    Attachment(
                        container_id=container_id,
                        netns=entry["netns"],
                        ifname=ifname,
                        args=entry["args"],
                        capability_args=entry["capabilityArgs"],
                    )
                )
            except CniCallError as error:
                errors.append(error)
        if not at_least(self.version, "1.1.0"):
            return errors
        attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
        for plugin in self.plugins():
            request = self._request(plugin, None, None)
            request["cni.dev/valid-attachments"] = attachments
            request["cni.dev/attachments"] = attachments
            try:
                self._exec(plugin, "GC", {}, request)
            except CniCallError as error:
                errors.append(error)
        return errors

    def status(self) -> None:
        if not at_least(self.version, "1.1.0"):
            return
        for plugin in self.plugins():
            self._exec(plugin, "STATUS", {}, self._request(plugin, None, None))

    def version_probe(self, plugin_type: str) -> Any:
        """Run VERSION as libcni's probe does, with its dummy environment."""
        executable = self._find(plugin_type)
        completed = subprocess.run(
            [str(executable)],
            input=json.dumps({"cniVersion": self.version}),
            env={
                "PATH": "/usr/bin:/bin",
                "CNI_COMMAND": "VERSION",
                "CNI_CONTAINERID": "",
                "CNI_NETNS": "dummy",
                "CNI_IFNAME": "dummy",
                "CNI_PATH": "dummy",
                "CNI_ARGS": "",
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(completed.stdout)
