"""CNI shim: the executable that container runtimes call.

It answers VERSION by itself and forwards every other verb, with the CNI
environment and the network configuration unchanged, to the node daemon over
HTTP/1.1 on a unix socket; then it prints the daemon's stdout and exits with
its code.

Runtimes exec a plugin for every pod and podman probes VERSION on every
command, so this module imports only the standard library and nothing it can
do without: ``leasewire install-cni`` copies it, as a single file, behind a
``python3 -I -S`` shebang. It imports no ``json``, ``socket`` or ``os``,
because these pull in ``re``, ``enum`` and ``collections`` and would more
than double the start time of the bare interpreter. Hence the small JSON
helpers below and the raw protocol to the node daemon:

- request: ``POST /v1/cni/raw``; the body is ``NAME=value\\0`` for each CNI
  variable, an empty entry (``\\0``), then stdin unchanged.
- reply: the exit code in ``Leasewire-Exit-Code``, the length of stderr in
  ``Leasewire-Stderr-Length``, stage timings as ``name=seconds,...`` in
  ``Leasewire-Timings``; the body is stderr followed by stdout.
"""

import _socket
import posix
import sys
import time

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
FALLBACK_VERSION = "1.1.0"
DEFAULT_SOCKET = "/run/leasewire/node.sock"
ENV = posix.environ
# How long to wait for the node daemon's answer, in seconds. Runtimes kill a
# plugin when their own deadline passes (kubelet's default is 4 minutes for
# the whole sandbox), so the shim gives up first and returns "try again later".
try:
    TIMEOUT_SECONDS = float(ENV.get(b"LEASEWIRE_SHIM_TIMEOUT", b"60"))
except ValueError:
    TIMEOUT_SECONDS = 60.0
START_HINT = "start it with 'leasewire node' (or 'leasewire up' on a single machine)"

CNI_VARIABLES = (
    b"CNI_COMMAND",
    b"CNI_CONTAINERID",
    b"CNI_NETNS",
    b"CNI_IFNAME",
    b"CNI_ARGS",
    b"CNI_PATH",
)

ERR_IO = 5
ERR_DECODE = 6
ERR_TRY_AGAIN_LATER = 11
# STATUS only: the plugin cannot serve ADD.
ERR_NOT_AVAILABLE = 50

# ---- JSON without the json module -------------------------------------------

