"""Loopback ports for servers that cannot bind port 0 and report what they got (PostgreSQL, Caddy,
Pebble and its DNS server).

A port is drawn at random below the kernel's ephemeral range (``ip_local_port_range``, 32768 and
up by default) and checked free. Below that range no ``bind(0)`` and no outgoing connection can
take it, and neither can Docker, whose allocator for published ports draws from that same range
and binds with ``SO_REUSEADDR`` (a port merely left in TIME_WAIT, as ``ephemeral-port-reserve``
did, was once handed by Docker to a container while Caddy waited to start its HTTPS listener:
"bind: address already in use"). Two picks collide only if they draw the same one of ~12,000
ports while both are still unbound; each process also never hands out a port twice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 20000
_given: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free(port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, udp: bool = False) -> int:
    """A free loopback TCP port (and UDP too, with ``udp``) outside the ephemeral range."""
    high = _ephemeral_start()
    if high - _LOW < 1000:
        raise AssertionError(f"the ephemeral port range starts at {high}: no room below it for test servers")
    for _ in range(200):
        port = random.randrange(_LOW, high)
        if port in _given or not _free(port, socket.SOCK_STREAM):
            continue
        if udp and not _free(port, socket.SOCK_DGRAM):
            continue
        _given.add(port)
        return port
    raise AssertionError("no free loopback port below the ephemeral range")


def free_udp_port() -> int:
    """A port free for both TCP and UDP (a DNS server listens on both)."""
    return free_port(udp=True)
