"""``leasewire install-cni``: put the CNI shim and a conflist where runtimes look.

The shim is installed as a copy of ``leasewire/cni/shim.py`` behind a shebang
that names an interpreter with ``-IS``: isolated mode and no ``site``, so it
starts fast and cannot pick up packages from the runtime's environment. The
shim needs only the standard library, so by default it runs on the host's
``/usr/bin/python3`` when that is Python 3.11 or newer, else on the
interpreter that runs install-cni. The host's interpreter does not go away
with a virtual environment, and Debian's build (statically linked, optimized
with profiles) ran the shim in 7.5 ms of CPU against 9.2 ms for a
pyenv-built interpreter with a shared libpython on the development VM. The
copy carries the source as comments and runs it precompiled (``shimbuild``). Both
files are written to a temporary name and renamed into place, because a
runtime may exec the plugin or read the conflist at any moment.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from leasewire.cni.shimbuild import compiled_shim_text
from leasewire.durable import write_atomically

log = logging.getLogger(__name__)

PLUGIN_NAME = "leasewire"
# Debian's runtimes (podman 4.3, containerd 1.6) use libcni 1.1.2, which cannot
# parse a 1.1.0 result, so the conflist sets cniVersion 1.0.0.
CONFLIST_CNI_VERSION = "1.0.0"
# The network names that libcni accepts.
NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
HOST_PYTHON = "/usr/bin/python3"
# The oldest Python that runs the shim's source (the project's own minimum).
SHIM_MIN_PYTHON = (3, 11)


class InstallError(Exception):
    """A file of the installation could not be written."""


def shim_text(interpreter: str) -> str:
    """Return the installed shim for ``interpreter``: shebang, source and compiled code."""
    # Read as a file, not imported: importing would run the shim's module code.
    source = (
        importlib.resources.files("leasewire.cni").joinpath("shim.py").read_text(encoding="utf-8")
    )
    lines = source.splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    # Linux passes everything after the interpreter path as one argument, so
    # both flags go into one word.
    return compiled_shim_text(f"#!{interpreter} -IS\n", "".join(lines))


def python_version(interpreter: str) -> tuple[int, int] | None:
    """Return the (major, minor) version of ``interpreter``, or None when it does not run."""
    try:
        result = subprocess.run(
            [interpreter, "-IS", "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = result.stdout.split()
    if result.returncode != 0 or len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def default_interpreter() -> str:
    """Return the host's python3 if it can run the shim, else the interpreter running this."""
    version = python_version(HOST_PYTHON) if os.access(HOST_PYTHON, os.X_OK) else None
    if version is not None and version >= SHIM_MIN_PYTHON:
        return HOST_PYTHON
    return sys.executable


def conflist(
    *,
    network: str,
    pool: str,
    driver: str,
    bridge: str,
    mtu: int,
    socket_path: str | None,
) -> dict[str, object]:
    """Build the network configuration list for one leasewire network."""
    plugin: dict[str, object] = {
        "type": PLUGIN_NAME,
        "pool": pool,
        "driver": driver,
        "bridge": bridge,
        "mtu": mtu,
    }
    if socket_path:
        plugin["socket"] = socket_path
    return {"cniVersion": CONFLIST_CNI_VERSION, "name": network, "plugins": [plugin]}


def _ensure_dir(path: Path, purpose: str, option: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InstallError(
            f"cannot create the {purpose} {path}: {error.strerror or error}; "
            f"create it yourself or choose another one with {option}"
        ) from error


def install(
    *,
    bin_dir: Path,
    conf_dir: Path,
    conf_name: str | None,
    network: str,
    pool: str,
    driver: str,
    bridge: str,
    mtu: int,
    socket_path: str | None,
    interpreter: str | None = None,
) -> tuple[Path, Path]:
    """Install the shim and the conflist; return their paths.

    ``interpreter`` runs the shim; None picks ``default_interpreter()``.
    Running it again overwrites both files with the current content.
    """
    if interpreter is None:
        interpreter = default_interpreter()
    if not interpreter:
        raise InstallError(
            "cannot tell which Python runs leasewire (sys.executable is empty); run install-cni "
            "with --python /path/to/python3"
        )
    version = python_version(interpreter)
    if version is None or version < SHIM_MIN_PYTHON:
        required = ".".join(map(str, SHIM_MIN_PYTHON))
        found = "does not run" if version is None else "is Python " + ".".join(map(str, version))
        raise InstallError(
            f"invalid interpreter {interpreter}: it {found}, and the shim needs Python {required} "
            "or newer; give another one with --python"
        )
    if not NETWORK_NAME.fullmatch(network):
        raise InstallError(
            f"invalid network name {network!r}: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    if mtu <= 0:
        raise InstallError(f"invalid MTU {mtu}: it must be a positive number of bytes")
    if conf_name is not None and (not conf_name or "/" in conf_name or conf_name in (".", "..")):
        raise InstallError(
            f"invalid conflist file name {conf_name!r}: give a file name without '/'"
        )
    if conf_name is not None and not conf_name.endswith(".conflist"):
        log.warning("podman reads only *.conflist files, so it will not see %s", conf_name)

    _ensure_dir(bin_dir, "CNI plugin directory", "--bin-dir")
    _ensure_dir(conf_dir, "CNI config directory", "--conf-dir")

    shim_path = bin_dir / PLUGIN_NAME
    conf_path = conf_dir / (conf_name or f"10-{network}.conflist")
    config = conflist(
        network=network,
        pool=pool,
        driver=driver,
        bridge=bridge,
        mtu=mtu,
        socket_path=socket_path,
    )

    try:
        write_atomically(shim_path, shim_text(os.path.abspath(interpreter)), 0o755)
    except OSError as error:
        raise InstallError(f"cannot write the CNI shim {shim_path}: {error}") from error
    try:
        write_atomically(conf_path, json.dumps(config, indent=2) + "\n", 0o644)
    except OSError as error:
        raise InstallError(f"cannot write the conflist {conf_path}: {error}") from error

    log.debug("installed the shim for %s and the conflist %s", interpreter, conf_path)
    return shim_path, conf_path


def main(args: argparse.Namespace) -> int:
    """Run ``leasewire install-cni`` with the parsed command-line options."""
    interpreter = args.python or default_interpreter()
    try:
        shim_path, conf_path = install(
            bin_dir=Path(args.bin_dir),
            conf_dir=Path(args.conf_dir),
            conf_name=args.conf_name,
            network=args.network,
            pool=args.pool,
            driver=args.driver,
            bridge=args.bridge,
            mtu=args.mtu,
            socket_path=args.socket,
            interpreter=interpreter,
        )
    except InstallError as error:
        print(f"leasewire install-cni: {error}", file=sys.stderr)
        return 1

    print(f"installed the CNI shim {shim_path} (runs {interpreter})")
    print(f"installed the conflist {conf_path} (network {args.network!r}, pool {args.pool!r})")
    return 0
