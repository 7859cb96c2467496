"""The installed shim runs its precompiled code, or its source lines when the
interpreter's bytecode magic number differs, and both return the VERSION result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import leasewire.cni
from leasewire.cni.shimbuild import compiled_shim_text, source_of

SHIM_SOURCE = Path(leasewire.cni.__file__).with_name("shim.py")


@pytest.mark.parametrize("magic_matches", [True, False], ids=["compiled", "source"])
def test_installed_shim_answers_version(tmp_path: Path, magic_matches: bool) -> None:
    text = compiled_shim_text(f"#!{sys.executable} -IS\n", SHIM_SOURCE.read_text())
    assert source_of(text) == SHIM_SOURCE.read_text()
    if not magic_matches:
        assert text.count("\nMAGIC = b") == 1
        text = text.replace("\nMAGIC = b", "\nMAGIC = b'not this interpreter' + b")
    shim = tmp_path / "leasewire"
    shim.write_text(text)
    shim.chmod(0o755)

    result = subprocess.run(
        [str(shim)],
        input=b"{}",
        env={"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION"},
        capture_output=True,
        check=False,
        timeout=30,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["supportedVersions"][-1] == "1.1.0"
