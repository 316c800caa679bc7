"""Checks for http-01, dns-01, dns-email-00 and capability-smtp/imap/pop-00.

Parsing the payload scope is pure, and so is reading EHLO/CAPABILITY/CAPA text
(`certbot_email.protocol.capability`); the fetchers talk only to the configured DNS server and
to loopback addresses it returns.
"""
import dataclasses
import http.client
import ipaddress
import socket
import ssl
from typing import Any, Callable, Optional

import dns.exception
import dns.resolver

from certbot_email.protocol import challenges as email_challenges
from certbot_email.protocol.capability import (
    ehlo_acme_values,
    imap_acme_values,
    pop3_acme_values,
)
from certbot_email.testing import problems
from certbot_email.transport import dkim_dns

TIMEOUT_SECONDS = 5.0
#: Services each capability challenge may name (spec B7: smtp allowed besides submission(s)).
CAPABILITY_SERVICES = {
    "capability-smtp-00": ("smtp", "submission", "submissions"),
    "capability-imap-00": ("imap", "imaps"),
    "capability-pop-00": ("pop3", "pop3s"),
}
SCOPED_TYPES = ("dns-email-00", *CAPABILITY_SERVICES)


class ValidationFailedError(Exception):
    """A challenge failed; ``kind`` is the ACME error type, ``detail`` says why."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Attempt:
    """Everything one validation needs: which name, which proof, which service and port."""

    typ: str
    host: str
    token: str
    key_authorization: str
    digest: str
    scopes: tuple[tuple[str, int], ...] = ()


def parse_scopes(typ: str, payload: dict[str, Any], arrays: bool,
                 default_ports_only: bool) -> tuple[tuple[str, int], ...]:
    """The (service, port) pairs a response names (draft -05 §3.1-3.2, B3); ``malformed`` if bad."""
    allowed = CAPABILITY_SERVICES.get(typ, tuple(email_challenges.SERVICE_PORTS))
    if "services" in payload or "ports" in payload:
        if not arrays or typ != "dns-email-00":
            raise problems.malformed("the services/ports arrays variant is not enabled")
        services, ports = payload.get("services"), payload.get("ports")
        if not isinstance(services, list) or not services or \
                (ports is not None and (not isinstance(ports, list)
                                        or len(ports) != len(services))):
            raise problems.malformed("services must be a non-empty list, and ports, if "
                                     "given, a list of the same length")
        pairs = list(zip(services, ports or [None] * len(services), strict=True))
    else:
        pairs = [(payload.get("service"), payload.get("port"))]
    return tuple(_scope(service, port, allowed, default_ports_only) for service, port in pairs)


def _scope(service: Any, port: Any, allowed: tuple[str, ...],
           default_ports_only: bool) -> tuple[str, int]:
    """One checked (service, port) pair; the port defaults to the service's IANA port."""
    if not isinstance(service, str) or service not in allowed:
        raise problems.malformed(f"service {service!r} is missing or not one of {list(allowed)}")
    expected = email_challenges.default_port(service)
    if port is None:
        return service, expected
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise problems.malformed(f"port {port!r} is not a TCP port number")
    if default_ports_only and port != expected:
        raise problems.malformed(f"port {port} is not the default port {expected} of "
                                 f"{service}, and this CA accepts only default ports")
    return service, port


def matches(advertised: list[str], digest: str) -> bool:
    """Exact comparison after dropping trailing ``=`` (spec B6)."""
    return any(value.rstrip("=") == digest for value in advertised)


