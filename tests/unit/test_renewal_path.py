"""certbot's renewal path finds the mailbox in a certificate whose only SAN is rfc822Name."""
import datetime

from certbot._internal import renewal, storage
from certbot.tests import util as certbot_test_util
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certbot_email import certbot_compat
from tests.unit import certbot_versions

certbot_compat.install()


def _mailbox_only_certificate(address: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "issuer")]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class RenewalPathTest(certbot_test_util.ConfigTestCase):
    """From lineage to the names ``certbot renew`` asks the CA for."""

    def setUp(self) -> None:
        super().setUp()
        self.config.namespace.authenticator = "email-reply"
        cert_pem, key_pem = _mailbox_only_certificate("Alice@example.test")
        self.lineage = storage.RenewableCert.new_lineage(
            "Alice@example.test", cert_pem, key_pem, cert_pem, self.config)

    def test_lineage_names_come_from_the_rfc822name(self) -> None:
        if certbot_versions.HAS_SAN:
            from certbot._internal import san
            assert self.lineage.sans() == [san.DNSName("Alice@example.test")]
        assert self.lineage.names() == ["Alice@example.test"]

    def test_reconstitute_sets_the_address_as_the_name_to_renew(self) -> None:
        self.config.namespace.domains = []
        renewed = renewal.reconstitute(self.config, self.lineage.configfile.filename)
        assert renewed is not None
        assert [str(name) for name in self.config.domains] == ["Alice@example.test"]
