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


def txt_lookup(server: str, timeout: float = 5.0) -> Callable[..., Optional[bytes]]:
    """A dkimpy ``dnsfunc`` that asks only ``server`` (``IP[:PORT]``), never the system resolver."""
    host, port = parse_server(server)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.lifetime = timeout

    def lookup(name: bytes, timeout: float = timeout) -> Optional[bytes]:
        try:
            answer = resolver.resolve(name.decode("ascii"), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as error:
            raise LookupError(f"TXT lookup of {name.decode('ascii')} at {server} failed: "
                              f"{error}") from None
        return b"".join(next(iter(answer)).strings)
    return lookup
