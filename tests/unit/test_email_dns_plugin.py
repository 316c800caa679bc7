"""email-dns certbot glue: options, credentials, perform/cleanup for dns-01 and dns-email-00."""
import argparse
import json
import logging
import os
import subprocess
import sys

import dns.exception
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.tsig
import pytest
from acme import challenges, messages
from certbot import achallenges, errors

from certbot_email import certbot_compat
from certbot_email.protocol.challenges import DNSEmail00, DNSEmail00Response
from certbot_email_dns import plugin, rfc2136
from tests.unit.certbot_versions import annotated_challenge
from tests.unit.test_email_dns_fakes import FakeServer
from tests.unit.test_email_dns_rfc2136 import SECRET
from tests.unit.vectors import RFC7638_KEY

HOST = "mail.example.test"
TOKEN = b"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


def write_credentials(tmp_path, mode: int = 0o600, **values: str) -> str:
    settings = {"server": "192.0.2.53", "port": "5353", "name": "acme-key.", "secret": SECRET}
    settings.update(values)
    path = tmp_path / "email-dns.ini"
    path.write_text("".join(f"email_dns_{key} = {value}\n" for key, value in settings.items()
                            if value is not None))
    os.chmod(path, mode)
    return str(path)


def make_config(credentials: str, **options: object) -> argparse.Namespace:
    values = {"credentials": credentials, "propagation_timeout": 30, "propagation_seconds": 0,
              "check_servers": None, "nameserver_port": 53, "cname_resolver": None,
              "service": None, "port": None,
              "arrays": False, "srv_names": False}
    values.update(options)
    namespace = argparse.Namespace(**{f"email_dns_{key}": value for key, value in values.items()})
    namespace.domains = [HOST]
    return namespace


def make_achall(chall: challenges.Challenge, host: str = HOST
                ) -> achallenges.KeyAuthorizationAnnotatedChallenge:
    body = messages.ChallengeBody(chall=chall, uri="https://ca.test/chall/1",
                                  status=messages.STATUS_PENDING)
    return annotated_challenge(body, RFC7638_KEY, messages.IDENTIFIER_FQDN, host)


@pytest.fixture(name="server")
def fixture_server() -> FakeServer:
    return FakeServer(zones={"example.test."}, records={
        ("example.test.", "NS"): {"ns1.example.test.", "ns2.example.test."},
        ("ns1.example.test.", "A"): {"192.0.2.1"},
        ("ns2.example.test.", "A"): {"192.0.2.2"},
    })


