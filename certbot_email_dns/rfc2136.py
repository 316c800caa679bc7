"""RFC 2136 dynamic updates and authoritative lookups against one DNS server, signed with TSIG."""
import dataclasses
import ipaddress
import logging
import socket
from typing import Callable, Optional

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

logger = logging.getLogger(__name__)

DNS_PORT = 53
DEFAULT_TIMEOUT = 10.0
#: Longest CNAME chain we follow from a challenge name to the name we update.
MAX_CNAME_HOPS = 8

#: TSIG algorithms by their lower-case name without the trailing dot (RFC 8945 §6).
ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
DEFAULT_ALGORITHM = "hmac-sha256"
#: Why each refusal usually happens; ``{key}`` and ``{zone}`` are filled in.
REFUSAL_CAUSES: dict[str, str] = {
    "REFUSED": "the server's update-policy/allow-update does not let key '{key}' change TXT "
               "records there: grant it, e.g. 'update-policy {{ grant {key} zonesub TXT; }};'",
    "NOTAUTH": "the server is not authoritative (primary) for zone '{zone}': send updates to "
               "the zone's primary, or set the zone explicitly",
    "NOTZONE": "the name is not inside zone '{zone}': fix the configured zone or leave it unset",
    "BADKEY": "the server rejected TSIG key '{key}': check the key name (as in named.conf) and "
              "its algorithm",
    "BADSIG": "the server rejected the signature of TSIG key '{key}': check the key's secret and "
              "algorithm",
    "BADTIME": "the server rejected the TSIG time: this machine's clock and the server's differ "
               "by more than the allowed fudge (300 s); synchronise the clocks (NTP)",
}

Exchange = Callable[[dns.message.Message, "Endpoint", float], dns.message.Message]


class RFC2136Error(Exception):
    """An update or lookup failed; the message names the server, the name and the likely cause."""


class RFC2136RefusedError(RFC2136Error):
    """The server answered and refused: unlike a lost answer, nothing was changed."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A DNS server: the address we connect to, the port, and the name the user gave."""

    address: str
    port: int = DNS_PORT
    label: str = ""

    def __str__(self) -> str:
        """``label (address:port)`` when a hostname was given, else ``address:port``."""
        where = f"[{self.address}]:{self.port}" if ":" in self.address else \
            f"{self.address}:{self.port}"
        return f"{self.label} ({where})" if self.label and self.label != self.address else where


@dataclasses.dataclass(frozen=True)
class TSIGKey:
    """A TSIG key: its name (with trailing dot), base64 secret and algorithm; the secret never
    shows in a repr, so no log line or traceback can carry it."""

    name: str
    secret: str = dataclasses.field(repr=False)
    algorithm: dns.name.Name = ALGORITHMS[DEFAULT_ALGORITHM]

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        """dnspython keyring holding just this key."""
        key = dns.tsig.Key(self.name, self.secret, self.algorithm)
        return {key.name: key}


def parse_algorithm(text: str) -> dns.name.Name:
    """The TSIG algorithm ``text`` in any usual spelling (``HMAC-SHA256``, ``hmac-sha256.``)."""
    name = text.strip().lower().rstrip(".")
    if name == "hmac-md5.sig-alg.reg.int":
        name = "hmac-md5"
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown TSIG algorithm {text!r}; use one of "
                         f"{', '.join(ALGORITHMS)}") from None


