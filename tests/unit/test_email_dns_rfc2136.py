"""email-dns transport: TSIG updates, zone discovery, CNAME following, refusals, propagation."""
import errno

import dns.exception
import dns.flags
import dns.name
import dns.rcode
import dns.tsig
import pytest

from certbot_email_dns import propagation, rfc2136
from tests.unit.test_email_dns_fakes import FakeServer

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="
KEY = rfc2136.TSIGKey("acme-key.", SECRET)
SERVER = rfc2136.Endpoint("192.0.2.53", 5353, "ns.example.test")
NAME = "_acme-challenge.mail.example.test."


def make_client(server: FakeServer) -> rfc2136.RFC2136Client:
    return rfc2136.RFC2136Client(SERVER, KEY, exchange=server.exchange)


@pytest.mark.parametrize("text", ["hmac-sha256", "HMAC-SHA256", "hmac-sha256.", " Hmac-Sha256 "])
def test_algorithm_accepts_usual_spellings(text):
    assert rfc2136.parse_algorithm(text) == dns.tsig.HMAC_SHA256


def test_algorithm_md5_long_name():
    assert rfc2136.parse_algorithm("HMAC-MD5.SIG-ALG.REG.INT") == dns.tsig.HMAC_MD5


def test_algorithm_unknown_names_choices():
    with pytest.raises(ValueError, match="hmac-sha512"):
        rfc2136.parse_algorithm("hmac-sha3")


def test_default_algorithm_is_sha256():
    assert KEY.algorithm == dns.tsig.HMAC_SHA256


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1", ("192.0.2.1", 53)),
    ("192.0.2.1:5353", ("192.0.2.1", 5353)),
    ("ns1.example.test", ("ns1.example.test", 53)),
    ("ns1.example.test:10053", ("ns1.example.test", 10053)),
    ("2001:db8::1", ("2001:db8::1", 53)),
    ("[2001:db8::1]:5353", ("2001:db8::1", 5353)),
])
def test_endpoint_forms(text, expected):
    assert rfc2136.parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["host:0", "host:70000", "host:abc", ":53", "[::1]:x"])
def test_endpoint_bad_port_or_host(text):
    with pytest.raises(ValueError, match="port|host"):
        rfc2136.parse_endpoint(text)


def test_resolve_endpoint_keeps_ip_without_lookup():
    assert rfc2136.resolve_endpoint("2001:db8::1", 53) == rfc2136.Endpoint("2001:db8::1", 53,
                                                                           "2001:db8::1")


def test_resolve_endpoint_hostname(monkeypatch):
    monkeypatch.setattr(rfc2136.socket, "getaddrinfo",
                        lambda host, port, type: [(0, 0, 0, "", ("192.0.2.7", port))])
    endpoint = rfc2136.resolve_endpoint("ns1.example.test", 10053)
    assert (endpoint.address, endpoint.port) == ("192.0.2.7", 10053)
    assert str(endpoint) == "ns1.example.test (192.0.2.7:10053)"


def test_resolve_endpoint_unknown_host(monkeypatch):
    def fail(*args, **kwargs):
        raise rfc2136.socket.gaierror("Name or service not known")
    monkeypatch.setattr(rfc2136.socket, "getaddrinfo", fail)
    with pytest.raises(rfc2136.RFC2136Error, match="'nowhere.test'.*IP address"):
        rfc2136.resolve_endpoint("nowhere.test", 53)


def test_find_zone_from_nxdomain_authority_in_one_query():
    server = FakeServer(zones={"example.test."})
    assert make_client(server).find_zone(NAME) == dns.name.from_text("example.test.")
    assert len(server.sent) == 1


def test_find_zone_prefers_the_deepest_zone():
    server = FakeServer(zones={"example.test.", "mail.example.test."})
    assert make_client(server).find_zone(NAME) == dns.name.from_text("mail.example.test.")


def test_find_zone_not_authoritative():
    server = FakeServer(zones={"other.test."})
    with pytest.raises(rfc2136.RFC2136Error, match="not authoritative for any zone containing"):
        make_client(server).find_zone(NAME)


def test_queries_do_not_ask_for_recursion():
    server = FakeServer(zones={"example.test."})
    make_client(server).find_zone(NAME)
    assert not server.sent[0].flags & dns.flags.RD
    assert server.sent[0].tsig is None


def test_signed_queries_when_asked():
    server = FakeServer(zones={"example.test."})
    client = rfc2136.RFC2136Client(SERVER, KEY, sign_queries=True, exchange=server.exchange)
    client.find_zone(NAME)
    assert server.sent[0].keyname == dns.name.from_text("acme-key.")


