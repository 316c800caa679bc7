"""Reading ACME values out of EHLO, IMAP CAPABILITY and POP3 CAPA replies (spec §4.2, V2, V5)."""
from certbot_email.protocol import challenges, keyauth
from certbot_email.protocol.capability import (
    ehlo_acme_values,
    imap_acme_values,
    pop3_acme_values,
)
from tests.unit.vectors import RFC7638_KEY

V2_TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
V2_VALUE = "ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8"


def test_v2_value_is_read_back_from_the_lines_we_build():
    value = keyauth.key_authorization_digest(keyauth.key_authorization(V2_TOKEN, RFC7638_KEY))
    assert value == V2_VALUE
    assert ehlo_acme_values(["250-mail.example.net", f"250-ACME {value}",
                             "250 8BITMIME"]) == [V2_VALUE]
    assert imap_acme_values("* CAPABILITY IMAP4rev1 STARTTLS "
                            + challenges.imap_capability(value)) == [V2_VALUE]
    assert pop3_acme_values(["TOP", f"ACME {value}", "STLS"]) == [V2_VALUE]


def test_ehlo_reply_from_the_draft():
    reply = ["250-mail.example.net Hello", "250-SIZE 10240000", "250-STARTTLS",
             f"250-ACME {V2_VALUE}", "250 8BITMIME"]
    assert ehlo_acme_values(reply) == [V2_VALUE]


def test_ehlo_keyword_is_case_insensitive_and_codes_may_be_stripped():
    assert ehlo_acme_values([f"250-acme {V2_VALUE}", f"Acme {V2_VALUE.lower()}"]) \
        == [V2_VALUE, V2_VALUE.lower()]


def test_v5_ehlo_acme_without_or_with_two_parameters_gives_nothing():
    assert ehlo_acme_values(["250-x", "250-ACME", f"250-ACME {V2_VALUE} more", "250 OK"]) == []


def test_imap_greeting_and_capability_response_from_the_draft():
    greeting = (f"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED LITERAL+ ENABLE STARTTLS "
                f"ACME={V2_VALUE}] Example IMAP4rev1 server ready")
    assert imap_acme_values(greeting) == [V2_VALUE]
    assert imap_acme_values(f"* CAPABILITY IMAP4rev1 STARTTLS ACME={V2_VALUE}") == [V2_VALUE]


def test_imap_capability_name_is_case_insensitive_and_the_value_exact():
    assert imap_acme_values(f"* capability IMAP4rev1 acme={V2_VALUE.lower()}") \
        == [V2_VALUE.lower()]


def test_v5_imap_acme_without_a_value_gives_nothing():
    assert imap_acme_values("* CAPABILITY IMAP4rev1 ACME") == []
    assert imap_acme_values("* CAPABILITY IMAP4rev1 ACME=") == []


def test_imap_lines_without_capabilities_give_nothing():
    assert imap_acme_values(f"* OK ready ACME={V2_VALUE}") == []
    assert imap_acme_values(f"a1 OK ACME={V2_VALUE}") == []


def test_pop3_capa_lines():
    assert pop3_acme_values(["TOP", "USER", f"acme {V2_VALUE}", "STLS"]) == [V2_VALUE]
    assert pop3_acme_values(["ACME", f"ACME {V2_VALUE} x"]) == []
