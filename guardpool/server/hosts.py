"""The Host-header check of a sidecar without a token: the answer to DNS rebinding.

    request ──► Host header ──► name and port ──► an IP literal, ``localhost`` or an
                                                 --allow-host name, on this port? ──► go on
                                                 anything else ──► 421, naming the Host

A web page on ``evil.example`` whose DNS answer changes to 127.0.0.1 is, to the
browser, still ``evil.example``: its requests to the sidecar are same-origin,
carry no ``Origin`` on a GET, and the page reads the answers (``/v1/runs``,
``/metrics``). What gives it away is the Host header, which names the page's
domain. So a sidecar with no token answers only a Host that cannot be rebound:

- an IP address literal the sidecar listens on (any literal when it is bound to
  a wildcard address such as 0.0.0.0: a name is needed to rebind, an address
  is not a name), or ``localhost``, which browsers resolve to loopback
  themselves;
- a name the operator listed with ``--allow-host`` (``NAME`` on any port, or
  ``NAME:PORT``), for a proxy or a container name in front of the sidecar.

The port must be the one the sidecar listens on (no port means 80, HTTP's
default): a Host naming another port came through a forward or a proxy, which
the operator names explicitly. A request with no Host, or with two, is refused.

With a token the check is off unless ``--allow-host`` names hosts: a page that
rebinds has no token to send (401), and token-protected sidecars run behind
proxies and service names the sidecar cannot know. On ``--unix`` it does not
apply (``serve`` refuses ``--allow-host`` there): a browser cannot reach a Unix
socket, and clients put anything in Host (curl sends ``localhost``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

# The longest Host header worth parsing (a DNS name is at most 253 characters).
_MAX_HOST = 300
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


class HostRefused(ValueError):
    """The request's Host is not one this sidecar answers; the message says why."""


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def split_host(value: str) -> tuple[str, int | None]:
    """``name[:port]`` or ``[v6][:port]`` into a lower-case name and the port, if any."""
    if not value or len(value) > _MAX_HOST or any(c <= " " or c == "\x7f" for c in value):
        raise ValueError("not a host name")
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or _ip(value[1:end]) is None:
            raise ValueError("an unterminated or invalid [IPv6] address")
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("text after the [IPv6] address")
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text_ = value.partition(":")
        port_text = port_text_ if colon else None
        if not name or ":" in port_text_:
            raise ValueError("an IPv6 address must be in brackets")
    port: int | None = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"port {port_text!r} is not a port")
        port = int(port_text)
    return name.lower(), port


def allowed_name(entry: str) -> tuple[str, int | None]:
    """An ``--allow-host`` value: ``NAME`` (any port) or ``NAME:PORT``; ValueError says why."""
    name, port = split_host(entry)
    if _ip(name) is None and not _NAME.fullmatch(name):
        raise ValueError("a host name holds letters, digits, '.', '-' and '_' only")
    return name, port


class HostCheck:
    """Which Host values a sidecar answers (see the module docstring)."""

    def __init__(self, *, addresses: Iterable[str], port: int, allowed: Iterable[str]) -> None:
        self.port = port
        self.names: dict[str, int | None] = {"localhost": port}
        self.addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.any_address = False
        for address in addresses:
            ip = _ip(address.strip("[]"))
            if ip is None:  # --host given as a name: that name, on this port
                self.names[address.lower()] = port
                continue
            if ip.is_unspecified:
                self.any_address = True
            self.addresses.add(ip)
        for entry in allowed:
            name, only = allowed_name(entry)
            self.names[name] = only

    def check(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Raise HostRefused unless exactly one Host header names this sidecar."""
        hosts = [v for k, v in headers if k.lower() == b"host"]
        if len(hosts) != 1:
            raise HostRefused(
                "a request without a Host header is refused"
                if not hosts
                else "a request with more than one Host header is refused"
            )
        text = hosts[0].decode("latin-1")
        try:
            name, port = split_host(text)
        except ValueError as exc:
            raise HostRefused(f"Host {text[:80]!r} is malformed ({exc})") from None
        ip = _ip(name)
        if name in self.names:
            known, want = True, self.names[name]
        elif ip is not None:
            known, want = self.any_address or ip in self.addresses or ip.is_loopback, self.port
        else:
            known, want = False, None
        if known and (want is None or (port or 80) == want):
            return
        raise HostRefused(
            f"Host {text!r} does not name this sidecar: without a token it answers only "
            f"'localhost:{self.port}', its own address on port {self.port}, or a name given "
            "with --allow-host (a web page using DNS rebinding names its own domain)"
        )