class Network:
    """DNS through the configured server only, and connections to loopback addresses only."""

    def __init__(self, dns_server: Optional[str], dns_port: int,
                 port_overrides: dict[str, int], http01_port: int,
                 local_hostname: str) -> None:
        self.dns_server = dns_server
        self.dns_port = dns_port
        self.port_overrides = port_overrides
        self.http01_port = http01_port
        self.local_hostname = local_hostname

    def resolver(self) -> dns.resolver.Resolver:
        """A resolver bound to the configured server; never the system's."""
        if self.dns_server is None:
            raise ValidationFailedError("dns", "no DNS server is configured (--dns-server)")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.dns_server]
        resolver.port = self.dns_port
        resolver.lifetime = TIMEOUT_SECONDS
        return resolver

    def txt(self, name: str) -> list[str]:
        """TXT strings at ``name``; [] for NXDOMAIN or no answer."""
        try:
            answer = self.resolver().resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as error:
            raise ValidationFailedError("dns", f"TXT lookup of {name} failed: {error}") from None
        return [b"".join(record.strings).decode("ascii", "replace") for record in answer]

    def address(self, host: str) -> str:
        """The A record of ``host``, which must be a loopback address."""
        try:
            answer = self.resolver().resolve(host, "A")
        except dns.exception.DNSException as error:
            raise ValidationFailedError("dns", f"A lookup of {host} failed: {error}") from None
        address = answer[0].address
        if not ipaddress.ip_address(address).is_loopback:
            raise ValidationFailedError("connection", f"{host} resolves to {address}, which is "
                                        "not loopback; the test CA never leaves loopback")
        return address

    def connect(self, host: str, service: str, port: int) -> socket.socket:
        """A connection to ``host``'s service, TLS-wrapped without verification if implicit."""
        address = self.address(host)
        real_port = self.port_overrides.get(service, port)
        try:
            sock = socket.create_connection((address, real_port), timeout=TIMEOUT_SECONDS)
        except OSError as error:
            raise ValidationFailedError("connection", f"cannot connect to {host} ({address}) "
                                        f"port {real_port} for {service}: {error}") from None
        if service in email_challenges.IMPLICIT_TLS_SERVICES:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            try:
                return context.wrap_socket(sock, server_hostname=host)
            except (OSError, ssl.SSLError) as error:
                sock.close()
                raise ValidationFailedError("tls", f"TLS with {host} port {real_port} failed: "
                                            f"{error}") from None
        return sock


def _lines(sock: socket.socket) -> Callable[[], str]:
    """A reader of CRLF lines; EOF is a connection failure."""
    reader = sock.makefile("rb")

    def read_line() -> str:
        line = reader.readline(4096)
        if not line:
            raise ValidationFailedError("connection", "the server closed the connection")
        return line.decode("utf-8", "replace").rstrip("\r\n")
    return read_line


def check_http01(net: Network, attempt: Attempt) -> str:
    """GET the token over plain HTTP on the http-01 port (RFC 8555 §8.3)."""
    address = net.address(attempt.host)
    conn = http.client.HTTPConnection(address, net.http01_port, timeout=TIMEOUT_SECONDS)
    try:
        conn.request("GET", f"/.well-known/acme-challenge/{attempt.token}",
                     headers={"Host": attempt.host})
        response = conn.getresponse()
        body = response.read(4096).decode("ascii", "replace").strip()
    except OSError as error:
        raise ValidationFailedError("connection", f"http-01 fetch from {attempt.host} failed: "
                                    f"{error}") from None
    finally:
        conn.close()
    if response.status != 200 or body != attempt.key_authorization:
        raise ValidationFailedError("incorrectResponse", f"http-01 answered {response.status} "
                                    f"with {body[:80]!r}, not the key authorization")
    return f"http-01 key authorization served by {attempt.host}"


def check_dns01(net: Network, attempt: Attempt) -> str:
    """TXT at ``_acme-challenge.<host>`` (RFC 8555 §8.4)."""
    name = f"_acme-challenge.{attempt.host}"
    if attempt.digest not in net.txt(name):
        raise ValidationFailedError("incorrectResponse",
                                    f"no TXT record at {name} holds the digest")
    return f"TXT at {name} holds the digest"


def check_dns_email(net: Network, attempt: Attempt) -> str:
    """TXT at ``_<port>._<service>._acme-challenge.<host>`` for every named pair (draft §3.3)."""
    for service, port in attempt.scopes:
        name = email_challenges.scoped_owner_name(attempt.host, service, port)
        if not matches(net.txt(name), attempt.digest):
            raise ValidationFailedError("incorrectResponse",
                                        f"no TXT record at {name} holds the digest")
    return "TXT found at " + ", ".join(
        email_challenges.scoped_owner_name(attempt.host, s, p) for s, p in attempt.scopes)


