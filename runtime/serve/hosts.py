"""Which ``Host`` names the service answers to: a guard against DNS rebinding.

A web page at ``evil.example:8000`` whose name its owner re-points to 127.0.0.1 can make the
visitor's browser call this service as its "own origin" (its ``Origin`` then equals its
``Host``), which no origin check catches; only the name in ``Host`` gives it away. So a request
is answered only when ``Host`` is

- an IP address (an address cannot be rebound) or a loopback name (``localhost``, ``*.localhost``);
- the name the service listens on, or, listening beyond this machine, this machine's own names;
- a name the operator allowed (``allowed_hosts``; ``"*"``: any), as Jupyter and other local
  servers do.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def host_name(header: str) -> str | None:
    """The name or address in a ``Host`` header, lower-case, without its port (None: malformed)."""
    try:
        parsed = urlsplit("//" + header)
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return None
    name = parsed.hostname
    if not name or parsed.username is not None or parsed.password is not None or any(c in name for c in " /\\"):
        return None
    return name.rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback_name(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


class HostRule:
    """``allows(header)``: whether a request with this ``Host`` header is answered (see the module)."""

    def __init__(self, listen: str, allowed: tuple[str, ...] = ()):
        self.any = "*" in allowed
        names = {name.lower().rstrip(".") for name in allowed if name != "*"}
        listen = listen.lower()
        if not is_address(listen):
            names.add(listen)
        if not (is_loopback_name(listen) or (is_address(listen) and ipaddress.ip_address(listen).is_loopback)):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}  # beyond this machine: its names
        self.names = frozenset(names)

    def allows(self, header: str | None) -> bool:
        if header is None or self.any:
            return True  # no Host: HTTP/1.0, never a browser
        name = host_name(header)
        return name is not None and (is_address(name) or is_loopback_name(name) or name in self.names)
