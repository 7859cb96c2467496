"""Boot one VM for every test in this folder and collect the guest's check results.

The VM runs Debian's kernel (extracted by scripts/setup.sh into
LEASEWIRE_VM_KERNEL_ROOT, default /opt/leasewire/vm-kernel/root) under QEMU's
software emulation, through virtme-ng, which shares the host's file system
read-only, so the guest uses the project's venv as it is. QEMU emulates an
Intel 82576 (igb) with SR-IOV. The guest module tests/vm/guest.py writes one
result per check into a directory shared read-write with the VM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
KERNEL_ROOT = Path(os.environ.get("LEASEWIRE_VM_KERNEL_ROOT", "/opt/leasewire/vm-kernel/root"))
VNG = Path(sys.executable).with_name("vng")
BOOT_TIMEOUT_SECONDS = 540


def kernel_image() -> Path:
    images = sorted(KERNEL_ROOT.glob("boot/vmlinuz-*"))
    if not images:
        raise FileNotFoundError(
            f"no kernel image under {KERNEL_ROOT}/boot; run scripts/setup.sh, which extracts "
            "Debian's linux-image package there"
        )
    return images[-1]


@pytest.fixture(scope="session")
def vm_results() -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to boot the test VM and create namespaces inside it")
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None, "qemu-system-x86_64 is missing; run scripts/setup.sh"
    assert VNG.exists(), f"{VNG} is missing; install the test extras (pip install -e '.[test]')"
    image = kernel_image()

    shared = Path(tempfile.mkdtemp(prefix="lwt-vm-"))
    results = shared / "results.json"
    guest_log = shared / "guest.log"
    # As a module from the repository root, so that the guest imports the test helpers as
    # tests.vm and tests.integration.
    command = (
        f"cd {REPO} && {sys.executable} -m tests.vm.guest {results} {KERNEL_ROOT}"
        f" > {guest_log} 2>&1"
    )
    env = {**os.environ, "PATH": f"{VNG.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    started = time.monotonic()
    try:
        boot = subprocess.run(
            [
                str(VNG),
                "--run",
                str(image),
                # Nested KVM is not available on every CI machine; emulate instead.
                "--disable-kvm",
                # The microvm machine type has no PCI bus, and igb is a PCI device.
                "--disable-microvm",
                "--memory",
                "1G",
                "--cpus",
                "2",
                "--rwdir",
                str(shared),
                # No -netdev: the NIC is connected to nothing, so no traffic leaves the VM.
                "--qemu-opts=-device igb",
                "--exec",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=BOOT_TIMEOUT_SECONDS,
            env=env,
            check=False,
        )
        elapsed = time.monotonic() - started
        log = guest_log.read_text(errors="replace") if guest_log.exists() else ""
        assert results.exists(), (
            f"the VM wrote no results (vng exit {boot.returncode} after {elapsed:.0f} s)\n"
            f"vng stderr:\n{boot.stderr[-3000:]}\nguest log:\n{log[-3000:]}"
        )
        payload: dict[str, Any] = json.loads(results.read_text())
        payload["_boot_seconds"] = round(elapsed, 1)
        yield payload
    finally:
        shutil.rmtree(shared, ignore_errors=True)
