"""Challenge and response objects: registration, wire format, validation values."""
import json

import pytest
from acme import challenges, messages

from certbot_email.protocol import challenges as email_challenges
from certbot_email.protocol.identifiers import IDENTIFIER_EMAIL
from certbot_email.protocol.keyauth import TokenJoining
from tests.unit.vectors import RFC7638_KEY

V1_CHALLENGE = {
    "type": "email-reply-00",
    "url": "https://example.com/acme/chall/ABprV_B7yEyA4f",
    "from": "acme-challenge+2i211oi1204310@example.com",
    "token": "DGyRejmCefe7v4NfDGDKfA",
}
EMAIL_TLS_TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
EMAIL_TLS_VALUE = "ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8"


def test_email_identifier_parses_in_orders():
    order = messages.Order.from_json({
        "status": "pending",
        "identifiers": [{"type": "email", "value": "alexey@example.com"}],
        "authorizations": []})
    assert order.identifiers[0].typ == IDENTIFIER_EMAIL
    assert order.identifiers[0].to_json() == {"type": "email", "value": "alexey@example.com"}


def test_v1_email_reply_challenge_parses_with_its_from_field():
    challb = messages.ChallengeBody.from_json(dict(V1_CHALLENGE, status="pending"))
    assert isinstance(challb.chall, email_challenges.EmailReply00)
    assert challb.chall.sender == "acme-challenge+2i211oi1204310@example.com"
    assert challb.chall.token == "DGyRejmCefe7v4NfDGDKfA"
    assert challb.uri == V1_CHALLENGE["url"]
    assert challb.chall.to_json()["from"] == V1_CHALLENGE["from"]


def test_email_reply_token_part2_is_kept_as_sent_even_if_short_or_padded():
    chall = challenges.Challenge.from_json(
        dict(V1_CHALLENGE, token="c2hvcnQ="))  # 5 bytes, padded: acme's own class refuses it
    assert isinstance(chall, email_challenges.EmailReply00)
    assert chall.token == "c2hvcnQ="


def test_email_reply_validation_joins_token_part1_from_the_subject():
    chall = challenges.Challenge.from_json(V1_CHALLENGE)
    part1 = "LgYemJLy3F1LDkiJrdIGbEzyFJyOyf6vBdyZ1TG3sME="
    assert chall.validation(RFC7638_KEY, token_part1=part1) == \
        "ZEzZgc9aJoD_n58jPgRZT72bYhm3xgODx3XMbYEeaBo"
    assert chall.validation(RFC7638_KEY, token_part1=part1, joining=TokenJoining.BYTES) != \
        chall.validation(RFC7638_KEY, token_part1=part1)
    with pytest.raises(ValueError, match="token-part1"):
        chall.validation(RFC7638_KEY)


def test_email_reply_response_posts_an_empty_object():
    chall = challenges.Challenge.from_json(V1_CHALLENGE)
    assert chall.response(RFC7638_KEY).to_partial_json() == {}


@pytest.mark.parametrize("typ, cls", [
    ("dns-email-00", email_challenges.DNSEmail00),
    ("capability-smtp-00", email_challenges.CapabilitySMTP00),
    ("capability-imap-00", email_challenges.CapabilityIMAP00),
    ("capability-pop-00", email_challenges.CapabilityPOP00),
])
def test_email_tls_challenges_parse_and_give_the_v2_value(typ, cls):
    chall = challenges.Challenge.from_json({"type": typ, "token": EMAIL_TLS_TOKEN})
    assert isinstance(chall, cls)
    assert chall.validation(RFC7638_KEY) == EMAIL_TLS_VALUE
    assert challenges.Challenge.TYPES[typ] is cls


@pytest.mark.parametrize("host, service, port, owner", [
    ("example.com", "imaps", 993, "_993._imaps._acme-challenge.example.com"),
    ("example.net", "imap", 143, "_143._imap._acme-challenge.example.net"),
    ("mail.example.net", "submission", 587, "_587._submission._acme-challenge.mail.example.net"),
    ("mail.example.net", "smtp", 25, "_25._smtp._acme-challenge.mail.example.net"),
    ("mail.example.net", "pop3s", None, "_995._pop3s._acme-challenge.mail.example.net"),
])
def test_v1_dns_email_owner_names(host, service, port, owner):
    chall = email_challenges.DNSEmail00(token=b"x" * 32)
    assert chall.validation_domain_name(host, service, port) == owner


def test_unknown_service_is_named_in_the_error():
    with pytest.raises(ValueError, match="'imap4'.*imaps"):
        email_challenges.scoped_owner_name("example.com", "imap4")


@pytest.mark.parametrize("cls", [email_challenges.DNSEmail00, email_challenges.CapabilityIMAP00])
def test_v3_scoped_response_payload(cls):
    chall = cls(token=b"t" * 32)
    assert chall.scoped_response(RFC7638_KEY, "imaps").to_partial_json() == \
        {"service": "imaps", "port": 993}
    assert chall.scoped_response(RFC7638_KEY, "imap", 10143).to_partial_json() == \
        {"service": "imap", "port": 10143}


def test_dns_email_arrays_variant_and_its_parsing():
    response = email_challenges.DNSEmail00Response(
        key_authorization="x", services=("imap", "imaps"), ports=(143, 993))
    body = json.loads(json.dumps(response.to_partial_json()))
    assert body == {"services": ["imap", "imaps"], "ports": [143, 993]}
    parsed = challenges.ChallengeResponse.from_json(dict(body, type="dns-email-00"))
    assert isinstance(parsed, email_challenges.DNSEmail00Response)
    assert (parsed.service, list(parsed.services)) == (None, ["imap", "imaps"])


def test_v2_imap_capability_atom():
    assert email_challenges.imap_capability(EMAIL_TLS_VALUE) == \
        "ACME=ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8"


def test_implicit_tls_services_are_the_rfc8314_ones():
    assert {service: email_challenges.default_port(service)
            for service in email_challenges.IMPLICIT_TLS_SERVICES} == \
        {"submissions": 465, "imaps": 993, "pop3s": 995}
