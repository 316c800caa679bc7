"""The lab's own test CA: it signs the TLS certificates of the mail servers and of Pebble."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=7)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """A throw-away CA (EC P-256, so that making certificates costs milliseconds, not seconds).

    Its certificates carry what RFC 5280 and strict verifiers (Python 3.13's default context,
    ``openssl verify -x509_strict``) ask for: key identifiers, critical CA constraints, keyUsage.
    """

    def __init__(self, directory: Path, name: str = "certbot-email lab CA") -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o755, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .add_extension(self._authority_key_id(), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """Our key's identifier: strict verifiers (Python 3.13's default) require it."""
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())

    def issue(self, stem: str, dns_names: list[str], ips: list[str]) -> tuple[Path, Path]:
        """Write stem.crt (leaf, then CA) and stem.key (0600) for a TLS server; return the paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=False, crl_sign=False,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(self._authority_key_id(), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert_path, key_path = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        pem = serialization.Encoding.PEM
        cert_path.write_bytes(cert.public_bytes(pem) + self._cert.public_bytes(pem))
        key_path.touch(mode=0o600)
        key_path.write_bytes(_private_pem(key))
        return cert_path, key_path

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts only this CA, checks host names, and verifies as
        strictly as Python 3.13 does by default, on every Python."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context
