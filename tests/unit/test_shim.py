"""The CNI shim, run as runtimes run it: a subprocess with CNI env and stdin.

Each test runs both the source file (``python -I -S leasewire/cni/shim.py``)
and the copy that ``install-cni`` writes, exec'd through its shebang.
"""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

import leasewire.cni
from leasewire.cni.install import install

SHIM_SOURCE = Path(leasewire.cni.__file__).with_name("shim.py")
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
CNI_VARIABLES = (
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
)


@pytest.fixture(params=["source", "installed"])
def shim_command(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """Return the argv that runs the shim: the source file or the installed copy."""
    if request.param == "source":
        return [sys.executable, "-I", "-S", str(SHIM_SOURCE)]
    shim_path, _ = install(
        bin_dir=tmp_path / "bin",
        conf_dir=tmp_path / "net.d",
        conf_name=None,
        network="shimtest",
        pool="shimtest",
        driver="bridge",
        bridge="lwt0",
        mtu=1500,
        socket_path=None,
    )
    return [str(shim_path)]


def run_shim(
    command: list[str],
    env: dict[str, str],
    stdin: bytes,
    *,
    cwd: Path | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[bytes]:
    """Run the shim with only ``env`` (plus PATH), as a runtime's exec would."""
    return subprocess.run(
        command,
        input=stdin,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        cwd=cwd or "/",
        timeout=timeout,
        check=False,
    )


def add_env(**overrides: str) -> dict[str, str]:
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c0ffee01",
        "CNI_NETNS": "/run/netns/cnitest",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod1",
        "CNI_PATH": "/opt/cni/bin",
    }
    env.update(overrides)
    return env


def network_config(socket_path: Path, version: str = "1.0.0") -> bytes:
    config = {
        "cniVersion": version,
        "name": "shimtest",
        "type": "leasewire",
        "pool": "shimtest",
        "socket": str(socket_path),
    }
    return json.dumps(config).encode()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """Return a directory with a short path: unix socket paths must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="lwt", dir="/tmp") as directory:
        yield Path(directory)


# ---- VERSION -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0"])
def test_version_echoes_config_version(shim_command: list[str], version: str) -> None:
    # libcni's probe: CNI_COMMAND=VERSION plus dummy values that must not be used.
    env = {
        "CNI_COMMAND": "VERSION",
        "CNI_CONTAINERID": "",
        "CNI_NETNS": "dummy",
        "CNI_IFNAME": "dummy",
        "CNI_PATH": "dummy",
        "CNI_ARGS": "",
    }
    result = run_shim(shim_command, env, json.dumps({"cniVersion": version}).encode())

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer == {"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}


@pytest.mark.parametrize("stdin", [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'{"cniVersion": 3}'])
def test_version_with_unusable_stdin(shim_command: list[str], stdin: bytes) -> None:
    result = run_shim(shim_command, {"CNI_COMMAND": "VERSION"}, stdin)

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["cniVersion"] == "1.1.0"
    assert answer["supportedVersions"] == SUPPORTED_VERSIONS


# ---- node daemon not reachable ----------------------------------------------


def test_add_without_daemon_is_error_11(shim_command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "absent.sock"
    result = run_shim(shim_command, add_env(), network_config(missing))

    assert result.returncode != 0
    error = json.loads(result.stdout)
    assert error["code"] == 11
    assert error["cniVersion"] == "1.0.0"
    assert str(missing) in error["msg"]
    assert "leasewire node" in error["details"]
    assert "leasewire up" in error["details"]


def test_status_without_daemon_is_error_50(shim_command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "absent.sock"
    env = {"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin"}

    result = run_shim(shim_command, env, network_config(missing, version="1.1.0"))

    assert result.returncode != 0
    error = json.loads(result.stdout)
    assert error["code"] == 50
    assert "node daemon" in error["msg"]
    assert str(missing) in error["msg"]


def test_add_with_dead_socket_is_error_11(shim_command: list[str], socket_dir: Path) -> None:
    # A socket file whose owner is gone: bound, never listening.
    path = socket_dir / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
        result = run_shim(shim_command, add_env(), network_config(path))

    assert result.returncode != 0
    error = json.loads(result.stdout)
    assert error["code"] == 11
    assert "leasewire node" in error["details"]


def test_silent_daemon_times_out_with_error_11(shim_command: list[str], socket_dir: Path) -> None:
    # The kernel completes the connection from the backlog, so the shim sends
    # its request and then waits for an answer that never comes.
    path = socket_dir / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(path))
        silent.listen(4)
        started = time.monotonic()
        result = run_shim(
            shim_command, add_env(LEASEWIRE_SHIM_TIMEOUT="1"), network_config(path), timeout=20
        )
        elapsed = time.monotonic() - started

    assert result.returncode != 0
    error = json.loads(result.stdout)
    assert error["code"] == 11
    assert "1 s" in error["msg"]
    assert elapsed >= 1.0
    assert elapsed < 10.0


# ---- forwarding to the node daemon ------------------------------------------


@dataclass
class Reply:
    """What the fake node daemon sends back, in the raw format."""

    stdout: bytes = b""
    exit_code: int = 0
    stderr: bytes = b""
    timings: str = ""
    status: int = 200
    # Replaces the Leasewire-* headers, to send an answer the shim cannot read.
    headers: dict[str, str] | None = None


@dataclass
class Request:
    method: str
    path: str
    env: dict[bytes, bytes]
    stdin: bytes


@dataclass
class Exchange:
    """What the fake node daemon received, and what it sends back."""

    reply: Reply
    requests: list[Request] = field(default_factory=list)


def parse_body(body: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """Split a raw request body into the CNI variables and stdin."""
    block, separator, stdin = body.partition(b"\0\0")
    assert separator, f"no empty entry ends the variables: {body!r}"
    env = {}
    for entry in block.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        assert equals, f"entry without '=': {entry!r}"
        env[name] = value
    return env, stdin


class _Handler(BaseHTTPRequestHandler):
    server: _NodeServer

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        env, stdin = parse_body(self.rfile.read(length))
        exchange = self.server.exchange
        exchange.requests.append(Request(self.command, self.path, env, stdin))

        reply = exchange.reply
        headers = reply.headers
        if headers is None:
            headers = {
                "Leasewire-Exit-Code": str(reply.exit_code),
                "Leasewire-Stderr-Length": str(len(reply.stderr)),
                "Leasewire-Timings": reply.timings,
            }
        payload = reply.stderr + reply.stdout
        self.send_response(reply.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        # The default writes the client address, which a unix socket lacks.
        pass


class _NodeServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, exchange: Exchange) -> None:
        self.exchange = exchange
        super().__init__(str(path), _Handler)


@contextmanager
def fake_node_daemon(path: Path, exchange: Exchange) -> Iterator[None]:
    server = _NodeServer(path, exchange)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_forwards_env_and_stdin_exactly(shim_command: list[str], socket_dir: Path) -> None:
    path = socket_dir / "node.sock"
    result_json = b'{"cniVersion":"1.0.0","interfaces":[],"ips":[]}\n'
    exchange = Exchange(Reply(stdout=result_json, stderr="note ü\n".encode()))
    env = add_env(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=a b;X=ü", XDG_RUNTIME_DIR="")
    # Key order, spacing and non-ASCII text must reach the daemon unchanged.
    stdin = network_config(path)[:-1] + ', "zzz": "ü",  "args": {"cni": {}}}'.encode()

    with fake_node_daemon(path, exchange):
        result = run_shim(shim_command, env, stdin)

    assert result.returncode == 0, result.stderr
    assert result.stdout == result_json
    assert result.stderr.decode() == "note ü\n"
    assert len(exchange.requests) == 1
    request = exchange.requests[0]
    assert request.method == "POST"
    assert request.path == "/v1/cni/raw"
    assert request.stdin == stdin
    assert request.env == {name.encode(): env[name].encode() for name in CNI_VARIABLES}


def test_forwards_unset_variables_as_empty(shim_command: list[str], socket_dir: Path) -> None:
    path = socket_dir / "node.sock"
    exchange = Exchange(Reply())

    with fake_node_daemon(path, exchange):
        result = run_shim(shim_command, {"CNI_COMMAND": "DEL"}, network_config(path))

    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    expected = {name.encode(): b"DEL" if name == "CNI_COMMAND" else b"" for name in CNI_VARIABLES}
    assert exchange.requests[0].env == expected


def test_relative_netns_made_absolute(
    shim_command: list[str], socket_dir: Path, tmp_path: Path
) -> None:
    path = socket_dir / "node.sock"
    exchange = Exchange(Reply())

    with fake_node_daemon(path, exchange):
        result = run_shim(
            shim_command, add_env(CNI_NETNS="./netns/x/../pod1"), network_config(path), cwd=tmp_path
        )

    assert result.returncode == 0, result.stderr
    netns = exchange.requests[0].env[b"CNI_NETNS"]
    assert netns == str(tmp_path / "netns" / "pod1").encode()


@pytest.mark.parametrize("exit_code", [1, 7, 100])
def test_daemon_error_exit_code_passed_on(
    shim_command: list[str], socket_dir: Path, exit_code: int
) -> None:
    path = socket_dir / "node.sock"
    error_json = json.dumps({"cniVersion": "1.0.0", "code": 7, "msg": "invalid mtu -1"}).encode()
    exchange = Exchange(Reply(stdout=error_json, exit_code=exit_code, status=400))

    with fake_node_daemon(path, exchange):
        result = run_shim(shim_command, add_env(), network_config(path))

    assert result.returncode == exit_code
    assert result.stdout == error_json


def test_timings_printed_when_asked(shim_command: list[str], socket_dir: Path) -> None:
    path = socket_dir / "node.sock"
    reply = Reply(timings="ipamd=0.250000,netlink=0.5,total=1.000000")
    with fake_node_daemon(path, Exchange(reply)):
        quiet = run_shim(shim_command, add_env(CNI_COMMAND="DEL"), network_config(path))
        loud = run_shim(
            shim_command,
            add_env(CNI_COMMAND="DEL", LEASEWIRE_SHIM_TIMINGS="1"),
            network_config(path),
        )

    assert b"leasewire-timings" not in quiet.stderr
    (line,) = [item for item in loud.stderr.decode().splitlines() if "leasewire-timings" in item]
    timings = json.loads(line.split(" ", 1)[1])
    assert timings["ipamd"] == 0.25
    assert timings["netlink"] == 0.5
    assert timings["total"] == 1.0
    assert 0 < timings["shimRoundTrip"] < 10
    assert loud.stdout == b""


def test_unreadable_daemon_answer_is_error_11(shim_command: list[str], socket_dir: Path) -> None:
    path = socket_dir / "node.sock"
    exchange = Exchange(Reply(stdout=b'{"unexpected": true}', status=500, headers={}))

    with fake_node_daemon(path, exchange):
        result = run_shim(shim_command, add_env(), network_config(path))

    assert result.returncode != 0
    error = json.loads(result.stdout)
    assert error["code"] == 11
    assert "HTTP 500" in error["msg"]
    assert error["details"] == '{"unexpected": true}'


def test_old_daemon_answer_is_error_11(shim_command: list[str], socket_dir: Path) -> None:
    # A node daemon from before the raw format answers 404 to /v1/cni/raw.
    path = socket_dir / "node.sock"
    exchange = Exchange(Reply(stdout=b"404: Not Found", status=404, headers={}))

    with fake_node_daemon(path, exchange):
        result = run_shim(shim_command, add_env(), network_config(path))

    assert result.returncode != 0
    error = json.loads(result.stdout)
    assert error["code"] == 11
    assert "HTTP 404" in error["msg"]
    assert "upgrade" in error["msg"]


# ---- start-up cost -----------------------------------------------------------


def _imported_modules(stderr: str) -> set[str]:
    """Return the top-level names of the modules that -X importtime listed."""
    names = set()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.rstrip().endswith("imported package"):
            continue
        name = line.rsplit("|", 1)[-1].strip()
        names.add(name.split(".")[0])
    return names


def _import_shim(tmp_path: Path, command: str) -> set[str]:
    result = run_shim(
        [sys.executable, "-X", "importtime", "-I", "-S", str(SHIM_SOURCE)],
        add_env(CNI_COMMAND=command),
        network_config(tmp_path / "absent.sock"),
    )
    return _imported_modules(result.stderr.decode())


@pytest.mark.parametrize("command", ["VERSION", "ADD"])
def test_shim_imports_only_stdlib(tmp_path: Path, command: str) -> None:
    modules = _import_shim(tmp_path, command)

    # The list must be real: the shim imports _socket itself.
    assert "_socket" in modules
    third_party = modules - set(sys.stdlib_module_names) - set(sys.builtin_module_names)
    assert third_party == set()


@pytest.mark.parametrize("command", ["VERSION", "ADD"])
def test_shim_skips_slow_modules(tmp_path: Path, command: str) -> None:
    modules = _import_shim(tmp_path, command)

    # Each of these costs the shim milliseconds at every exec.
    for slow in ("json", "socket", "os", "re", "enum", "collections"):
        assert slow not in modules