@pytest.fixture(name="notices")
def fixture_notices(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(plugin.display_util, "notify", shown.append)
    return shown


@pytest.fixture(name="make_plugin")
def fixture_make_plugin(tmp_path, server, monkeypatch, notices):
    real_client_from_credentials = plugin.client_from_credentials

    def client_through_fake(*args, **kwargs):
        client = real_client_from_credentials(*args, **kwargs)
        client.exchange = server.exchange
        return client
    monkeypatch.setattr(plugin, "client_from_credentials", client_through_fake)
    monkeypatch.setattr(certbot_compat, "csr_profile", certbot_compat.CsrProfile())

    def make(credentials: dict[str, str] | None = None, **options: object) -> plugin.Authenticator:
        config = make_config(write_credentials(tmp_path, **(credentials or {})), **options)
        authenticator = plugin.Authenticator(config, "email-dns")
        authenticator.prepare()
        return authenticator
    return make


def dns01() -> challenges.DNS01:
    return challenges.DNS01(token=TOKEN)


def txt_values(server: FakeServer) -> dict[str, set[str]]:
    return {name: server.txt(name) for (name, kind) in server.records
            if kind == "TXT" and server.txt(name)}


def test_dns01_publishes_checks_answers_and_cleans_up(make_plugin, server, notices):
    authenticator = make_plugin()
    achall = make_achall(dns01())
    responses = authenticator.perform([achall])
    assert notices == ["Waiting for 2 nameserver(s) of example.test. to serve 1 record(s)"]
    value = achall.validation(RFC7638_KEY)
    assert txt_values(server) == {f"_acme-challenge.{HOST}.": {value}}
    assert isinstance(responses[0], challenges.DNS01Response)
    asked = {(m.question[0].name.to_text(), m.question[0].rdtype) for m in server.sent}
    assert (f"_acme-challenge.{HOST}.", dns.rdatatype.TXT) in asked
    authenticator.cleanup([achall])
    assert txt_values(server) == {}


def test_cleanup_leaves_other_values(make_plugin, server):
    name = f"_acme-challenge.{HOST}."
    server.records[(name, "TXT")] = {'"not-ours"'}
    authenticator = make_plugin()
    achall = make_achall(dns01())
    authenticator.perform([achall])
    authenticator.cleanup([achall])
    assert txt_values(server) == {name: {"not-ours"}}


def test_cname_delegation_updates_the_target(make_plugin, server):
    server.zones.add("acme.test.")
    server.records[(f"_acme-challenge.{HOST}.", "CNAME")] = {"mail.acme.test."}
    server.records[("acme.test.", "NS")] = {"ns1.example.test."}
    authenticator = make_plugin()
    achall = make_achall(dns01())
    authenticator.perform([achall])
    assert txt_values(server) == {"mail.acme.test.": {achall.validation(RFC7638_KEY)}}
    authenticator.cleanup([achall])
    assert txt_values(server) == {}


def test_failure_midway_then_cleanup_removes_what_was_added(make_plugin, server):
    authenticator = make_plugin()
    first, second = make_achall(dns01()), make_achall(dns01(), host="other.test")
    with pytest.raises(errors.PluginError, match="other.test"):
        authenticator.perform([first, second])
    assert txt_values(server)  # the first record was added before the failure
    authenticator.cleanup([first, second])
    assert txt_values(server) == {}


def test_refusal_becomes_plugin_error_naming_the_key(make_plugin, server):
    server.raise_on_update = dns.tsig.PeerBadKey()
    authenticator = make_plugin()
    with pytest.raises(errors.PluginError,
                       match="rejected TSIG key 'acme-key.': check the key name"):
        authenticator.perform([make_achall(dns01())])


def test_update_applied_but_answer_lost_is_still_cleaned_up(make_plugin, server, monkeypatch):
    real_exchange, answers_lost = server.exchange, [True]

    def exchange(message, endpoint, timeout):
        answer = real_exchange(message, endpoint, timeout)
        if message.opcode() == dns.opcode.UPDATE and answers_lost[0]:
            raise dns.exception.Timeout
        return answer
    monkeypatch.setattr(server, "exchange", exchange)
    authenticator = make_plugin()
    achall = make_achall(dns01())
    with pytest.raises(errors.PluginError, match="did not answer"):
        authenticator.perform([achall])
    assert txt_values(server)  # the server did add it
    answers_lost[0] = False
    authenticator.cleanup([achall])
    assert txt_values(server) == {}


def test_refused_update_is_not_deleted_again(make_plugin, server):
    server.update_rcode = dns.rcode.REFUSED
    authenticator = make_plugin()
    achall = make_achall(dns01())
    with pytest.raises(errors.PluginError, match="REFUSED"):
        authenticator.perform([achall])
    updates_before_cleanup = len(server.sent)
    authenticator.cleanup([achall])
    assert len(server.sent) == updates_before_cleanup


def test_configured_zone_is_used(make_plugin, server):
    authenticator = make_plugin(credentials={"zone": "example.test."})
    authenticator.perform([make_achall(dns01())])
    soa_queries = [m for m in server.sent if m.opcode() == dns.opcode.QUERY
                   and m.question[0].rdtype == dns.rdatatype.SOA]
    assert soa_queries == []


def test_check_servers_replace_ns(make_plugin, server):
    authenticator = make_plugin(check_servers="192.0.2.99:10053")
    authenticator.perform([make_achall(dns01())])
    ns_queries = [m for m in server.sent if m.question[0].rdtype == dns.rdatatype.NS]
    assert ns_queries == []


def test_dns_email_00_scoped_name_and_response(make_plugin, server):
    authenticator = make_plugin(service="imaps")
    assert list(authenticator.get_chall_pref(HOST)) == [DNSEmail00, challenges.DNS01]
    achall = make_achall(DNSEmail00(token=TOKEN))
    [response] = authenticator.perform([achall])
    assert txt_values(server) == {f"_993._imaps._acme-challenge.{HOST}.":
                                  {achall.validation(RFC7638_KEY)}}
    assert response.to_partial_json() == {"service": "imaps", "port": 993}
    authenticator.cleanup([achall])
    assert txt_values(server) == {}


def test_dns_email_00_explicit_port(make_plugin, server):
    authenticator = make_plugin(service="submission", port="10587")
    [response] = authenticator.perform([make_achall(DNSEmail00(token=TOKEN))])
    assert list(txt_values(server)) == [f"_10587._submission._acme-challenge.{HOST}."]
    assert response.to_partial_json() == {"service": "submission", "port": 10587}


def test_dns_email_00_arrays(make_plugin, server):
    authenticator = make_plugin(service="imap,imaps", arrays=True)
    achall = make_achall(DNSEmail00(token=TOKEN))
    [response] = authenticator.perform([achall])
    assert set(txt_values(server)) == {f"_143._imap._acme-challenge.{HOST}.",
                                       f"_993._imaps._acme-challenge.{HOST}."}
    assert isinstance(response, DNSEmail00Response)
    assert json.loads(response.json_dumps()) == {"services": ["imap", "imaps"],
                                                 "ports": [143, 993]}
    authenticator.cleanup([achall])
    assert txt_values(server) == {}


def test_without_service_only_dns01(make_plugin):
    assert list(make_plugin().get_chall_pref(HOST)) == [challenges.DNS01]


def test_srv_names_requested_for_the_hosts(make_plugin):
    make_plugin(service="imap,imaps", arrays=True, srv_names=True)
    assert list(certbot_compat.csr_profile.srv_names) == [("imap", HOST), ("imaps", HOST)]


def test_srv_names_skip_wildcards_and_ips(tmp_path, monkeypatch):
    monkeypatch.setattr(certbot_compat, "csr_profile", certbot_compat.CsrProfile())
    config = make_config(write_credentials(tmp_path), service="imaps", srv_names=True)
    config.domains = [HOST, f"*.{HOST}", "192.0.2.1"]
    plugin.Authenticator(config, "email-dns").prepare()
    assert list(certbot_compat.csr_profile.srv_names) == [("imaps", HOST)]


def test_a_mailbox_is_refused_naming_the_authenticator_for_it(tmp_path):
    config = make_config(write_credentials(tmp_path))
    config.domains = [HOST, "alice@example.test"]
    with pytest.raises(errors.MisconfigurationError,
                       match="certifies host names .* but alice@example.test is an email "
                             "address.* with -a email-reply"):
        plugin.Authenticator(config, "email-dns").prepare()


def test_srv_names_need_a_service(make_plugin):
    with pytest.raises(errors.MisconfigurationError, match="needs --email-dns-service"):
        make_plugin(srv_names=True)


@pytest.mark.parametrize("services, ports, arrays, message", [
    ("imap,imaps", None, False, "add --email-dns-arrays"),
    ("imaps", "993,143", False, "one port per service"),
    (None, "993", False, "needs --email-dns-service"),
    ("lmtp", None, False, "no known default port"),
    ("im aps", None, False, "not an IANA service name"),
    ("imaps", "99999", False, "not a TCP port"),
])
def test_bad_scopes_are_refused(services, ports, arrays, message):
    with pytest.raises(errors.MisconfigurationError, match=message):
        plugin.parse_scopes(services, ports, arrays)


def test_scope_defaults_and_unknown_service_with_port():
    assert plugin.parse_scopes("IMAPS, sieve", "993,4190", True) == [
        plugin.Scope("imaps", 993), plugin.Scope("sieve", 4190)]
    assert plugin.parse_scopes("pop3s", None, False) == [plugin.Scope("pop3s", 995)]
    assert plugin.parse_scopes("sieve", "4190", False) == [plugin.Scope("sieve", 4190)]


@pytest.mark.parametrize("credentials, message", [
    ({"algorithm": "hmac-sha3"}, "email_dns_algorithm in credentials file .*hmac-sha256"),
    ({"port": "x"}, "email_dns_port = 'x'"),
    ({"server": "[::1]:x"}, "email_dns_server in credentials file"),
    ({"secret": "not base64!"}, "the secret must be base64"),
    ({"secret": None}, 'Property "email_dns_secret" not found'),
])
def test_bad_credentials_name_the_key(make_plugin, credentials, message):
    authenticator = make_plugin(credentials=credentials)
    with pytest.raises(errors.PluginError, match=message):
        authenticator.perform([make_achall(dns01())])


def test_md5_works_with_a_warning(make_plugin, server, caplog):
    authenticator = make_plugin(credentials={"algorithm": "HMAC-MD5"})
    with caplog.at_level(logging.WARNING):
        authenticator.perform([make_achall(dns01())])
    assert "HMAC-MD5 is obsolete" in caplog.text
    updates = [m for m in server.sent if m.opcode() == dns.opcode.UPDATE]
    assert updates and all(m.keyalgorithm == dns.tsig.HMAC_MD5 for m in updates)


def test_server_hostname_is_resolved(make_plugin, monkeypatch):
    monkeypatch.setattr(rfc2136.socket, "getaddrinfo",
                        lambda host, port, type: [(0, 0, 0, "", ("192.0.2.53", port))])
    authenticator = make_plugin(credentials={"server": "ns1.example.test:10053", "port": None})
    authenticator.perform([make_achall(dns01())])
    assert authenticator._client.server == rfc2136.Endpoint("192.0.2.53", 10053,
                                                            "ns1.example.test")


def test_world_readable_credentials_warn(make_plugin, caplog, tmp_path):
    authenticator = make_plugin()
    os.chmod(authenticator.conf("credentials"), 0o644)
    with caplog.at_level(logging.WARNING):
        authenticator.perform([make_achall(dns01())])
    assert "Unsafe permissions" in caplog.text


def test_update_rcode_other_than_noerror_is_an_error(make_plugin, server):
    server.update_rcode = dns.rcode.REFUSED
    with pytest.raises(errors.PluginError, match="REFUSED: the server's update-policy"):
        make_plugin().perform([make_achall(dns01())])


def test_cname_resolver_option_sets_the_client(make_plugin):
    authenticator = make_plugin(cname_resolver="192.0.2.99:5300")
    authenticator.perform([make_achall(dns01())])
    assert authenticator._client.cname_resolver == rfc2136.Endpoint("192.0.2.99", 5300,
                                                                    "192.0.2.99")


def test_cname_resolver_takes_one_server(make_plugin):
    authenticator = make_plugin(cname_resolver="192.0.2.1,192.0.2.2")
    with pytest.raises(errors.PluginError, match="give exactly one host"):
        authenticator.perform([make_achall(dns01())])


def test_bad_check_server_names_the_option(make_plugin):
    authenticator = make_plugin(check_servers="192.0.2.1:99999")
    with pytest.raises(errors.PluginError, match="--email-dns-check-servers '192.0.2.1:99999'"):
        authenticator.perform([make_achall(dns01())])


def test_plugin_import_leaves_dnspython_for_later():
    code = ("import sys, certbot_email_dns.plugin; "
            "print(sorted(m for m in sys.modules if m == 'dns' or m.startswith('dns.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
