"""``HOST:PORT`` addresses of the web view and the metrics endpoint."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True)
class Address:
    """Where a server listens.

    Attributes:
        host: an IP literal or a host name (``[::1]`` is given without brackets).
        port: TCP port (0 lets the system choose one; the server reports the one it got).
    """

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and ``localhost``; any other address is reachable from elsewhere."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name other than localhost: assume it is not loopback
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, flag: str, default_port: int) -> Address:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` or ``PORT``; a bare port listens on 127.0.0.1.

    Raises:
        ConfigError: naming the flag, the value and the accepted form.
    """

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{flag} {text!r}: {why}; give HOST:PORT, e.g. {flag} 127.0.0.1:{default_port}")

    value = text.strip()
    if not value:
        raise bad("empty address")
    if value.isdigit():
        host, port_text = "127.0.0.1", value
    elif value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad("unbalanced [IPv6] brackets")
        port_text = rest[1:] if rest else str(default_port)
    elif value.count(":") > 1:  # a bare IPv6 literal without a port
        host, port_text = value, str(default_port)
    else:
        host, _, port_text = value.partition(":")
        port_text = port_text or str(default_port)
    if not host:
        raise bad("no host")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise bad(f"port {port_text!r} is not a number from 0 to 65535")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    return Address(host, int(port_text))