def test_add_and_delete_touch_only_our_value():
    server = FakeServer(zones={"example.test."}, records={(NAME, "TXT"): {'"someone-else"'}})
    client = make_client(server)
    zone = client.find_zone(NAME)
    client.add_txt(zone, NAME, "ours", 60)
    assert server.txt(NAME) == {"someone-else", "ours"}
    client.delete_txt(zone, NAME, "ours")
    assert server.txt(NAME) == {"someone-else"}


def test_updates_are_signed_with_the_configured_algorithm():
    server = FakeServer(zones={"example.test."})
    key = rfc2136.TSIGKey("acme-key.", SECRET, rfc2136.parse_algorithm("hmac-sha512"))
    client = rfc2136.RFC2136Client(SERVER, key, exchange=server.exchange)
    client.add_txt(dns.name.from_text("example.test."), NAME, "v", 60)
    assert server.sent[-1].keyalgorithm == dns.tsig.HMAC_SHA512


def test_follow_cnames_chain():
    server = FakeServer(zones={"example.test.", "acme.test."}, records={
        (NAME, "CNAME"): {"_acme-challenge.hop.example.test."},
        ("_acme-challenge.hop.example.test.", "CNAME"): {"mail.acme.test."},
    })
    assert make_client(server).follow_cnames(NAME) == "mail.acme.test."


def test_follow_cnames_without_cname_is_identity():
    server = FakeServer(zones={"example.test."})
    assert make_client(server).follow_cnames(NAME) == NAME


def test_follow_cnames_outside_our_server_stops():
    server = FakeServer(zones={"other.test."})
    assert make_client(server).follow_cnames(NAME) == NAME


def test_follow_cnames_asks_the_resolver_for_names_the_server_lacks():
    update_server = FakeServer(zones={"acme.test."})
    resolver = FakeServer(zones={"example.test."},
                          records={(NAME, "CNAME"): {"mail.acme.test."}})
    resolver_endpoint = rfc2136.Endpoint("192.0.2.99", 53)

    def exchange(message, server, timeout):
        target = resolver if server == resolver_endpoint else update_server
        return target.exchange(message, server, timeout)
    client = rfc2136.RFC2136Client(SERVER, KEY, cname_resolver=resolver_endpoint,
                                   exchange=exchange)
    assert client.follow_cnames(NAME) == "mail.acme.test."
    assert resolver.sent[0].flags & dns.flags.RD  # a resolver may recurse
    assert client.find_zone("mail.acme.test.") == dns.name.from_text("acme.test.")


def test_resolver_is_not_asked_when_the_server_is_authoritative():
    server = FakeServer(zones={"example.test."})
    unused = FakeServer(zones=set(), raise_on_update=AssertionError("asked"))
    client = rfc2136.RFC2136Client(
        SERVER, KEY, cname_resolver=rfc2136.Endpoint("192.0.2.99", 53),
        exchange=lambda m, s, t: (unused if s.address == "192.0.2.99" else server).exchange(
            m, s, t))
    assert client.follow_cnames(NAME) == NAME
    assert unused.sent == []


def test_follow_cnames_loop():
    server = FakeServer(zones={"example.test."}, records={
        (NAME, "CNAME"): {"b.example.test."}, ("b.example.test.", "CNAME"): {NAME}})
    with pytest.raises(rfc2136.RFC2136Error, match="CNAME loop"):
        make_client(server).follow_cnames(NAME)


@pytest.mark.parametrize("rcode, cause", [
    (dns.rcode.REFUSED, "update-policy"),
    (dns.rcode.NOTAUTH, "not authoritative"),
    (dns.rcode.NOTZONE, "not inside zone 'example.test.'"),
    (dns.rcode.SERVFAIL, "see the server's log"),
])
def test_refusals_name_the_cause(rcode, cause):
    server = FakeServer(zones={"example.test."}, update_rcode=rcode)
    with pytest.raises(rfc2136.RFC2136Error) as raised:
        make_client(server).add_txt(dns.name.from_text("example.test."), NAME, "v", 60)
    message = str(raised.value)
    assert dns.rcode.to_text(rcode) in message and cause in message
    assert "ns.example.test (192.0.2.53:5353)" in message


