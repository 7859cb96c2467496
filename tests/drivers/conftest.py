"""Fixtures for driver tests on this host's kernel: network namespaces and host links
with unique names, removed afterwards even when the test fails."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create network namespaces and links"
)
ETH_P_ALL = 0x0003


def unique_name(prefix: str = "lwt") -> str:
    return prefix + secrets.token_hex(4)


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed: {result.stderr}"
    return result.stdout


def in_netns(netns: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={netns}", *command], capture_output=True, text=True, check=False
    )


def ping(netns: str, address: str, count: int = 1) -> bool:
    """Ping ``address`` from inside ``netns``; True when every reply came back."""
    result = in_netns(netns, "ping", "-n", "-c", str(count), "-W", "2", address)
    return result.returncode == 0


@dataclass
class Namespaces:
    """Creates named network namespaces and host links, and removes them at the end."""

    names: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def netns(self) -> str:
        name = unique_name("lwtn")
        run("ip", "netns", "add", name)
        self.names.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return f"/run/netns/{name}"

    def veth_pair(self) -> tuple[str, str]:
        """Create an up veth pair on the host and return both names."""
        first, second = unique_name("lwtm"), unique_name("lwtp")
        run("ip", "link", "add", first, "type", "veth", "peer", "name", second)
        self.links.append(first)
        run("ip", "link", "set", first, "up")
        run("ip", "link", "set", second, "up")
        return first, second

    def host_link(self, name: str) -> str:
        self.links.append(name)
        return name

    def cleanup(self) -> None:
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def spaces() -> Iterator[Namespaces]:
    created = Namespaces()
    try:
        yield created
    finally:
        created.cleanup()


class FrameCapture:
    """Collect the frames arriving on a host interface in a background thread."""

    def __init__(self, ifname: str) -> None:
        self.frames: list[bytes] = []
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind((ifname, 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self._sock.recv(2048))
            except TimeoutError:
                continue

    def wait_for(self, match: Callable[[bytes], bool], seconds: float = 3.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(match(frame) for frame in list(self.frames)):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def sysfs_value(path: str) -> str:
    return Path(path).read_text().strip()
