"""Wait until every authoritative server of a zone serves our TXT values, instead of sleeping."""
import errno
import logging
import socket
import time
from typing import Callable, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype

from certbot_email_dns.rfc2136 import (
    DEFAULT_TIMEOUT,
    Endpoint,
    Exchange,
    RFC2136Client,
    RFC2136Error,
    tcp_exchange,
)

logger = logging.getLogger(__name__)

FIRST_POLL_INTERVAL = 0.05
MAX_POLL_INTERVAL = 2.0
#: Errors meaning this machine has no path to the address at all (say, an IPv6 nameserver on an
#: IPv4-only host): such an address is skipped with a warning instead of failing the wait.
UNROUTABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL,
                        errno.EAFNOSUPPORT})
DID_NOT_ANSWER = "did not answer"
#: A nameserver that refuses every connection this long is not restarting: nothing listens
#: there, and waiting out the whole timeout would only delay the same error.
REFUSED_SECONDS = 3.0


class PropagationTimeoutError(RFC2136Error):
    """Some authoritative server still did not serve a record when the time was up."""


class NameserverRefusedError(RFC2136Error):
    """A nameserver to be checked refuses connections: the address or port is wrong."""


def zone_nameservers(client: RFC2136Client, zone: dns.name.Name, port: int) -> list[Endpoint]:
    """Every address of every NS of ``zone``, as the update server knows them."""
    answer = client.query(zone, dns.rdatatype.NS)
    rrset = answer.get_rrset(answer.answer, zone, dns.rdataclass.IN, dns.rdatatype.NS)
    if not rrset:
        raise RFC2136Error(f"DNS server {client.server} has no NS records for zone {zone}; "
                           "list the servers to check with --email-dns-check-servers")
    servers = []
    for target in sorted(record.target for record in rrset):
        addresses = _addresses_from_server(client, target) or _addresses_from_system(target)
        if not addresses:
            raise RFC2136Error(f"cannot find the address of nameserver {target} of zone {zone}; "
                               "list the servers to check with --email-dns-check-servers")
        servers += [Endpoint(address, port, target.to_text()) for address in addresses]
    return servers


def _addresses_from_server(client: RFC2136Client, host: dns.name.Name) -> list[str]:
    """A/AAAA of an in-zone nameserver, from the (authoritative) update server."""
    addresses = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        answer = client.query(host, rdtype)
        if not answer.flags & dns.flags.AA:
            continue
        rrset = answer.get_rrset(answer.answer, host, dns.rdataclass.IN, rdtype)
        addresses += [record.address for record in rrset or ()]
    return addresses


def _addresses_from_system(host: dns.name.Name) -> list[str]:
    """Addresses of an out-of-zone nameserver, through the system's resolver."""
    try:
        infos = socket.getaddrinfo(host.to_text(omit_final_dot=True), None,
                                   type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def served_txt(server: Endpoint, name: str, exchange: Exchange = tcp_exchange,
               timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """The TXT values ``server`` itself holds at ``name`` (non-recursive query)."""
    owner = dns.name.from_text(name)
    query = dns.message.make_query(owner, dns.rdatatype.TXT)
    query.flags &= ~dns.flags.RD
    answer = exchange(query, server, timeout)
    rrset = answer.get_rrset(answer.answer, owner, dns.rdataclass.IN, dns.rdatatype.TXT)
    return [b"".join(record.strings).decode("ascii", "replace") for record in rrset or ()]


def wait_until_served(servers: Sequence[Endpoint], records: Sequence[tuple[str, str]],
                      timeout: float, exchange: Exchange = tcp_exchange,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep,
                      unreachable_hint: str = "") -> None:
    """Poll each server until it serves every (name, value); the error names the laggards.

    ``unreachable_hint`` is what to change when a server does not answer at all (where the
    servers came from: the zone's NS records, or a list the user gave).
    """
    deadline = clock() + timeout
    pending = {(server, name, value) for server in servers for name, value in records}
    last_seen: dict[tuple[Endpoint, str], str] = {}
    refused_since: dict[Endpoint, float] = {}
    interval = FIRST_POLL_INTERVAL
    while True:
        for server, name in sorted({(server, name) for server, name, _ in pending},
                                   key=str):
            try:
                values = served_txt(server, name, exchange, min(timeout, DEFAULT_TIMEOUT))
                last_seen[(server, name)] = f"serves {values}" if values else "has no TXT"
            except OSError as error:
                if error.errno in UNROUTABLE:
                    logger.warning("Not checking nameserver %s: no route from here (%s)",
                                   server, error)
                    pending = {entry for entry in pending if entry[0] != server}
                    continue
                if error.errno == errno.ECONNREFUSED and \
                        clock() - refused_since.setdefault(server, clock()) >= REFUSED_SECONDS:
                    raise NameserverRefusedError(
                        f"nameserver {server} refused every connection for "
                        f"{REFUSED_SECONDS:g} s: nothing serves DNS at that address and port. "
                        f"{unreachable_hint}".strip()) from None
                last_seen[(server, name)] = f"{DID_NOT_ANSWER} ({error})"
                continue
            except dns.exception.DNSException as error:
                last_seen[(server, name)] = \
                    f"{DID_NOT_ANSWER} ({error or type(error).__name__})"
                continue
            refused_since.pop(server, None)
            pending -= {(server, name, value) for value in values}
        if not pending:
            return
        if clock() >= deadline:
            raise PropagationTimeoutError(_lagging_message(pending, last_seen, timeout,
                                                           unreachable_hint))
        logger.info("Not yet served by %s", ", ".join(sorted({str(server)
                                                            for server, _, _ in pending})))
        sleep(min(interval, max(deadline - clock(), 0)))
        interval = min(interval * 1.5, MAX_POLL_INTERVAL)


def _lagging_message(pending: set[tuple[Endpoint, str, str]],
                     last_seen: dict[tuple[Endpoint, str], str], timeout: float,
                     unreachable_hint: str) -> str:
    """One sentence per missing (server, name, value), with what the server answered last,
    and the advice that fits: a server that answers without the record lags behind the
    primary; one that never answers is the wrong server."""
    seen = {(server, name): last_seen.get((server, name), "was not asked")
            for server, name, _ in pending}
    lines = [f"nameserver {server} still lacks TXT {value!r} at {name} after {timeout:g} s "
             f"(it {seen[(server, name)]})" for server, name, value in sorted(pending, key=str)]
    advice = []
    if any(not text.startswith(DID_NOT_ANSWER) for text in seen.values()):
        advice.append("Check that the zone's secondaries get NOTIFY and zone transfers from "
                      "the primary, or raise --email-dns-propagation-timeout.")
    if unreachable_hint and any(text.startswith(DID_NOT_ANSWER) for text in seen.values()):
        advice.append(unreachable_hint)
    return "; ".join(lines) + "." + "".join(f" {text}" for text in advice)
