"""DANE: TLSA lookups through a stub resolver, record matching, and the installer's verdict."""
import hashlib
import logging

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest
from certbot import errors
from cryptography.hazmat.primitives import serialization

from certbot_email_smtpext import dane
from certbot_email_smtpext.checks import leaf_certificate
from tests.unit.test_installer_checks import write_lineage
from tests.unit.test_installer_plugin import make_installer, serving

__all__ = ["serving"]  # the fixture, used by name


class StubResolver:
    """Answers TLSA queries from a dict owner -> record texts, or an exception to raise;
    other owners are NXDOMAIN."""

    def __init__(self, records: dict[str, list[str] | Exception]) -> None:
        self.records = records
        self.asked: list[str] = []

    def resolve(self, name: dns.name.Name, rdtype: str) -> list[dns.rdata.Rdata]:
        owner = name.to_text(omit_final_dot=True)
        self.asked.append(owner)
        answer = self.records.get(owner, dns.resolver.NXDOMAIN())
        if isinstance(answer, Exception):
            raise answer
        return [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, text)
                for text in answer]


def spki_sha256(cert) -> str:
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@pytest.fixture
def cert(tmp_path):
    return leaf_certificate(write_lineage(tmp_path / "lineage"))


@pytest.mark.parametrize("address, server, port", [
    ("192.0.2.53", "192.0.2.53", 53), ("127.0.0.1:5353", "127.0.0.1", 5353),
    ("[::1]:5353", "::1", 5353), ("2001:db8::53", "2001:db8::53", 53),
])
def test_resolver_asks_only_the_given_server(address, server, port):
    chosen = dane.resolver(address)
    assert (chosen.nameservers, chosen.port) == ([server], port)


def test_resolver_refuses_a_host_name():
    with pytest.raises(errors.PluginError, match="'ns.example' is not an IP address"):
        dane.resolver("ns.example")


def test_records_match_by_key_or_certificate_digest(cert):
    der = cert.public_bytes(serialization.Encoding.DER)
    stub = StubResolver({"_25._tcp.mx.test": [f"3 1 1 {spki_sha256(cert)}"],
                         "_993._tcp.mx.test": [f"3 0 2 {hashlib.sha512(der).hexdigest()}"],
                         "_465._tcp.mx.test": ["3 1 1 " + "00" * 32],
                         "_587._tcp.mx.test": [f"2 1 1 {'11' * 32}"]})
    owners = [dane.owner_name(port, "mx.test.") for port in (25, 993, 465, 587, 143)]
    lookup = dane.find_pins(stub, owners)
    assert lookup.failures == []
    assert [(pin.owner, pin.match(cert)) for pin in lookup.pins] == [
        ("_25._tcp.mx.test", True), ("_993._tcp.mx.test", True), ("_465._tcp.mx.test", False)]
    assert dane.suggested_record(cert) == f"3 1 1 {spki_sha256(cert)}"


def test_a_refused_lookup_is_named_and_the_others_still_asked():
    stub = StubResolver({"_25._tcp.a.test": dns.resolver.NoNameservers(),
                         "_25._tcp.b.test": ["3 1 1 " + "00" * 32]})
    lookup = dane.find_pins(stub, ["_25._tcp.a.test", "_25._tcp.b.test"])
    assert [failure.split(":")[0] for failure in lookup.failures] == \
        ["cannot look up the TLSA records at _25._tcp.a.test"]
    assert [pin.owner for pin in lookup.pins] == ["_25._tcp.b.test"]


def test_a_silent_resolver_is_asked_once():
    stub = StubResolver({"_25._tcp.a.test": dns.exception.Timeout()})
    lookup = dane.find_pins(stub, ["_25._tcp.a.test", "_25._tcp.b.test"])
    assert stub.asked == ["_25._tcp.a.test"]
    assert "(nor the other names')" in lookup.failures[0]


@pytest.fixture
def pinned_installer(tmp_path, serving, monkeypatch):
    """An installer (dane warn) whose DNS pins a key no lineage has, on the fake's port 465."""
    plugin = make_installer(tmp_path, serving, write_lineage(tmp_path / "old"))
    plugin.config.namespace.fake_dane = "warn"
    stub = StubResolver({"_465._tcp.mail.example.test": ["3 1 1 " + "ab" * 32]})
    monkeypatch.setattr(dane, "resolver", lambda address: stub)
    return plugin


def test_warn_deploys_and_says_once_what_to_publish(pinned_installer, tmp_path, caplog):
    new = write_lineage(tmp_path / "new")
    with caplog.at_level(logging.WARNING):
        pinned_installer.deploy_cert("mail.example.test", "/unused", new.key_file, None,
                                     new.chain_file)
        pinned_installer.save("deploy")
        pinned_installer.restart()
    expected = f"publish `3 1 1 {spki_sha256(leaf_certificate(new))}` there"
    assert caplog.text.count(expected) == 1
    assert "--reuse-key" in caplog.text
    assert pinned_installer.daemon.reloads == 1


def test_refuse_stops_before_any_edit(pinned_installer, tmp_path):
    pinned_installer.config.namespace.fake_dane = "refuse"
    new = write_lineage(tmp_path / "new")
    with pytest.raises(errors.PluginError, match="DANE: not deploying or reloading.*"
                                                 "_465._tcp.mail.example.test TLSA 3 1 1 abab"):
        pinned_installer.deploy_cert("mail.example.test", "/unused", new.key_file, None,
                                     new.chain_file)
    assert pinned_installer.daemon.deploys == 0


def test_refuse_stops_a_renewal_reload(pinned_installer, tmp_path):
    pinned_installer.config.namespace.fake_dane = "refuse"
    new = write_lineage(tmp_path / "new")
    pinned_installer.daemon.config.write_text(f"{new.key_file} {new.chain_file}\n")
    with pytest.raises(errors.PluginError, match="DANE: not deploying or reloading"):
        pinned_installer.restart()
    assert pinned_installer.daemon.reloads == 0


def test_refuse_deploys_nothing_it_cannot_check(pinned_installer, tmp_path, monkeypatch):
    pinned_installer.config.namespace.fake_dane = "refuse"
    failing = StubResolver({"_465._tcp.mail.example.test": dns.exception.Timeout()})
    monkeypatch.setattr(dane, "resolver", lambda address: failing)
    with pytest.raises(errors.PluginError, match="deploys nothing it cannot check"):
        pinned_installer.restart()
    assert pinned_installer.daemon.reloads == 0


def test_a_machine_without_resolver_config_is_told_what_to_do(monkeypatch):
    def unconfigured() -> None:
        raise dns.resolver.NoResolverConfiguration("no nameservers")
    monkeypatch.setattr(dns.resolver, "Resolver", unconfigured)
    with pytest.raises(errors.PluginError, match="name one with --<installer>-dane-resolver"):
        dane.resolver(None)
