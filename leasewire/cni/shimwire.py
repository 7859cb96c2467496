"""The node daemon's side of the two request formats that CNI shims send.

``POST /v1/cni/raw`` is what the shim sends since it stopped importing
``json`` to start faster. The body is ``NAME=value\\0`` for each CNI variable,
an empty entry (``\\0``), then the network configuration exactly as the
runtime wrote it to stdin. The reply needs no JSON decoding: the exit code in
the ``Leasewire-Exit-Code`` header, the byte length of stderr in
``Leasewire-Stderr-Length``, stage timings as ``name=seconds,...`` in
``Leasewire-Timings``, and a body of stderr followed by stdout.

``POST /v1/cni`` is the JSON format of earlier shims, still served because a
node may run a newer daemon with an older installed shim: ``{"env":
{CNI_*...}, "stdin": "<network config>"}`` in, ``{"stdout", "exitCode",
"stderr", "timings"}`` out.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from leasewire.cni.cniconfig import ERR_DECODE, CniError
from leasewire.cni.verbs import CniReply

RAW_PATH = "/v1/cni/raw"
JSON_PATH = "/v1/cni"
EXIT_CODE_HEADER = "Leasewire-Exit-Code"
STDERR_LENGTH_HEADER = "Leasewire-Stderr-Length"
TIMINGS_HEADER = "Leasewire-Timings"


def parse_raw_request(body: bytes) -> tuple[dict[str, str], str]:
    """Return the CNI environment and the network configuration text of a raw request.

    Raises CniError (code 6) when the body is not in the raw format or stdin is not UTF-8.
    """
    # Every entry holds at least "NAME=", so the first empty entry, a NUL
    # right after a NUL or at the very start, ends the variables.
    if body.startswith(b"\0"):
        block, config = b"", body[1:]
    else:
        end = body.find(b"\0\0")
        if end < 0:
            raise CniError(
                ERR_DECODE,
                "invalid request to the node daemon: the body lacks the empty entry that ends "
                "the CNI variables",
            )
        block, config = body[:end], body[end + 2 :]

    env: dict[str, str] = {}
    # The kernel's environment block cannot hold a NUL, so values need no
    # escaping. Undecodable bytes become surrogates, as in os.environ.
    for entry in block.split(b"\0") if block else ():
        name, equals, value = entry.partition(b"=")
        if not equals:
            raise CniError(
                ERR_DECODE, f"invalid request to the node daemon: entry {entry[:60]!r} has no '='"
            )
        env[name.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    try:
        stdin = config.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CniError(
            ERR_DECODE, "the network configuration on stdin is not UTF-8", str(error)
        ) from error
    return env, stdin


def raw_response(reply: CniReply, status: int = 200) -> web.Response:
    stderr = reply.stderr.encode("utf-8", "backslashreplace")
    stdout = reply.stdout.encode("utf-8", "backslashreplace")
    timings = ",".join(f"{name}={seconds:.6f}" for name, seconds in reply.timings.items())
    headers = {
        EXIT_CODE_HEADER: str(reply.exit_code),
        STDERR_LENGTH_HEADER: str(len(stderr)),
        TIMINGS_HEADER: timings,
    }
    return web.Response(
        body=stderr + stdout,
        status=status,
        headers=headers,
        content_type="application/octet-stream",
    )


def parse_json_request(body: Any) -> tuple[dict[str, str], str]:
    """Return the CNI environment and configuration text of a JSON request body.

    Raises CniError (code 6) unless ``body`` is ``{"env": {name: value}, "stdin": text}``.
    """
    env = body.get("env") if isinstance(body, dict) else None
    stdin = body.get("stdin") if isinstance(body, dict) else None
    if (
        not isinstance(env, dict)
        or not all(isinstance(key, str) and isinstance(value, str) for key, value in env.items())
        or not isinstance(stdin, str)
    ):
        raise CniError(
            ERR_DECODE,
            "invalid request to the node daemon: expected JSON {env: {name: value}, stdin: text}",
        )
    return env, stdin


def json_response(reply: CniReply, status: int = 200) -> web.Response:
    body = {
        "stdout": reply.stdout,
        "exitCode": reply.exit_code,
        "stderr": reply.stderr,
        "timings": reply.timings,
    }
    return web.json_response(body, status=status)
