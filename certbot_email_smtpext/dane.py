"""DANE: does a new certificate match the TLSA records that pin the mail server's current key?

A sending MTA that validates DANE refuses to deliver to an MX whose certificate matches none of
its `_25._tcp.<mx>` TLSA records, so deploying a new key before its digest is published breaks
inbound mail. Only DANE-EE records (usage 3) pin the server's own certificate or key; DANE-TA
(usage 2) records pin an issuer, which a renewal from the same CA keeps, and are not judged.
"""
import dataclasses
import hashlib
import re
from collections.abc import Iterable

import dns.exception
import dns.name
import dns.rdtypes.ANY.TLSA
import dns.resolver
from certbot import errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization

#: TLSA certificate usage DANE-EE: the record matches the server's own certificate or key.
DANE_EE = 3
RESOLVER_LIFETIME_SECONDS = 5.0
_SELECTED = {
    0: lambda cert: cert.public_bytes(serialization.Encoding.DER),
    1: lambda cert: cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
}
_MATCHED = {0: lambda data: data, 1: lambda data: hashlib.sha256(data).digest(),
            2: lambda data: hashlib.sha512(data).digest()}


@dataclasses.dataclass(frozen=True)
class Pins:
    """The DANE-EE TLSA records at one owner name (`_<port>._tcp.<host>`)."""

    owner: str
    records: tuple[dns.rdtypes.ANY.TLSA.TLSA, ...]

    def match(self, cert: x509.Certificate) -> bool:
        """Whether one of the records matches the certificate (a 3 1 1 record: its key)."""
        return any(_matches(record, cert) for record in self.records)

    def __str__(self) -> str:
        return f"{self.owner} TLSA " + " / ".join(record.to_text() for record in self.records)


def resolver(address: str | None) -> dns.resolver.Resolver:
    """The system resolver, or only the one at `ip`, `ip:port` or `[ipv6]:port`."""
    if not address:
        try:
            system = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration as error:
            raise errors.PluginError(f"no system resolver to ask for TLSA records ({error}): "
                                     "name one with --<installer>-dane-resolver, or turn the "
                                     "check off with --<installer>-dane off") from error
        system.lifetime = RESOLVER_LIFETIME_SECONDS
        return system
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([0-9.]+)(?::(\d+))?|([0-9A-Fa-f:]+)",
                         address.strip())
    if match is None:
        raise errors.PluginError(f"--<installer>-dane-resolver {address!r} is not an IP address "
                                 "with an optional port (192.0.2.53, 192.0.2.53:5353, "
                                 "[2001:db8::53]:53)")
    host = match.group(1) or match.group(3) or match.group(5)
    port = match.group(2) or match.group(4) or "53"
    chosen = dns.resolver.Resolver(configure=False)
    chosen.nameservers = [host]
    chosen.port = int(port)
    chosen.lifetime = RESOLVER_LIFETIME_SECONDS
    return chosen


def owner_name(port: int, host: str) -> str:
    """`_25._tcp.mx.example.com`: where the TLSA records of a TCP service live."""
    return f"_{port}._tcp.{host.rstrip('.')}"


@dataclasses.dataclass
class Lookup:
    """What the TLSA lookups found: the pinned owners, and the owners that could not be asked."""

    pins: list[Pins] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)


def find_pins(dns_resolver: dns.resolver.Resolver, owners: Iterable[str]) -> Lookup:
    """Look up every owner's TLSA records; keep the DANE-EE ones, and say which lookups failed."""
    found = Lookup()
    for owner in dict.fromkeys(owners):
        try:
            answer = dns_resolver.resolve(dns.name.from_text(owner), "TLSA")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.Timeout as error:  # no server answers: do not wait per owner
            found.failures.append(f"cannot look up the TLSA records at {owner} (nor the other "
                                  f"names'): {error}")
            break
        except dns.exception.DNSException as error:
            found.failures.append(f"cannot look up the TLSA records at {owner}: {error}")
            continue
        records = tuple(record for record in answer if record.usage == DANE_EE)
        if records:
            found.pins.append(Pins(owner, records))
    return found


def _matches(record: dns.rdtypes.ANY.TLSA.TLSA, cert: x509.Certificate) -> bool:
    """Whether one TLSA record matches the certificate (unknown selectors never match)."""
    select, digest = _SELECTED.get(record.selector), _MATCHED.get(record.mtype)
    return select is not None and digest is not None and digest(select(cert)) == record.cert


def suggested_record(cert: x509.Certificate) -> str:
    """The `3 1 1` record that would pin this certificate's key."""
    return f"3 1 1 {_MATCHED[1](_SELECTED[1](cert)).hex()}"
