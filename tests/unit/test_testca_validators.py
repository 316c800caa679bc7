"""email-tls response scopes and checks, against the draft's examples (V1-V5)."""
import pytest

from certbot_email.testing import problems, validators

DIGEST = "ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8"


class FakeNetwork(validators.Network):
    """A Network whose TXT answers come from a dict."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        super().__init__(None, 53, {}, 80, "testca.localhost")
        self.records = records

    def txt(self, name: str) -> list[str]:
        return self.records.get(name, [])


def attempt(typ: str, scopes: tuple[tuple[str, int], ...]) -> validators.Attempt:
    return validators.Attempt(typ, "mail.example.net", "tok", "tok.thumb", DIGEST, scopes)


def test_port_defaults_to_the_service_port():
    assert validators.parse_scopes("dns-email-00", {"service": "pop3s"}, False, True) \
        == (("pop3s", 995),)


def test_explicit_default_port_is_accepted():
    assert validators.parse_scopes("capability-imap-00", {"service": "imaps", "port": 993},
                                   False, True) == (("imaps", 993),)


@pytest.mark.parametrize("payload", [{}, {"service": "http"}, {"service": 3},
                                     {"service": "imap", "port": "143"},
                                     {"service": "imap", "port": 70000},
                                     {"service": "imap", "port": True},
                                     {"service": "imap", "port": 1143}])
def test_bad_scopes_are_malformed(payload):
    with pytest.raises(problems.AcmeProblemError) as caught:
        validators.parse_scopes("dns-email-00", payload, False, True)
    assert caught.value.kind == "malformed"


def test_non_default_port_is_allowed_when_the_policy_says_so():
    assert validators.parse_scopes("dns-email-00", {"service": "imap", "port": 1143},
                                   False, False) == (("imap", 1143),)


def test_capability_challenge_only_takes_its_own_services():
    with pytest.raises(problems.AcmeProblemError):
        validators.parse_scopes("capability-pop-00", {"service": "imaps"}, False, True)


def test_arrays_variant_is_refused_unless_enabled():
    payload = {"services": ["imap", "imaps"], "ports": [143, 993]}
    with pytest.raises(problems.AcmeProblemError):
        validators.parse_scopes("dns-email-00", payload, False, True)
    assert validators.parse_scopes("dns-email-00", payload, True, True) \
        == (("imap", 143), ("imaps", 993))


def test_arrays_of_different_lengths_are_malformed():
    with pytest.raises(problems.AcmeProblemError):
        validators.parse_scopes("dns-email-00", {"services": ["imap", "imaps"], "ports": [143]},
                                True, True)


def test_padded_value_matches():
    assert validators.matches([DIGEST + "="], DIGEST)
    assert not validators.matches([DIGEST[:-1]], DIGEST)


def test_dns_email_finds_the_scoped_record():
    net = FakeNetwork({"_993._imaps._acme-challenge.mail.example.net": [DIGEST]})
    assert "_993._imaps" in validators.check_dns_email(net, attempt("dns-email-00",
                                                                    (("imaps", 993),)))


def test_dns_email_ignores_a_dns01_style_record():
    net = FakeNetwork({"_acme-challenge.mail.example.net": [DIGEST]})
    with pytest.raises(validators.ValidationFailedError) as caught:
        validators.check_dns_email(net, attempt("dns-email-00", (("imaps", 993),)))
    assert caught.value.kind == "incorrectResponse"


def test_dns_email_arrays_need_every_pair():
    net = FakeNetwork({"_993._imaps._acme-challenge.mail.example.net": [DIGEST]})
    with pytest.raises(validators.ValidationFailedError):
        validators.check_dns_email(net, attempt("dns-email-00", (("imaps", 993),
                                                                 ("imap", 143))))


def test_dns01_record():
    net = FakeNetwork({"_acme-challenge.mail.example.net": ["other", DIGEST]})
    assert validators.check_dns01(net, attempt("dns-01", ()))


def test_without_a_dns_server_lookups_fail_cleanly():
    net = validators.Network(None, 53, {}, 80, "testca.localhost")
    with pytest.raises(validators.ValidationFailedError) as caught:
        net.txt("example.test")
    assert caught.value.kind == "dns"