def parse_endpoint(text: str, default_port: int = DNS_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``v6addr`` or ``[v6addr]:port`` as (host, port)."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"no host in DNS server {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in DNS server {text!r}")
    return host, int(port_text)


def resolve_endpoint(host: str, port: int) -> Endpoint:
    """An Endpoint for an IP address or a hostname (looked up once, through the system)."""
    try:
        ipaddress.ip_address(host)
        return Endpoint(host, port, host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise RFC2136Error(f"cannot resolve DNS server name {host!r}: {error}; "
                           "give its IP address instead") from None
    return Endpoint(str(infos[0][4][0]), port, host)


def tcp_exchange(message: dns.message.Message, server: Endpoint,
                 timeout: float) -> dns.message.Message:
    """Send one message over TCP (updates must not be truncated or replayed over UDP)."""
    return dns.query.tcp(message, server.address, timeout=timeout, port=server.port)


def _relative_text(name: dns.name.Name, zone: dns.name.Name) -> str:
    """``name`` relative to ``zone``, as update sections are written (``@`` for the apex)."""
    return name.relativize(zone).to_text()


class RFC2136Client:
    """Adds and deletes exact TXT values on one server, finds zones, follows CNAMEs."""

    def __init__(self, server: Endpoint, key: TSIGKey, *, sign_queries: bool = False,
                 cname_resolver: Optional[Endpoint] = None, timeout: float = DEFAULT_TIMEOUT,
                 exchange: Exchange = tcp_exchange) -> None:
        self.server = server
        self.key = key
        self.sign_queries = sign_queries
        self.cname_resolver = cname_resolver
        self.timeout = timeout
        self.exchange = exchange

    # -- lookups ----------------------------------------------------------------------------

    def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
              ) -> dns.message.Message:
        """One non-recursive query to the server (RD clear: we want its own data only)."""
        message = dns.message.make_query(name, rdtype)
        message.flags &= ~dns.flags.RD
        if self.sign_queries:
            message.use_tsig(self.key.keyring(), keyname=self.key.name,
                             algorithm=self.key.algorithm)
        return self._send(message, f"{rdtype.name} query for {name}", None)

    def find_zone(self, name: str) -> dns.name.Name:
        """The zone holding ``name``, as the server answers authoritatively for its SOA."""
        candidate = dns.name.from_text(name)
        while len(candidate) > 1:
            answer = self.query(candidate, dns.rdatatype.SOA)
            if answer.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and \
                    answer.flags & dns.flags.AA:
                for rrset in answer.answer + answer.authority:
                    if rrset.rdtype == dns.rdatatype.SOA and candidate.is_subdomain(rrset.name):
                        return rrset.name
            candidate = candidate.parent()
        raise RFC2136Error(f"DNS server {self.server} is not authoritative for any zone "
                           f"containing {name}: point the plugin at the zone's primary server, "
                           "or set the zone explicitly")

    def cname_target(self, name: str) -> Optional[str]:
        """Where ``name`` points if a CNAME; the cname_resolver answers for names not ours."""
        owner = dns.name.from_text(name)
        answer = self.query(owner, dns.rdatatype.CNAME)
        if not answer.flags & dns.flags.AA:
            if self.cname_resolver is None:
                return None
            question = dns.message.make_query(owner, dns.rdatatype.CNAME)
            answer = self._send(question, f"CNAME query for {name}", None, self.cname_resolver)
        if answer.rcode() != dns.rcode.NOERROR:
            return None
        rrset = answer.get_rrset(answer.answer, owner, dns.rdataclass.IN,
                                 dns.rdatatype.CNAME)
        return rrset[0].target.to_text() if rrset else None

    def follow_cnames(self, name: str) -> str:
        """The name at the end of the CNAME chain starting at ``name`` (itself if none)."""
        chain = [dns.name.from_text(name).to_text()]
        while True:
            target = self.cname_target(chain[-1])
            if target is None:
                return chain[-1]
            if target in chain:
                raise RFC2136Error(f"CNAME loop: {' -> '.join(chain + [target])}")
            chain.append(target)
            if len(chain) > MAX_CNAME_HOPS:
                raise RFC2136Error(f"CNAME chain longer than {MAX_CNAME_HOPS}: "
                                   f"{' -> '.join(chain)}")
            logger.info("%s is a CNAME for %s; updating the target", chain[-2], target)

    # -- updates ----------------------------------------------------------------------------

    def add_txt(self, zone: dns.name.Name, name: str, value: str, ttl: int) -> None:
        """Add one TXT value at ``name``; other values there are left alone."""
        update = self._update(zone)
        update.add(_relative_text(dns.name.from_text(name), zone), ttl,
                   dns.rdatatype.TXT, _quoted(value))
        self._send(update, f"adding TXT {value!r} at {name}", zone)

    def delete_txt(self, zone: dns.name.Name, name: str, value: str) -> None:
        """Delete exactly this TXT value at ``name``; other values there are left alone."""
        update = self._update(zone)
        update.delete(_relative_text(dns.name.from_text(name), zone),
                      dns.rdatatype.TXT, _quoted(value))
        self._send(update, f"deleting TXT {value!r} at {name}", zone)

    def _update(self, zone: dns.name.Name) -> dns.update.UpdateMessage:
        """An empty update of ``zone``, TSIG-signed with our key."""
        return dns.update.UpdateMessage(zone, keyring=self.key.keyring(),
                                        keyname=dns.name.from_text(self.key.name),
                                        keyalgorithm=self.key.algorithm)

    def _send(self, message: dns.message.Message, what: str, zone: Optional[dns.name.Name],
              server: Optional[Endpoint] = None) -> dns.message.Message:
        """Exchange with the update server (or ``server``); RFC2136Error on failure or refusal."""
        server = server or self.server
        try:
            answer = self.exchange(message, server, self.timeout)
        except dns.tsig.PeerBadKey:
            raise self._refusal(what, "BADKEY", zone) from None
        except dns.tsig.PeerBadSignature:
            raise self._refusal(what, "BADSIG", zone) from None
        except dns.tsig.PeerBadTime:
            raise self._refusal(what, "BADTIME", zone) from None
        except dns.exception.Timeout:
            raise RFC2136Error(f"{what}: DNS server {server} did not answer within "
                               f"{self.timeout:g} s; check the server address and port") from None
        except (OSError, dns.exception.DNSException) as error:
            raise RFC2136Error(f"{what}: cannot talk to DNS server {server}: "
                               f"{error or type(error).__name__}; check the server address "
                               "and port") from None
        rcode = answer.rcode()
        if zone is not None and rcode != dns.rcode.NOERROR:
            raise self._refusal(what, dns.rcode.to_text(rcode), zone)
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.REFUSED):
            raise RFC2136Error(f"{what}: DNS server {server} answered "
                               f"{dns.rcode.to_text(rcode)}")
        return answer

    def _refusal(self, what: str, code: str,
                 zone: Optional[dns.name.Name]) -> RFC2136RefusedError:
        """The error for a refused update, with the likely cause of ``code``."""
        cause = REFUSAL_CAUSES.get(code, "see the server's log")
        cause = cause.format(key=dns.name.from_text(self.key.name).to_text(),
                             zone=zone.to_text() if zone else "?")
        return RFC2136RefusedError(f"{what}: DNS server {self.server} answered {code}: {cause}")


def _quoted(value: str) -> str:
    """A TXT rdata text for ``value`` (ACME values are base64url, so plain quoting suffices)."""
    return f'"{value}"'
