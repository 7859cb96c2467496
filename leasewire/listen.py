"""Parsing of ``--listen HOST:PORT``, shared by ipamd, ``up`` and ``demo``.

Standard library only, so that light commands can use it without importing
the daemons.
"""

from __future__ import annotations


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8470`` for IPv6) into host and port. Raises ValueError."""
    host, separator, port_text = listen.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(f"invalid --listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8470")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"invalid --listen {listen!r}: port {port} is not in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def base_url(host: str, port: int) -> str:
    """Return the HTTP base URL of a listen address, with brackets around IPv6 hosts."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