def check_capability(net: Network, attempt: Attempt) -> str:
    """Connect to each named service and read its capabilities before any STARTTLS (§3.4)."""
    readers = {"capability-smtp-00": _smtp_values, "capability-imap-00": _imap_values,
               "capability-pop-00": _pop3_values}
    for service, port in attempt.scopes:
        sock = net.connect(attempt.host, service, port)
        try:
            sock.settimeout(TIMEOUT_SECONDS)
            values = readers[attempt.typ](sock, net.local_hostname)
        except OSError as error:
            raise ValidationFailedError("connection", f"{service} on {attempt.host}: {error}") \
                from None
        finally:
            sock.close()
        if not matches(values, attempt.digest):
            raise ValidationFailedError("incorrectResponse", f"{service} on {attempt.host} port "
                                        f"{port} advertises ACME values {values}, not the digest")
    return "capability advertised on " + ", ".join(f"{s}/{p}" for s, p in attempt.scopes)


def _smtp_values(sock: socket.socket, local_hostname: str) -> list[str]:
    """Greeting, EHLO, the multi-line 250 reply, QUIT."""
    read_line = _lines(sock)
    greeting = read_line()
    while greeting.startswith("220-"):
        greeting = read_line()
    if not greeting.startswith("220"):
        raise ValidationFailedError("connection", f"SMTP greeting was {greeting!r}")
    sock.sendall(f"EHLO {local_hostname}\r\n".encode("ascii"))
    reply = [read_line()]
    while reply[-1].startswith("250-"):
        reply.append(read_line())
    sock.sendall(b"QUIT\r\n")
    if not reply[-1].startswith("250"):
        raise ValidationFailedError("connection", f"EHLO was refused: {reply[-1]!r}")
    return ehlo_acme_values(reply)


def _imap_values(sock: socket.socket, unused_hostname: str) -> list[str]:
    """Greeting capabilities if present, else ``CAPABILITY``; then LOGOUT."""
    read_line = _lines(sock)
    greeting = read_line()
    if not greeting.upper().startswith("* OK"):
        raise ValidationFailedError("connection", f"IMAP greeting was {greeting!r}")
    if "[CAPABILITY " in greeting.upper():
        values = imap_acme_values(greeting)
    else:
        sock.sendall(b"a1 CAPABILITY\r\n")
        values = []
        line = read_line()
        while not line.startswith("a1 "):
            values += imap_acme_values(line)
            line = read_line()
    sock.sendall(b"a2 LOGOUT\r\n")
    return values


def _pop3_values(sock: socket.socket, unused_hostname: str) -> list[str]:
    """Greeting, ``CAPA`` up to the lone dot, QUIT."""
    read_line = _lines(sock)
    greeting = read_line()
    if not greeting.startswith("+OK"):
        raise ValidationFailedError("connection", f"POP3 greeting was {greeting!r}")
    sock.sendall(b"CAPA\r\n")
    status = read_line()
    if not status.startswith("+OK"):
        raise ValidationFailedError("connection", f"CAPA was refused: {status!r}")
    values = pop3_acme_values(iter(read_line, "."))  # the lines up to the lone dot
    sock.sendall(b"QUIT\r\n")
    return values


CHECKS: dict[str, Callable[[Network, Attempt], str]] = {
    "http-01": check_http01,
    "dns-01": check_dns01,
    "dns-email-00": check_dns_email,
    "capability-smtp-00": check_capability,
    "capability-imap-00": check_capability,
    "capability-pop-00": check_capability,
}


def dkim_lookup(net: Network) -> Callable[..., Optional[bytes]]:
    """A dkimpy ``dnsfunc`` that asks the configured DNS server only."""

    def lookup(name: bytes, timeout: float = TIMEOUT_SECONDS) -> Optional[bytes]:
        try:
            return dkim_dns.resolve_txt(net.resolver(), name, timeout)
        except (LookupError, ValidationFailedError, UnicodeError):
            return None
    return lookup
