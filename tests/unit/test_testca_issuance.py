"""Certificate profiles and CSR checks of the test CA (RFC 8823 §3.3, RFC 8550, RFC 4985)."""
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certbot_email.protocol import csr as csr_names
from certbot_email.testing import issuance, problems
from certbot_email.testing.rawclient import make_csr, new_key

ALICE = [{"type": "email", "value": "alice@example.test"}]
MAIL_HOST = [{"type": "dns", "value": "mail.example.test"}]
SIGN_ONLY = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
ENCRYPT_ONLY = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
CERT_SIGN = x509.KeyUsage(True, False, False, False, False, True, False, False, False)


@pytest.fixture(name="authority", scope="module")
def fixture_authority(tmp_path_factory) -> issuance.Authority:
    return issuance.Authority(tmp_path_factory.mktemp("ca"), validity_days=3)


def parsed(pem: bytes) -> issuance.CertificateRequest:
    return issuance.parse_csr(x509.load_pem_x509_csr(pem).public_bytes(
        serialization.Encoding.DER))


def kind_of(call) -> str:
    with pytest.raises(problems.AcmeProblemError) as caught:
        call()
    return caught.value.kind


def test_root_and_intermediate_are_written_and_reloaded(tmp_path):
    first = issuance.Authority(tmp_path, 1)
    second = issuance.Authority(tmp_path, 1)
    assert (tmp_path / issuance.ROOT_FILE).exists()
    assert first.root == second.root
    assert first.intermediate.issuer == first.root.subject


def test_smime_profile_without_key_usage_is_sign_and_encrypt(authority):
    request = parsed(make_csr(new_key("rsa"), mailboxes=("alice@example.test",)))
    issuance.check_against_order(request, ALICE, set())
    cert = authority.issue_smime(request)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_agreement
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.RFC822Name) == ["alice@example.test"]
    assert cert.issuer == authority.intermediate.subject


def test_smime_ec_key_without_key_usage_gets_key_agreement(authority):
    request = parsed(make_csr(new_key(), mailboxes=("alice@example.test",)))
    usage = authority.issue_smime(request).extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.value.digital_signature and usage.value.key_agreement
    assert not usage.value.key_encipherment


@pytest.mark.parametrize("requested, signs, encrypts", [(SIGN_ONLY, True, False),
                                                        (ENCRYPT_ONLY, False, True)])
def test_smime_key_usage_follows_the_csr(authority, requested, signs, encrypts):
    request = parsed(make_csr(new_key("rsa"), mailboxes=("alice@example.test",),
                              key_usage=requested))
    issuance.check_against_order(request, ALICE, set())
    usage = authority.issue_smime(request).extensions.get_extension_for_class(x509.KeyUsage)
    assert (usage.value.digital_signature, usage.value.key_encipherment) == (signs, encrypts)


def test_smime_key_usage_with_cert_sign_is_bad_csr():
    request = parsed(make_csr(new_key("rsa"), mailboxes=("alice@example.test",),
                              key_usage=CERT_SIGN))
    assert kind_of(lambda: issuance.check_against_order(request, ALICE, set())) == "badCSR"


def test_non_ascii_local_part_becomes_smtp_utf8_mailbox(authority):
    address = "jösé@example.test"
    request = parsed(make_csr(new_key(), mailboxes=(address,)))
    issuance.check_against_order(request, [{"type": "email", "value": address}], set())
    san = authority.issue_smime(request).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert csr_names.mailboxes(san) == [address]
    assert not san.get_values_for_type(x509.RFC822Name)


def test_tls_profile_with_proven_srv_name(authority):
    request = parsed(make_csr(new_key(), dns_names=("mail.example.test",),
                              srv=(("imaps", "mail.example.test"),)))
    issuance.check_against_order(request, MAIL_HOST, {"_imaps.mail.example.test"})
    cert = authority.issue_tls(request)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert csr_names.srv_names(san) == ["_imaps.mail.example.test"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_unproven_srv_name_is_bad_csr():
    request = parsed(make_csr(new_key(), dns_names=("mail.example.test",),
                              srv=(("pop3s", "mail.example.test"),)))
    assert kind_of(lambda: issuance.check_against_order(
        request, MAIL_HOST, {"_imaps.mail.example.test"})) == "badCSR"


@pytest.mark.parametrize("dns_names, mailboxes", [
    (("mail.example.test", "extra.example.test"), ()),
    (("other.example.test",), ()),
    (("mail.example.test",), ("alice@example.test",)),
])
def test_csr_names_must_equal_the_order(dns_names, mailboxes):
    request = parsed(make_csr(new_key(), dns_names=dns_names, mailboxes=mailboxes))
    assert kind_of(lambda: issuance.check_against_order(request, MAIL_HOST, set())) == "badCSR"


def test_mailbox_that_differs_from_the_order_is_bad_csr():
    request = parsed(make_csr(new_key(), mailboxes=("bob@example.test",)))
    assert kind_of(lambda: issuance.check_against_order(request, ALICE, set())) == "badCSR"


def test_small_rsa_key_is_bad_public_key():
    small = rsa.generate_private_key(65537, 1024)
    pem = make_csr(small, dns_names=("mail.example.test",))
    assert kind_of(lambda: parsed(pem)) == "badPublicKey"


def test_p521_key_is_bad_public_key():
    pem = make_csr(ec.generate_private_key(ec.SECP521R1()), dns_names=("mail.example.test",))
    assert kind_of(lambda: parsed(pem)) == "badPublicKey"


def test_ip_address_san_is_bad_csr():
    key = new_key()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([
               x509.DNSName("mail.example.test"),
               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
           .sign(key, hashes.SHA256()))
    assert kind_of(lambda: issuance.parse_csr(csr.public_bytes(
        serialization.Encoding.DER))) == "badCSR"


VALID_DER = x509.load_pem_x509_csr(make_csr(new_key(), dns_names=("mail.example.test",))
                                   ).public_bytes(serialization.Encoding.DER)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=400),
                      st.tuples(st.integers(0, len(VALID_DER) - 1), st.integers(0, 255)).map(
                          lambda change: VALID_DER[:change[0]] + bytes([change[1]])
                          + VALID_DER[change[0] + 1:]),
                      st.integers(0, len(VALID_DER)).map(lambda cut: VALID_DER[:cut])))
def test_fuzzed_csrs_only_ever_raise_problems(data: bytes):
    try:
        request = issuance.parse_csr(data)
        issuance.check_against_order(request, MAIL_HOST, set())
    except problems.AcmeProblemError as problem:
        assert problem.kind in {"badCSR", "badPublicKey"}
    else:
        assert data == VALID_DER or request.dns_names == ["mail.example.test"]
