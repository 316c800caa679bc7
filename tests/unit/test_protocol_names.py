"""Mailbox normalisation and certificate names (rfc822Name, SmtpUTF8Mailbox, SRVName)."""
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbot_email.protocol import csr, identifiers
from certbot_email.protocol.csr import MailboxKeyUsage


@pytest.mark.parametrize("typed, normalized", [
    ("Alice@Example.COM", "Alice@example.com"),
    ("bob.smith+acme@mail.example.org.", "bob.smith+acme@mail.example.org"),
    ("jörg@bücher.example", "jörg@xn--bcher-kva.example"),
])
def test_local_part_is_kept_and_domain_folded(typed, normalized):
    assert identifiers.normalize_mailbox(typed) == normalized


@pytest.mark.parametrize("bad, reason", [
    ("@example.com", "not a mailbox"),
    ("alice@", "not a mailbox"),
    ("al ice@example.com", "quoting"),
    ("alice..x@example.com", "quoting"),
    ("*@example.com", "wildcard"),
    ("alice@localhost", "fully qualified"),
    ("alice@exa..mple.com", "not a valid host name"),
    ("a" * 65 + "@example.com", "64 octets"),
    ("alice@@example.test", "more than one '@'"),
    ("ali<ce@example.test", "quoting"),
    ("ali\x00ce@example.test", "quoting"),
    ("alice@exa_mple.test", "the label 'exa_mple' is not letters, digits and inner hyphens"),
    ("alice@-bad.test", "the label '-bad'"),
    ("alice@example.test-", "the label 'test-'"),
    ("alice@ex ample.test", "the label 'ex ample'"),
    ("alice@[192.0.2.1]", "not a valid host name"),
    ("alice@192.0.2.1", "fully qualified"),
    ("alice@" + "a" * 64 + ".test", "not a valid host name"),
    ("alice@" + ".".join(["a" * 60] * 5), "longer than 253"),
])
def test_unusable_addresses_are_refused_with_a_reason(bad, reason):
    with pytest.raises(identifiers.MailboxError, match=reason):
        identifiers.normalize_mailbox(bad)


def test_only_names_with_at_sign_are_mailboxes():
    assert identifiers.is_mailbox("alice@example.com")
    assert not identifiers.is_mailbox("mail.example.com")


def test_v4_srvname_der_encoding():
    san = x509.SubjectAlternativeName([csr.srv_general_name("imaps", "example.net"),
                                       x509.DNSName("mail.example.net")])
    assert x509.Extension(x509.SubjectAlternativeName.oid, False, san).value.public_bytes().hex() \
        == ("3034a02006082b06010505070807a014"
            "16125f696d6170732e6578616d706c652e6e6574"
            "82106d61696c2e6578616d706c652e6e6574")
    assert csr.srv_names(san) == ["_imaps.example.net"]


def test_ascii_mailbox_is_an_rfc822name_and_utf8_one_an_smtputf8mailbox():
    ascii_name = csr.mailbox_general_name("alice@example.com")
    assert ascii_name == x509.RFC822Name("alice@example.com")
    utf8_name = csr.mailbox_general_name("jörg@xn--bcher-kva.example")
    assert isinstance(utf8_name, x509.OtherName)
    assert utf8_name.type_id == csr.OID_SMTP_UTF8_MAILBOX
    assert utf8_name.value[0] == 0x0C  # UTF8String, RFC 8398 §3
    san = x509.SubjectAlternativeName([ascii_name, x509.DNSName("x.example"), utf8_name])
    assert csr.mailboxes(san) == ["alice@example.com", "jörg@xn--bcher-kva.example"]


def test_long_smtputf8mailbox_uses_the_long_der_length_form():
    address = "ü" * 30 + "@" + "d" * 60 + ".example"
    name = csr.mailbox_general_name(address)
    assert name.value[1] == 0x81
    assert csr.mailboxes(x509.SubjectAlternativeName([name])) == [address]


def test_malformed_other_name_is_refused():
    broken = x509.OtherName(csr.OID_SMTP_UTF8_MAILBOX, b"\x0c\x05ab")
    with pytest.raises(ValueError, match="length"):
        csr.mailboxes(x509.SubjectAlternativeName([broken]))


@pytest.mark.parametrize("usage, rsa_bits, ec_bits", [
    (MailboxKeyUsage.SIGN, {"digital_signature"}, {"digital_signature"}),
    (MailboxKeyUsage.ENCRYPT, {"key_encipherment"}, {"key_agreement"}),
    (MailboxKeyUsage.BOTH, {"digital_signature", "key_encipherment"},
     {"digital_signature", "key_agreement"}),
])
def test_rfc8823_key_usage_follows_the_key_type(usage, rsa_bits, ec_bits):
    bits = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign"]
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for key, expected in ((rsa_key, rsa_bits), (ec_key, ec_bits)):
        usage_ext = csr.mailbox_key_usage(usage, key)
        assert {bit for bit in bits if getattr(usage_ext, bit)} == expected


def test_srv_names_are_made_only_for_plain_host_names():
    assert csr.srv_name_hosts(["mail.example.test", "*.example.test", "alice@example.test",
                               "192.0.2.1", "2001:db8::1", "imap.example.test"]) == \
        ["mail.example.test", "imap.example.test"]
