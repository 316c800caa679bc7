"""TXT lookups for DKIM keys through a chosen name server, in the shape dkimpy calls."""
import ipaddress
from typing import Callable, Optional

import dns.exception
import dns.resolver

DEFAULT_DNS_PORT = 53


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


def txt_lookup(server: Optional[str], timeout: float = 5.0) -> Callable[..., Optional[bytes]]:
    """A dkimpy ``dnsfunc`` that asks only ``server`` (``IP[:PORT]``), or the system's resolver
    when none is given."""
    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        host, port = parse_server(server)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout

    def lookup(name: bytes, timeout: float = timeout) -> Optional[bytes]:
        return resolve_txt(resolver, name, timeout)
    return lookup


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
