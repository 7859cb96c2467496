"""An ipamd and a node daemon as subprocesses, and the real shim, for driver tests
that go through the whole path a runtime uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import leasewire.cni

# pytest imports tests/integration as the package "integration" (tests/ is no
# package), while mypy checks it as "tests.integration"; both name one module.
if TYPE_CHECKING:
    from tests.integration.daemons import (
        Ipamd,
        free_port,
        install_fixture_driver,
        start_ipamd,
        start_node_daemon,
        stop,
    )
else:
    from integration.daemons import (
        Ipamd,
        free_port,
        install_fixture_driver,
        start_ipamd,
        start_node_daemon,
        stop,
    )

__all__ = ["install_fixture_driver"]

SHIM = Path(leasewire.cni.__file__).with_name("shim.py")
CLUSTER = "drivers"


@dataclass
class Stack:
    """ipamd on a loopback port and a node daemon on a unix socket, both in ``directory``."""

    directory: Path
    node_name: str
    env: Mapping[str, str]
    processes: list[subprocess.Popen[bytes]]
    ipamd: Ipamd

    @property
    def socket_path(self) -> Path:
        return self.directory / "node.sock"

    @classmethod
    def start(cls, directory: Path, node_name: str, env: Mapping[str, str] | None = None) -> Stack:
        environment = {**os.environ, **(env or {})}
        ipamd, ipamd_process = start_ipamd(directory, free_port(), env=environment)
        try:
            _, node_process = start_node_daemon(
                directory, ipamd.url, cluster=CLUSTER, node_name=node_name, env=environment
            )
        except BaseException:
            stop(ipamd_process)
            raise
        return cls(directory, node_name, environment, [ipamd_process, node_process], ipamd)

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)

    def shim(
        self, command: str, config: dict[str, object], container_id: str, netns: str, ifname: str
    ) -> tuple[int, str]:
        """Run the shim as a runtime does; return its exit code and stdout."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": "",
        }
        full = {"socket": str(self.socket_path), **config}
        result = subprocess.run(
            [sys.executable, str(SHIM)],
            input=json.dumps(full),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode, result.stdout

    def log(self, name: str = "node.log") -> str:
        return (self.directory / name).read_text(errors="replace")


@contextmanager
def running_stack(prefix: str, node_name: str) -> Iterator[Stack]:
    """Start a stack in a new temporary directory; stop it and remove the directory afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    started = Stack.start(directory, node_name)
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(directory, ignore_errors=True)


def put(stack: Stack, path: str, body: dict[str, object]) -> None:
    """PUT ``body`` to ipamd at ``path`` and assert that it was stored."""
    status, payload = stack.ipamd.request("PUT", path, body)
    assert status in (200, 201), payload


def macvlan_profile_network(
    stack: Stack, master: str, *, network: str, cidr: str, gateway: str
) -> dict[str, object]:
    """Create a pool and a macvlan attach profile for the stack's node on ``master``.

    Returns a conflist of ``network`` that names the pool but no driver, so
    that the node's attach profile picks the driver.
    """
    pool = f"pool-{os.urandom(4).hex()}"
    status, payload = stack.ipamd.request(
        "POST", "/v1/pools", {"name": pool, "cidr": cidr, "gateway": gateway}
    )
    assert status == 201, payload
    put(stack, f"/v1/nodes/{stack.node_name}", {"cluster": CLUSTER, "labels": {"wire": "open-l2"}})
    put(
        stack,
        "/v1/attach-profiles/open-l2",
        {"nodeSelector": {"wire": "open-l2"}, "driver": "macvlan", "options": {"master": master}},
    )
    return {"cniVersion": "1.0.0", "name": network, "type": "leasewire", "pool": pool}
