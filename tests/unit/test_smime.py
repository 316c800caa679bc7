"""S/MIME-signed challenge mails, verified by the openssl CLI against CAs made in the test."""
import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certbot_email.protocol.challenge_mail import (
    ExpectedChallenge,
    MailRejectedError,
    Relaxation,
    Rule,
)
from certbot_email.reply_registry import ChallengeMailJudge
from certbot_email.transport.smime import openssl_verifier
from tests.unit.challenge_mails import ALICE, CA, TOKEN1, headers, mail

NOW = datetime.datetime.now(datetime.timezone.utc)


class Issuer:
    """A throw-away CA that issues S/MIME signer certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = self._build(subject, self.key.public_key(), ca=True).sign(
            self.key, hashes.SHA256())
        self.subject = subject

    def _build(self, subject: x509.Name, public: ec.EllipticCurvePublicKey,
               ca: bool) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(self.subject if not ca else subject).public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - datetime.timedelta(days=1))
                .not_valid_after(NOW + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    def signer(self, address: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (self._build(x509.Name([]), key.public_key(), ca=False)
                       .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]),
                                      critical=True)
                       .add_extension(x509.ExtendedKeyUsage(
                           [ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                       .sign(self.key, hashes.SHA256()))
        return certificate, key

    def write(self, path: Path) -> str:
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return str(path)


def smime_signed(raw: bytes, issuer: Issuer, signer: str = CA) -> bytes:
    """``raw`` wrapped as message/rfc822 and S/MIME-signed; outer headers repeat raw's own."""
    certificate, key = issuer.signer(signer)
    inner = b"Content-Type: message/rfc822\r\n\r\n" + raw
    signed = (pkcs7.PKCS7SignatureBuilder().set_data(inner)
              .add_signer(certificate, key, hashes.SHA256())
              .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature]))
    outer = [line for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
             if not line.lower().startswith((b"content-", b"mime-version"))]
    return b"\r\n".join(outer) + b"\r\n" + signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer("Test S/MIME CA")


@pytest.fixture
def judge(issuer: Issuer, tmp_path: Path) -> ChallengeMailJudge:
    made = ChallengeMailJudge(txt_lookup=lambda name, timeout=5: None,
                              smime_verifier=openssl_verifier(issuer.write(tmp_path / "ca.pem")))
    made.expect(ExpectedChallenge(ALICE, CA))
    return made


def rule(judge: ChallengeMailJudge, raw: bytes) -> Rule:
    with pytest.raises(MailRejectedError) as caught:
        judge.judge(raw)
    return caught.value.rule


def test_signed_by_a_trusted_ca_for_from_is_accepted(judge: ChallengeMailJudge,
                                                      issuer: Issuer) -> None:
    found = judge.judge(smime_signed(mail(), issuer))
    assert (found.token_part1, found.sender, found.waived) == (TOKEN1, CA, frozenset())


def test_signed_by_an_untrusted_ca(judge: ChallengeMailJudge) -> None:
    assert rule(judge, smime_signed(mail(), Issuer("Some other CA"))) is Rule.SMIME_INVALID


def test_the_systems_trusted_cas_do_not_count(judge: ChallengeMailJudge, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    other = Issuer("A CA the system trusts")
    system = tmp_path / "system-certs"
    system.mkdir()
    other.write(system / "other.pem")
    subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in",
                                   str(system / "other.pem")], capture_output=True, text=True,
                                  check=True).stdout.strip()
    (system / f"{subject_hash}.0").symlink_to("other.pem")
    monkeypatch.setenv("SSL_CERT_DIR", str(system))
    monkeypatch.setenv("SSL_CERT_FILE", str(system / "other.pem"))
    assert rule(judge, smime_signed(mail(), other)) is Rule.SMIME_INVALID


def test_signer_certificate_for_another_address(judge: ChallengeMailJudge,
                                                issuer: Issuer) -> None:
    raw = smime_signed(mail(), issuer, signer="someone@example.org")
    assert rule(judge, raw) is Rule.SMIME_SIGNER


def test_signed_content_changed(judge: ChallengeMailJudge, issuer: Issuer) -> None:
    raw = smime_signed(mail(), issuer).replace(b"This is an ACME", b"This is an XCME")
    assert rule(judge, raw) is Rule.SMIME_INVALID


def test_outer_header_differs_from_the_protected_copy(judge: ChallengeMailJudge,
                                                      issuer: Issuer) -> None:
    signed = smime_signed(mail(), issuer)
    forged = signed.replace(b"Reply-To", b"X").replace(
        b"Auto-Submitted:", b"Reply-To: evil@evil.example\r\nAuto-Submitted:", 1)
    assert rule(judge, forged) is Rule.SMIME_HEADER_PROTECTION


def test_signature_without_a_protected_copy(judge: ChallengeMailJudge, issuer: Issuer) -> None:
    certificate, key = issuer.signer(CA)
    signed = (pkcs7.PKCS7SignatureBuilder().set_data(b"Content-Type: text/plain\r\n\r\nhi\r\n")
              .add_signer(certificate, key, hashes.SHA256())
              .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature]))
    outer = b"\r\n".join(f"{n}: {v}".encode() for n, v in headers()
                         if not n.lower().startswith(("content-", "mime-version")))
    raw = outer + b"\r\n" + signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert rule(judge, raw) is Rule.SMIME_HEADER_PROTECTION


def test_without_trust_anchors_only_dkim_counts(issuer: Issuer) -> None:
    judge = ChallengeMailJudge(txt_lookup=lambda name, timeout=5: None)
    judge.expect(ExpectedChallenge(ALICE, CA))
    assert rule(judge, smime_signed(mail(), issuer)) is Rule.DKIM_MISSING


def test_unsigned_relaxation_waives_a_failed_smime_check(tmp_path: Path) -> None:
    judge = ChallengeMailJudge({Relaxation.UNSIGNED}, txt_lookup=lambda name, timeout=5: None,
                               smime_verifier=openssl_verifier(
                                   Issuer("Trusted").write(tmp_path / "ca.pem")))
    judge.expect(ExpectedChallenge(ALICE, CA))
    found = judge.judge(smime_signed(mail(), Issuer("Untrusted")))
    assert found.waived == {Rule.SMIME_INVALID}