_ESCAPES = {index: f"\\u{index:04x}" for index in range(0x20)}
_ESCAPES.update({0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f"})
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
_UNESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WHITESPACE = " \t\n\r"
_NUMBER_CHARS = "0123456789+-.eE"


def json_string(text: str) -> str:
    """Return ``text`` as a JSON string literal, quotes included.

    A lone surrogate (an undecodable byte of the environment) stays in the
    result; ``_write`` turns it into a ``\\udcXX`` escape.
    """
    return '"' + text.translate(_ESCAPES) + '"'


def _write(text: str) -> None:
    """Write ``text`` to stdout as UTF-8.

    backslashreplace only touches the characters that UTF-8 cannot encode, the
    lone surrogates, and writes each as the JSON escape ``\\udcXX``.
    """
    sys.stdout.buffer.write(text.encode("utf-8", "backslashreplace"))


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _parse_string(text: str, pos: int) -> tuple[str, int]:
    """Parse the JSON string that starts at ``pos``; return it and the position after it."""
    if text[pos] != '"':
        raise ValueError(pos)
    parts = []
    pos += 1
    while True:
        quote = text.index('"', pos)
        backslash = text.find("\\", pos, quote)
        end = quote if backslash < 0 else backslash
        chunk = text[pos:end]
        if chunk and min(chunk) < " ":
            raise ValueError(pos)
        parts.append(chunk)
        if backslash < 0:
            return "".join(parts), quote + 1
        escape = text[backslash + 1]
        if escape != "u":
            parts.append(_UNESCAPES[escape])
            pos = backslash + 2
            continue
        code = int(text[backslash + 2 : backslash + 6], 16)
        pos = backslash + 6
        # A surrogate pair written as two escapes is one character.
        if 0xD800 <= code < 0xDC00 and text.startswith("\\u", pos):
            low = int(text[pos + 2 : pos + 6], 16)
            if 0xDC00 <= low < 0xE000:
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                pos += 6
        parts.append(chr(code))


def _skip_value(text: str, pos: int) -> int:
    """Return the position after the JSON value at ``pos``; raise ValueError if it is invalid."""
    char = text[pos]
    if char == '"':
        return _parse_string(text, pos)[1]
    if char == "{" or char == "[":
        close = "}" if char == "{" else "]"
        pos = _skip_space(text, pos + 1)
        if text[pos] == close:
            return pos + 1
        while True:
            if char == "{":
                pos = _skip_space(text, _parse_string(text, pos)[1])
                if text[pos] != ":":
                    raise ValueError(pos)
                pos = _skip_space(text, pos + 1)
            pos = _skip_space(text, _skip_value(text, pos))
            if text[pos] == close:
                return pos + 1
            if text[pos] != ",":
                raise ValueError(pos)
            pos = _skip_space(text, pos + 1)
    # json.loads also accepts NaN and the infinities, which json.dumps writes for floats.
    for literal in ("true", "false", "null", "NaN", "Infinity", "-Infinity"):
        if text.startswith(literal, pos):
            return pos + len(literal)
    end = pos
    while end < len(text) and text[end] in _NUMBER_CHARS:
        end += 1
    float(text[pos:end])
    return end


def top_level_strings(text: str) -> dict[str, str]:
    """Return the members of the JSON object ``text`` whose values are strings.

    Returns an empty dict when ``text`` is not a JSON object. Like
    ``json.loads``, the last of duplicate keys wins.
    """
    found: dict[str, str] = {}
    try:
        pos = _skip_space(text, 0)
        if text[pos] != "{":
            return {}
        pos = _skip_space(text, pos + 1)
        if text[pos] == "}":
            pos += 1
        else:
            while True:
                key, pos = _parse_string(text, pos)
                pos = _skip_space(text, pos)
                if text[pos] != ":":
                    return {}
                pos = _skip_space(text, pos + 1)
                if text[pos] == '"':
                    found[key], pos = _parse_string(text, pos)
                else:
                    found.pop(key, None)
                    pos = _skip_value(text, pos)
                pos = _skip_space(text, pos)
                if text[pos] == "}":
                    pos += 1
                    break
                if text[pos] != ",":
                    return {}
                pos = _skip_space(text, pos + 1)
    except (IndexError, KeyError, ValueError, RecursionError):
        return {}
    if _skip_space(text, pos) != len(text):
        return {}
    return found


# ---- output ------------------------------------------------------------------


def _print_error(code: int, msg: str, details: str = "", version: str = FALLBACK_VERSION) -> int:
    error = f'{{"cniVersion": {json_string(version)}, "code": {code}, "msg": {json_string(msg)}'
    if details:
        error += f', "details": {json_string(details)}'
    _write(error + "}\n")
    return 1


def version_answer(version: str) -> str:
    supported = ", ".join(f'"{item}"' for item in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": {json_string(version)}, "supportedVersions": [{supported}]}}\n'


# ---- request -----------------------------------------------------------------


def _read_stdin() -> bytes | None:
    if sys.stdin is None:
        return None
    try:
        return sys.stdin.buffer.read()
    except OSError:
        return None


def absolute_path(path: bytes) -> bytes:
    """Return ``path`` made absolute against the working directory, with . and .. resolved."""
    parts: list[bytes] = []
    for part in (posix.getcwdb() + b"/" + path).split(b"/"):
        if part == b"..":
            if parts:
                parts.pop()
        elif part and part != b".":
            parts.append(part)
    return b"/" + b"/".join(parts)


def request_body(env: dict[bytes, bytes], stdin: bytes) -> bytes:
    """Build the body of POST /v1/cni/raw: the CNI variables, an empty entry, then stdin."""
    entries = [name + b"=" + env.get(name, b"") + b"\0" for name in CNI_VARIABLES]
    return b"".join(entries) + b"\0" + stdin


def _exchange(path: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """POST the body to /v1/cni/raw on the unix socket; return (status, headers, payload)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_SECONDS)
    try:
        sock.connect(path)
        head = (
            b"POST /v1/cni/raw HTTP/1.1\r\n"
            b"Host: leasewire-node\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        )
        sock.sendall(head + body)
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()

    head_bytes, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, payload


def _timings_json(header: bytes, round_trip: float) -> str:
    """Turn the ``name=seconds,...`` header into a JSON object and add the shim's round trip."""
    items = []
    for item in header.decode("ascii", "replace").split(","):
        name, _, seconds = item.partition("=")
        try:
            items.append(f"{json_string(name)}: {float(seconds)!r}")
        except ValueError:
            continue
    items.append(f'"shimRoundTrip": {round_trip!r}')
    return "{" + ", ".join(items) + "}"


def main() -> int:
    command = ENV.get(b"CNI_COMMAND", b"")
    raw = _read_stdin()

    if command == b"VERSION":
        # The reference plugins never read stdin for VERSION; an unusable one
        # still gets an answer.
        try:
            version = top_level_strings(raw.decode("utf-8")).get("cniVersion") if raw else None
        except UnicodeDecodeError:
            version = None
        _write(version_answer(version or FALLBACK_VERSION))
        return 0

    if raw is None:
        return _print_error(ERR_IO, "failed to read the network configuration from stdin")
    try:
        config = top_level_strings(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        return _print_error(
            ERR_DECODE, "the network configuration on stdin is not UTF-8", str(error)
        )
    version = config.get("cniVersion") or FALLBACK_VERSION
    path = config.get("socket") or DEFAULT_SOCKET

    env = {name: ENV.get(name, b"") for name in CNI_VARIABLES}
    # Runtimes may pass a relative netns path; the daemon runs in another
    # working directory.
    netns = env[b"CNI_NETNS"]
    if netns and not netns.startswith(b"/"):
        env[b"CNI_NETNS"] = absolute_path(netns)

    # STATUS asks whether ADD can be served; a missing daemon means it cannot.
    unreachable = ERR_NOT_AVAILABLE if command == b"STATUS" else ERR_TRY_AGAIN_LATER
    started = time.perf_counter()
    try:
        status, headers, payload = _exchange(path, request_body(env, raw))
    except (FileNotFoundError, ConnectionRefusedError) as error:
        return _print_error(
            unreachable,
            f"leasewire node daemon is not running: {path}: {error.strerror}",
            START_HINT,
            version,
        )
    except TimeoutError:
        return _print_error(
            unreachable,
            f"leasewire node daemon did not answer within {TIMEOUT_SECONDS:g} s on {path}",
            "check its log; the runtime retries the call later",
            version,
        )
    except OSError as error:
        return _print_error(
            unreachable,
            f"failed to reach the leasewire node daemon on {path}: {error}",
            START_HINT,
            version,
        )
    round_trip = time.perf_counter() - started

    exit_code = headers.get(b"leasewire-exit-code", b"")
    stderr_length = headers.get(b"leasewire-stderr-length", b"0")
    if not exit_code.isdigit() or not stderr_length.isdigit():
        hint = ""
        if status == 404:
            hint = "; the daemon predates this shim, upgrade it to the same leasewire version"
        return _print_error(
            ERR_TRY_AGAIN_LATER,
            f"the leasewire node daemon on {path} sent an unreadable answer (HTTP {status}){hint}",
            payload[:500].decode("utf-8", "replace"),
            version,
        )

    split = int(stderr_length)
    if split:
        sys.stderr.buffer.write(payload[:split])
    if ENV.get(b"LEASEWIRE_SHIM_TIMINGS"):
        timings = _timings_json(headers.get(b"leasewire-timings", b""), round_trip)
        sys.stderr.buffer.write(b"leasewire-timings " + timings.encode() + b"\n")
    sys.stdout.buffer.write(payload[split:])
    return int(exit_code)


if __name__ == "__main__":
    sys.exit(main())
