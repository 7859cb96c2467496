"""Helpers of the checks that run inside the test VM: commands, namespaces, ping, assertions."""

from __future__ import annotations

import subprocess


class CheckError(AssertionError):
    pass


def sh(*command: str, check: bool = True) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise CheckError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def netns(name: str) -> str:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return f"/run/netns/{name}"


def ping(path: str, address: str) -> bool:
    result = subprocess.run(
        ["nsenter", f"--net={path}", "ping", "-n", "-c", "1", "-W", "2", address],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckError(message)
