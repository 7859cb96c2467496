"""``leasewire install-cni``: the installed shim, the conflist, and their errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import leasewire.cni
from leasewire.cli import main as cli_main
from leasewire.cni.install import HOST_PYTHON, default_interpreter, python_version
from leasewire.cni.shimbuild import source_of
from leasewire.durable import write_atomically

SHIM_SOURCE = Path(leasewire.cni.__file__).with_name("shim.py")


def install_cni(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run install-cni as a user runs it, in a subprocess."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "leasewire.cli",
            "install-cni",
            "--bin-dir",
            str(tmp_path / "bin"),
            "--conf-dir",
            str(tmp_path / "net.d"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_install_writes_executable_shim(tmp_path: Path) -> None:
    result = install_cni(tmp_path)

    assert result.returncode == 0, result.stderr
    shim = tmp_path / "bin" / "leasewire"
    assert stat.S_IMODE(shim.stat().st_mode) == 0o755
    first_line, rest = shim.read_text().split("\n", 1)
    assert first_line == f"#!{default_interpreter()} -IS"
    assert source_of(rest) == SHIM_SOURCE.read_text()
    assert str(shim) in result.stdout


def test_install_prefers_host_python(tmp_path: Path) -> None:
    host = python_version(HOST_PYTHON)
    expected = HOST_PYTHON if host is not None and host >= (3, 11) else sys.executable

    assert default_interpreter() == expected


def test_install_uses_given_python(tmp_path: Path) -> None:
    result = install_cni(tmp_path, "--python", sys.executable)

    assert result.returncode == 0, result.stderr
    first_line = (tmp_path / "bin" / "leasewire").read_text().split("\n", 1)[0]
    assert first_line == f"#!{sys.executable} -IS"
    assert f"runs {sys.executable}" in result.stdout


def test_install_rejects_broken_python(tmp_path: Path) -> None:
    result = install_cni(tmp_path, "--python", "/bin/false")

    assert result.returncode == 1
    assert "invalid interpreter /bin/false" in result.stderr
    assert "--python" in result.stderr
    assert not (tmp_path / "bin" / "leasewire").exists()


def test_install_writes_default_conflist(tmp_path: Path) -> None:
    result = install_cni(tmp_path)

    assert result.returncode == 0, result.stderr
    conf = tmp_path / "net.d" / "10-leasewire.conflist"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert json.loads(conf.read_text()) == {
        "cniVersion": "1.0.0",
        "name": "leasewire",
        "plugins": [
            {
                "type": "leasewire",
                "pool": "default",
                "driver": "bridge",
                "bridge": "lw0",
                "mtu": 1500,
            }
        ],
    }
    assert str(conf) in result.stdout


def test_install_writes_given_options(tmp_path: Path) -> None:
    result = install_cni(
        tmp_path,
        "--network",
        "blue",
        "--pool",
        "blue-pool",
        "--driver",
        "macvlan",
        "--bridge",
        "lwt1",
        "--mtu",
        "9000",
        "--socket",
        "/run/lw-test/node.sock",
        "--conf-name",
        "05-blue.conflist",
    )

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "net.d" / "10-blue.conflist").exists()
    config = json.loads((tmp_path / "net.d" / "05-blue.conflist").read_text())
    assert config["name"] == "blue"
    assert config["plugins"] == [
        {
            "type": "leasewire",
            "pool": "blue-pool",
            "driver": "macvlan",
            "bridge": "lwt1",
            "mtu": 9000,
            "socket": "/run/lw-test/node.sock",
        }
    ]


def test_install_twice_overwrites(tmp_path: Path) -> None:
    assert install_cni(tmp_path, "--pool", "first").returncode == 0
    shim = tmp_path / "bin" / "leasewire"
    shim.write_text("#!/bin/sh\nexit 99\n")

    result = install_cni(tmp_path, "--pool", "second")

    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "net.d" / "10-leasewire.conflist").read_text())
    assert config["plugins"][0]["pool"] == "second"
    assert source_of(shim.read_text()) == SHIM_SOURCE.read_text()
    # No temporary files are left behind by the atomic writes.
    assert sorted(os.listdir(tmp_path / "bin")) == ["leasewire"]
    assert sorted(os.listdir(tmp_path / "net.d")) == ["10-leasewire.conflist"]


def test_installed_shim_runs_in_empty_env(tmp_path: Path) -> None:
    # Runtimes exec the plugin with few variables and cwd "/".
    assert install_cni(tmp_path).returncode == 0

    result = subprocess.run(
        [str(tmp_path / "bin" / "leasewire")],
        input=b'{"cniVersion": "0.4.0"}',
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cniVersion"] == "0.4.0"


def test_uncreatable_bin_dir_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    status = cli_main(
        [
            "install-cni",
            "--bin-dir",
            str(blocker / "bin"),
            "--conf-dir",
            str(tmp_path / "net.d"),
        ]
    )

    assert status == 1
    message = capsys.readouterr().err
    assert str(blocker / "bin") in message
    assert "--bin-dir" in message
    assert not (tmp_path / "net.d").exists()


def test_uncreatable_conf_dir_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    status = cli_main(
        [
            "install-cni",
            "--bin-dir",
            str(tmp_path / "bin"),
            "--conf-dir",
            str(blocker / "net.d"),
        ]
    )

    assert status == 1
    message = capsys.readouterr().err
    assert str(blocker / "net.d") in message
    assert "--conf-dir" in message


@pytest.mark.parametrize("network", ["-x", "a/b", "a b", ""])
def test_invalid_network_name_rejected(tmp_path: Path, network: str) -> None:
    result = install_cni(tmp_path, f"--network={network}")

    assert result.returncode == 1
    assert "invalid network name" in result.stderr
    assert not (tmp_path / "bin" / "leasewire").exists()


@pytest.mark.parametrize("conf_name", ["../escape.conflist", "a/b.conflist", ".."])
def test_conf_name_with_path_rejected(tmp_path: Path, conf_name: str) -> None:
    result = install_cni(tmp_path, "--conf-name", conf_name)

    assert result.returncode == 1
    assert "invalid conflist file name" in result.stderr
    assert not (tmp_path / "escape.conflist").exists()


def test_nonpositive_mtu_rejected(tmp_path: Path) -> None:
    result = install_cni(tmp_path, "--mtu", "0")

    assert result.returncode == 1
    assert "invalid MTU 0" in result.stderr


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "10-keep.conflist"
    target.write_text("old\n")

    # A lone surrogate cannot be encoded, so the write fails half-way.
    with pytest.raises(UnicodeEncodeError):
        write_atomically(target, "new\n\ud800", 0o644)

    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["10-keep.conflist"]
