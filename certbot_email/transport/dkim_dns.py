"""TXT lookups for DKIM keys through a chosen name server, in the shape dkimpy calls."""
import ipaddress
import time
from typing import Optional

import dns.exception
import dns.resolver

from certbot_email.protocol.mail_authenticity import TxtLookup

DEFAULT_DNS_PORT = 53
#: How long a name server that just failed is left alone.
FAILURE_HOLD_SECONDS = 10.0


def parse_server(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; ``ValueError`` names the accepted forms."""
    host, port_text = text.strip(), str(DEFAULT_DNS_PORT)
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port_text = rest.removeprefix(":") or port_text
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r} is not a name server address; use an IP address, "
                         f"IP:PORT or [IPv6]:PORT") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host, port


class KeyLookup:
    """A dkimpy ``dnsfunc`` that asks only ``server`` (``IP[:PORT]``), or the system's resolver
    when none is given. ``hint`` ends the message of every failure: what the user can do.

    After a failure the server is left alone for ``FAILURE_HOLD_SECONDS``: lookups in that time
    fail at once, so that a batch of mails costs one timeout, not one each.
    """

    def __init__(self, server: Optional[str], timeout: float = 5.0, hint: str = "") -> None:
        if server is None:
            self.resolver = dns.resolver.Resolver()
        else:
            host, port = parse_server(server)
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [host]
            self.resolver.port = port
        self.resolver.lifetime = timeout
        self.timeout = timeout
        self.hint = hint
        self._last_failure: Optional[tuple[float, str]] = None

    @property
    def absent_hint(self) -> str:
        """Said with a key that the server reports absent: whom we asked, and what to do."""
        servers = ", ".join(str(server) for server in self.resolver.nameservers)
        return f"as {servers} port {self.resolver.port} sees it" + \
            (f"; if it cannot see the CA's zone, {self.hint}" if self.hint else "")

    def __call__(self, name: bytes, timeout: Optional[float] = None) -> Optional[bytes]:
        if self._last_failure and \
                time.monotonic() - self._last_failure[0] < FAILURE_HOLD_SECONDS:
            raise LookupError(f"{self._last_failure[1]} (not asked again for "
                              f"{FAILURE_HOLD_SECONDS:.0f} s)")
        try:
            return resolve_txt(self.resolver, name, timeout or self.timeout)
        except LookupError as error:
            message = f"{error}; {self.hint}" if self.hint else str(error)
            self._last_failure = (time.monotonic(), message)
            raise LookupError(message) from None


def txt_lookup(server: Optional[str], timeout: float = 5.0, hint: str = "") -> TxtLookup:
    """A ``KeyLookup`` (kept as the name the callers know)."""
    return KeyLookup(server, timeout, hint)


def resolve_txt(resolver: dns.resolver.Resolver, name: bytes, timeout: float) -> Optional[bytes]:
    """A DKIM key's TXT strings joined; None when there is none, ``LookupError`` when DNS fails."""
    text = name.decode("ascii")
    try:
        answer = resolver.resolve(text, "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as error:
        servers = ", ".join(str(server) for server in resolver.nameservers)
        raise LookupError(f"TXT lookup of {text} at {servers} port {resolver.port} failed: "
                          f"{error}") from None
    return b"".join(next(iter(answer)).strings)
