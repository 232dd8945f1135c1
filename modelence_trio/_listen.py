"""The listening socket ``App.serve`` hands to hypercorn, bound before
anything starts: a busy port (or an address that is not this machine's)
fails at once with a plain ``OSError``, before the hub and its fan-out start,
instead of deep inside hypercorn's task groups.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["bind_listener", "describe_bind_error"]


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet), as hypercorn
    would make it for ``--bind host:port``: IPv6 for an address with ``:``,
    ``TCP_NODELAY`` and ``SO_REUSEADDR`` on.

    Raises:
        OSError: the address cannot be bound (``EADDRINUSE``: the port is in
            use; ``socket.gaierror``: the host name does not resolve).
        OverflowError: ``port`` is not within 0-65535.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def describe_bind_error(exc: OSError, host: str, port: int) -> str:
    """One line saying why ``host:port`` could not be listened on."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: unknown host {host!r}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use"
    if exc.errno == errno.EACCES:
        hint = " (ports below 1024 need privileges)" if 0 < port < 1024 else ""
        return f"cannot listen on {where}: permission denied{hint}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {host} is not an address of this machine"
    return f"cannot listen on {where}: {exc.strerror or exc}"
