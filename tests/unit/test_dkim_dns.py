"""DKIM key lookups: a failure names the server and the option, and a dead server costs once."""
import dns.exception
import dns.resolver
import pytest

from certbot_email.reply_mailflow import FlowSettings, dkim_key_lookup
from certbot_email.transport import dkim_dns

NAME = b"sel._domainkey.example.org."


def settings(server: str) -> FlowSettings:
    return FlowSettings(credentials=None, token_joining="string", allow_unsigned=False,
                        allow_no_auto_submitted=False, dkim_dns_server=server,
                        smime_ca_file=None, timeout_seconds=1, poll_seconds=1,
                        since=None, journal="")  # type: ignore[arg-type]


@pytest.fixture(name="asked")
def fixture_asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every query the resolver gets; each one times out."""
    queries: list[str] = []

    def timing_out(_resolver: dns.resolver.Resolver, name: str, *_args: object,
                   **_kwargs: object) -> None:
        queries.append(name)
        raise dns.exception.Timeout(timeout=5.0)
    monkeypatch.setattr(dns.resolver.Resolver, "resolve", timing_out)
    return queries


def test_a_timeout_names_the_key_the_server_and_the_option(asked: list[str]) -> None:
    with pytest.raises(LookupError) as caught:
        dkim_key_lookup(settings("192.0.2.53:5353"))(NAME)
    message = str(caught.value)
    assert "TXT lookup of sel._domainkey.example.org. at 192.0.2.53 port 5353 failed" in message
    assert "--email-reply-dkim-dns-server (192.0.2.53:5353) answers for the CA's zone" in message


def test_the_system_resolver_failing_suggests_the_option(asked: list[str]) -> None:
    with pytest.raises(LookupError, match="name a server that can see the CA's zone with "
                                          "--email-reply-dkim-dns-server IP"):
        dkim_key_lookup(settings(""))(NAME)


def test_after_a_failure_the_server_is_left_alone_for_a_while(asked: list[str]) -> None:
    lookup = dkim_dns.txt_lookup("192.0.2.53")
    for name in (NAME, b"b._domainkey.example.org.", b"c._domainkey.example.org."):
        with pytest.raises(LookupError, match="192.0.2.53"):
            lookup(name)
    assert asked == ["sel._domainkey.example.org."]


def test_no_such_record_is_none_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def nxdomain(*_args: object, **_kwargs: object) -> None:
        raise dns.resolver.NXDOMAIN()
    monkeypatch.setattr(dns.resolver.Resolver, "resolve", nxdomain)
    assert dkim_dns.txt_lookup("192.0.2.53")(NAME) is None


def test_a_key_the_server_does_not_have_names_the_server_and_the_option(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from certbot_email.protocol.challenge_mail import MailRejectedError, Rule
    from certbot_email.protocol.mail_authenticity import check_dkim
    from tests.unit.challenge_mails import Keys, mail, sign

    def nxdomain(*_args: object, **_kwargs: object) -> None:
        raise dns.resolver.NXDOMAIN()
    monkeypatch.setattr(dns.resolver.Resolver, "resolve", nxdomain)
    keys = Keys()
    keys.add(b"example.org")
    with pytest.raises(MailRejectedError) as caught:
        check_dkim(sign(keys, mail()), "example.org", dkim_key_lookup(settings("")))
    assert caught.value.rule is Rule.DKIM_NO_KEY
    assert "no TXT record at sel._domainkey.example.org., as " in str(caught.value)
    assert "if it cannot see the CA's zone" in str(caught.value)
    assert "--email-reply-dkim-dns-server IP[:PORT]" in str(caught.value)