@pytest.mark.parametrize("error, code, cause", [
    (dns.tsig.PeerBadKey(), "BADKEY", "rejected TSIG key 'acme-key.': check the key name"),
    (dns.tsig.PeerBadSignature(), "BADSIG", "check the key's secret"),
    (dns.tsig.PeerBadTime(), "BADTIME", "synchronise the clocks"),
])
def test_tsig_refusals_name_the_cause(error, code, cause):
    server = FakeServer(zones={"example.test."}, raise_on_update=error)
    with pytest.raises(rfc2136.RFC2136Error, match=f"answered {code}: .*{cause}"):
        make_client(server).add_txt(dns.name.from_text("example.test."), NAME, "v", 60)


def test_timeout_names_server_and_what():
    server = FakeServer(zones={"example.test."}, raise_on_update=dns.exception.Timeout())
    with pytest.raises(rfc2136.RFC2136Error,
                       match=r"deleting TXT 'v' .* did not answer within 10 s"):
        make_client(server).delete_txt(dns.name.from_text("example.test."), NAME, "v")


def test_connection_refused_names_server():
    server = FakeServer(zones={"example.test."},
                        raise_on_update=ConnectionRefusedError("Connection refused"))
    with pytest.raises(rfc2136.RFC2136Error, match="cannot talk to DNS server ns.example.test"):
        make_client(server).add_txt(dns.name.from_text("example.test."), NAME, "v", 60)


def test_zone_nameservers_from_ns_and_in_zone_addresses():
    server = FakeServer(zones={"example.test."}, records={
        ("example.test.", "NS"): {"ns1.example.test.", "ns2.example.test."},
        ("ns1.example.test.", "A"): {"192.0.2.1"},
        ("ns1.example.test.", "AAAA"): {"2001:db8::1"},
        ("ns2.example.test.", "A"): {"192.0.2.2"},
    })
    servers = propagation.zone_nameservers(make_client(server),
                                           dns.name.from_text("example.test."), 10053)
    assert [(s.address, s.port, s.label) for s in servers] == [
        ("192.0.2.1", 10053, "ns1.example.test."), ("2001:db8::1", 10053, "ns1.example.test."),
        ("192.0.2.2", 10053, "ns2.example.test.")]


def test_zone_nameservers_out_of_zone_use_the_system(monkeypatch):
    server = FakeServer(zones={"example.test."},
                        records={("example.test.", "NS"): {"ns.provider.test."}})
    monkeypatch.setattr(propagation.socket, "getaddrinfo",
                        lambda host, port, type: [(0, 0, 0, "", ("198.51.100.9", 0))])
    servers = propagation.zone_nameservers(make_client(server),
                                           dns.name.from_text("example.test."), 53)
    assert [(s.address, s.label) for s in servers] == [("198.51.100.9", "ns.provider.test.")]


def test_zone_without_ns_asks_for_a_list():
    server = FakeServer(zones={"example.test."})
    with pytest.raises(rfc2136.RFC2136Error, match="--email-dns-check-servers"):
        propagation.zone_nameservers(make_client(server), dns.name.from_text("example.test."), 53)


class Clock:
    """Fake monotonic clock advanced by the fake sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


PRIMARY = rfc2136.Endpoint("192.0.2.1", 53, "ns1.example.test.")
SECONDARY = rfc2136.Endpoint("192.0.2.2", 53, "ns2.example.test.")


def lagging_exchange(primary: FakeServer, secondary: FakeServer, clock: Clock,
                     catch_up_at: float):
    """Secondary copies the primary's records once the clock reaches ``catch_up_at``."""
    def exchange(message, server, timeout):
        if server == PRIMARY:
            return primary.exchange(message, server, timeout)
        if clock.now >= catch_up_at:
            secondary.records = dict(primary.records)
        return secondary.exchange(message, server, timeout)
    return exchange


def test_wait_returns_once_every_server_serves():
    primary = FakeServer(zones={"example.test."}, records={(NAME, "TXT"): {'"v"'}})
    secondary = FakeServer(zones={"example.test."})
    clock = Clock()
    propagation.wait_until_served([PRIMARY, SECONDARY], [(NAME, "v")], timeout=30,
                                  exchange=lagging_exchange(primary, secondary, clock, 1.0),
                                  clock=lambda: clock.now, sleep=clock.sleep)
    assert 1.0 <= clock.now < 30
    assert clock.sleeps[0] == propagation.FIRST_POLL_INTERVAL


