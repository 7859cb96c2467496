"""An ipamd and a node daemon as subprocesses, and the real shim, for driver tests
that go through the whole path a runtime uses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import leasewire.cni

SHIM = Path(leasewire.cni.__file__).with_name("shim.py")
LEASEWIRE = Path(sys.executable).with_name("leasewire")
CLUSTER = "drivers"
START_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Ipamd:
    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False


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
        port = free_port()
        stack = cls(directory, node_name, environment, [], Ipamd(f"http://127.0.0.1:{port}"))
        try:
            stack._spawn(
                "ipamd.log",
                "ipamd",
                "--listen",
                f"127.0.0.1:{port}",
                "--database",
                f"sqlite+aiosqlite:///{directory}/ipamd.db",
            )
            stack._wait(stack.ipamd.healthy, "ipamd")
            stack._spawn(
                "node.log",
                "node",
                "--socket",
                str(stack.socket_path),
                "--ipamd",
                stack.ipamd.url,
                "--cluster",
                CLUSTER,
                "--node-name",
                node_name,
                "--state-dir",
                str(directory / "state"),
            )
            stack._wait(stack.socket_path.exists, "node daemon")
        except BaseException:
            stack.stop()
            raise
        return stack

    def _spawn(self, log_name: str, *args: str) -> None:
        with (self.directory / log_name).open("ab") as log:
            self.processes.append(
                subprocess.Popen(
                    [str(LEASEWIRE), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env
                )
            )

    def _wait(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            process = self.processes[-1]
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with code {process.returncode} at start-up")
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what} did not start within {START_SECONDS} s")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

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
