"""CNI shim: the executable that container runtimes call.

It answers VERSION by itself and forwards every other verb, with the CNI
environment and the network configuration unchanged, to the node daemon over
HTTP/1.1 on a unix socket; then it prints the daemon's stdout and exits with
its code.

Runtimes exec a plugin for every pod and podman probes VERSION on every
command, so this module imports only the standard library and nothing it can
do without: ``leasewire install-cni`` copies it, as a single file, behind a
``python3 -I -S`` shebang.
"""

import json
import os
import socket
import sys

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DEFAULT_SOCKET = "/run/leasewire/node.sock"
# How long to wait for the node daemon's answer, in seconds. Runtimes kill a
# plugin when their own deadline passes (kubelet's default is 4 minutes for
# the whole sandbox), so the shim gives up first and returns "try again later".
TIMEOUT_SECONDS = float(os.environ.get("LEASEWIRE_SHIM_TIMEOUT", "60"))
START_HINT = "start it with 'leasewire node' (or 'leasewire up' on a single machine)"

CNI_VARIABLES = (
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
)

ERR_IO = 5
ERR_DECODE = 6
ERR_TRY_AGAIN_LATER = 11


def _print_error(code: int, msg: str, details: str = "", version: str = "1.1.0") -> int:
    error: dict[str, object] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        error["details"] = details
    sys.stdout.write(json.dumps(error) + "\n")
    return 1


def _read_stdin() -> bytes | None:
    if sys.stdin is None:
        return None
    try:
        return sys.stdin.buffer.read()
    except OSError:
        return None


def _version_of(raw: str | bytes) -> str:
    """Return the cniVersion of the config, or "1.1.0" when it cannot be read."""
    try:
        config = json.loads(raw)
        version = config.get("cniVersion") if isinstance(config, dict) else None
    except ValueError:
        version = None
    return version if isinstance(version, str) and version else "1.1.0"


def _socket_path(raw: str) -> str:
    try:
        config = json.loads(raw)
    except ValueError:
        return DEFAULT_SOCKET
    path = config.get("socket") if isinstance(config, dict) else None
    return path if isinstance(path, str) and path else DEFAULT_SOCKET


def _exchange(path: str, body: bytes) -> tuple[int, bytes]:
    """POST the body to /v1/cni on the unix socket and return (status, payload)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_SECONDS)
    try:
        sock.connect(path)
        head = (
            "POST /v1/cni HTTP/1.1\r\n"
            "Host: leasewire-node\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(head.encode("ascii") + body)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()

    response = b"".join(chunks)
    head_bytes, _, payload = response.partition(b"\r\n\r\n")
    status_line = head_bytes.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, payload


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    raw = _read_stdin()

    if command == "VERSION":
        # The reference plugins never read stdin for VERSION; an unusable one
        # still gets an answer.
        version = _version_of(raw) if raw else "1.1.0"
        answer = {"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}
        sys.stdout.write(json.dumps(answer) + "\n")
        return 0

    if raw is None:
        return _print_error(ERR_IO, "failed to read the network configuration from stdin")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return _print_error(
            ERR_DECODE, "the network configuration on stdin is not UTF-8", str(error)
        )

    version = _version_of(text)
    env = {name: os.environ.get(name, "") for name in CNI_VARIABLES}
    # Runtimes may pass a relative netns path; the daemon runs in another
    # working directory.
    if env["CNI_NETNS"] and not env["CNI_NETNS"].startswith("/"):
        env["CNI_NETNS"] = os.path.abspath(env["CNI_NETNS"])
    body = json.dumps({"env": env, "stdin": text}).encode("utf-8")

    path = _socket_path(text)
    try:
        status, payload = _exchange(path, body)
    except (FileNotFoundError, ConnectionRefusedError) as error:
        return _print_error(
            ERR_TRY_AGAIN_LATER,
            f"leasewire node daemon is not running: {path}: {error.strerror}",
            START_HINT,
            version,
        )
    except TimeoutError:
        return _print_error(
            ERR_TRY_AGAIN_LATER,
            f"leasewire node daemon did not answer within {TIMEOUT_SECONDS:g} s on {path}",
            "check its log; the runtime retries the call later",
            version,
        )
    except OSError as error:
        return _print_error(
            ERR_TRY_AGAIN_LATER,
            f"failed to reach the leasewire node daemon on {path}: {error}",
            START_HINT,
            version,
        )

    try:
        answer = json.loads(payload)
        stdout = answer["stdout"]
        exit_code = int(answer["exitCode"])
        stderr = answer.get("stderr", "")
    except (ValueError, KeyError, TypeError):
        return _print_error(
            ERR_TRY_AGAIN_LATER,
            f"the leasewire node daemon on {path} sent an unreadable answer (HTTP {status})",
            payload[:500].decode("utf-8", "replace"),
            version,
        )

    if stderr:
        sys.stderr.write(stderr)
    sys.stdout.write(stdout)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