def test_wait_times_out_naming_the_lagging_server():
    primary = FakeServer(zones={"example.test."}, records={(NAME, "TXT"): {'"v"'}})
    secondary = FakeServer(zones={"example.test."}, records={(NAME, "TXT"): {'"stale"'}})
    clock = Clock()
    with pytest.raises(propagation.PropagationTimeoutError) as raised:
        propagation.wait_until_served([PRIMARY, SECONDARY], [(NAME, "v")], timeout=5,
                                      exchange=lagging_exchange(primary, secondary, clock, 99),
                                      clock=lambda: clock.now, sleep=clock.sleep)
    message = str(raised.value)
    assert "ns2.example.test. (192.0.2.2:53) still lacks TXT 'v'" in message
    assert "serves ['stale']" in message
    assert "ns1.example.test." not in message
    assert clock.now == pytest.approx(5)


def test_wait_counts_an_unreachable_server_as_lagging():
    clock = Clock()

    def exchange(message, server, timeout):
        raise dns.exception.Timeout()
    with pytest.raises(propagation.PropagationTimeoutError, match="did not answer"):
        propagation.wait_until_served([PRIMARY], [(NAME, "v")], timeout=1, exchange=exchange,
                                      clock=lambda: clock.now, sleep=clock.sleep)


def test_wait_skips_an_address_without_route(caplog):
    primary = FakeServer(zones={"example.test."}, records={(NAME, "TXT"): {'"v"'}})
    unroutable = rfc2136.Endpoint("2001:db8::53", 53, "ns1.example.test.")

    def exchange(message, server, timeout):
        if server == unroutable:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        return primary.exchange(message, server, timeout)
    clock = Clock()
    propagation.wait_until_served([PRIMARY, unroutable], [(NAME, "v")], timeout=5,
                                  exchange=exchange, clock=lambda: clock.now, sleep=clock.sleep)
    assert clock.sleeps == []
    assert "Not checking nameserver ns1.example.test. ([2001:db8::53]:53): no route" in caplog.text


def test_wait_keeps_waiting_for_a_refused_connection():
    clock = Clock()

    def exchange(message, server, timeout):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    with pytest.raises(propagation.PropagationTimeoutError, match="Connection refused"):
        propagation.wait_until_served([PRIMARY], [(NAME, "v")], timeout=1, exchange=exchange,
                                      clock=lambda: clock.now, sleep=clock.sleep)


def test_tsig_secret_never_shows_in_a_repr():
    key = rfc2136.TSIGKey("acme-key.", "c2VjcmV0LXRzaWcta2V5")
    assert "acme-key." in repr(key) and "c2VjcmV0" not in repr(key)


def test_wait_gives_up_soon_on_a_server_that_refuses_every_connection():
    clock = Clock()

    def exchange(message, server, timeout):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    with pytest.raises(propagation.NameserverRefusedError) as raised:
        propagation.wait_until_served([PRIMARY], [(NAME, "v")], timeout=120, exchange=exchange,
                                      clock=lambda: clock.now, sleep=clock.sleep,
                                      unreachable_hint="Try --email-dns-nameserver-port.")
    assert str(raised.value) == (
        "nameserver ns1.example.test. (192.0.2.1:53) refused every connection for 3 s: nothing "
        "serves DNS at that address and port. Try --email-dns-nameserver-port.")
    assert propagation.REFUSED_SECONDS <= clock.now < propagation.REFUSED_SECONDS + \
        propagation.MAX_POLL_INTERVAL


def test_wait_rides_out_a_server_that_refuses_only_while_it_restarts():
    primary = FakeServer(zones={"example.test."}, records={(NAME, "TXT"): {'"v"'}})
    clock = Clock()

    def exchange(message, server, timeout):
        if clock.now < propagation.REFUSED_SECONDS - 1:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        return primary.exchange(message, server, timeout)
    propagation.wait_until_served([PRIMARY], [(NAME, "v")], timeout=120, exchange=exchange,
                                  clock=lambda: clock.now, sleep=clock.sleep)


def test_a_server_that_never_answers_gets_the_where_advice_not_notify():
    clock = Clock()

    def exchange(message, server, timeout):
        raise dns.exception.Timeout()
    with pytest.raises(propagation.PropagationTimeoutError) as raised:
        propagation.wait_until_served([PRIMARY], [(NAME, "v")], timeout=1, exchange=exchange,
                                      clock=lambda: clock.now, sleep=clock.sleep,
                                      unreachable_hint="Check --email-dns-check-servers.")
    assert str(raised.value).endswith("(it did not answer (The DNS operation timed out.)). "
                                      "Check --email-dns-check-servers.")
    assert "NOTIFY" not in str(raised.value)
