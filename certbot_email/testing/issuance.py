"""The test CA's keys and certificate profiles: S/MIME (RFC 8823 §3.3, RFC 8550) and TLS server
(RFC 7817, SRVName per RFC 4985). Checks a CSR against an order before anything is signed."""
import dataclasses
import datetime
import ipaddress
import secrets
from pathlib import Path
from typing import Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certbot_email.protocol import csr as csr_names
from certbot_email.protocol import identifiers as mail_ids
from certbot_email.testing import problems

IssuerKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048
ROOT_FILE, ROOT_KEY_FILE = "root.pem", "root-key.pem"
INTERMEDIATE_FILE, INTERMEDIATE_KEY_FILE = "intermediate.pem", "intermediate-key.pem"
_BANNER = "certbot-email TEST CA - NOT TRUSTED, NOT FOR PRODUCTION"


@dataclasses.dataclass
class CertificateRequest:
    """What a CSR asks for, split by name type; built only from a CSR that passed the checks."""

    csr: x509.CertificateSigningRequest
    dns_names: list[str]
    mailboxes: list[str]
    srv_names: list[str]
    key_usage: Optional[x509.KeyUsage]


def _name(common_name: str) -> x509.Name:
    """A subject naming the test CA, so nobody mistakes it for a real one."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _BANNER),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key: fast to make, accepted everywhere the tests look."""
    return ec.generate_private_key(ec.SECP256R1())


def _ca_certificate(subject: x509.Name, key: IssuerKey, issuer: x509.Name, signer: IssuerKey,
                    path_length: int, days: int) -> x509.Certificate:
    """A CA certificate (root or intermediate), with the key identifiers strict verifiers
    (Python 3.13's default, ``openssl verify -x509_strict``) require of every CA."""
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                         False, False), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer.public_key()), False)
            .sign(signer, hashes.SHA256()))


def _require_key_identifiers(intermediate: x509.Certificate, path: Path) -> None:
    """Refuse a CA made before its certificates carried an Authority Key Identifier: Python
    3.13 (and certbot on it) would reject every chain it serves or issues."""
    try:
        intermediate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        raise ValueError(f"{path} has no Authority Key Identifier, so strict verifiers (Python "
                         f"3.13's default) refuse it and every chain it signs: remove "
                         f"{ROOT_FILE}, {ROOT_KEY_FILE}, {INTERMEDIATE_FILE} and "
                         f"{INTERMEDIATE_KEY_FILE} from {path.parent} to make a new test CA, "
                         "then trust its new root") from None


def _write_pem(path: Path, data: bytes, private: bool = False) -> None:
    """Write PEM data; private keys are readable by the owner only."""
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _pem_key(key: IssuerKey) -> bytes:
    """PKCS#8 PEM of a private key, unencrypted (test CA)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    """Root and intermediate of one test CA, loaded from or created in the state directory."""

    def __init__(self, state_dir: Path, validity_days: int) -> None:
        self.validity = datetime.timedelta(days=validity_days)
        state_dir.mkdir(parents=True, exist_ok=True)
        root_path, inter_path = state_dir / ROOT_FILE, state_dir / INTERMEDIATE_FILE
        if not root_path.exists():
            self._create(state_dir)
        self.root = x509.load_pem_x509_certificate(root_path.read_bytes())
        self.intermediate = x509.load_pem_x509_certificate(inter_path.read_bytes())
        _require_key_identifiers(self.intermediate, inter_path)
        key = serialization.load_pem_private_key(
            (state_dir / INTERMEDIATE_KEY_FILE).read_bytes(), None)
        assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
        self.key: IssuerKey = key
        self.root_path = root_path

    @staticmethod
    def _create(state_dir: Path) -> None:
        """Make a root and an intermediate and write them with their keys."""
        root_key, inter_key = _new_key(), _new_key()
        root_name = _name("certbot-email test root " + secrets.token_hex(4))
        root = _ca_certificate(root_name, root_key, root_name, root_key, 1, 3650)
        inter = _ca_certificate(_name("certbot-email test intermediate"), inter_key,
                                root_name, root_key, 0, 3650)
        _write_pem(state_dir / ROOT_KEY_FILE, _pem_key(root_key), private=True)
        _write_pem(state_dir / INTERMEDIATE_KEY_FILE, _pem_key(inter_key), private=True)
        _write_pem(state_dir / INTERMEDIATE_FILE, inter.public_bytes(serialization.Encoding.PEM))
        _write_pem(state_dir / ROOT_FILE, root.public_bytes(serialization.Encoding.PEM))

    def chain_pem(self, leaf: x509.Certificate) -> str:
        """Leaf then intermediate, as ``application/pem-certificate-chain`` (RFC 8555 §9.1)."""
        return b"".join(cert.public_bytes(serialization.Encoding.PEM)
                        for cert in (leaf, self.intermediate)).decode("ascii")

    def _builder(self, public_key: CertificatePublicKeyTypes, sans: list[x509.GeneralName]
                 ) -> x509.CertificateBuilder:
        """Common parts of every leaf: empty subject, so the SAN is critical (RFC 5280)."""
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
        return (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(self.intermediate.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + self.validity)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(x509.SubjectAlternativeName(sans), True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), False))

    def issue_smime(self, request: CertificateRequest) -> x509.Certificate:
        """S/MIME profile: mailbox SANs, critical keyUsage from the CSR, EKU emailProtection."""
        key = request.csr.public_key()
        usage = smime_key_usage(request.key_usage, isinstance(key, rsa.RSAPublicKey))
        sans = csr_names.mailbox_sans(request.mailboxes)
        return (self._builder(key, sans).add_extension(usage, True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                               False)
                .sign(self.key, hashes.SHA256()))

    def issue_tls(self, request: CertificateRequest) -> x509.Certificate:
        """TLS server profile: dNSName and SRVName SANs, EKU serverAuth."""
        key = request.csr.public_key()
        is_rsa = isinstance(key, rsa.RSAPublicKey)
        usage = x509.KeyUsage(True, False, is_rsa, False, False, False, False, False, False)
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in request.dns_names]
        for srv in request.srv_names:
            service, _, host = srv[1:].partition(".")
            sans.append(csr_names.srv_general_name(service, host))
        return (self._builder(key, sans).add_extension(usage, True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
                .sign(self.key, hashes.SHA256()))

    def mailbox_identity(self, address: str) -> tuple[bytes, bytes]:
        """PEM certificate and key for the CA's own sender, to S/MIME-sign challenge mails."""
        key = _new_key()
        usage = smime_key_usage(None, is_rsa=False)
        cert = (self._builder(key.public_key(), csr_names.mailbox_sans([address]))
                .add_extension(usage, True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                               False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def server_certificate(self, address: str) -> tuple[bytes, bytes]:
        """PEM chain and key for the CA's own HTTPS listener on ``address``."""
        key = _new_key()
        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            sans.append(x509.DNSName(address))
        cert = (self._builder(key.public_key(), sans)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
                .sign(self.key, hashes.SHA256()))
        return self.chain_pem(cert).encode("ascii"), _pem_key(key)


def smime_key_usage(requested: Optional[x509.KeyUsage], is_rsa: bool) -> x509.KeyUsage:
    """RFC 8823 §3.3: signing bits, encryption bits, or both when the CSR names none."""
    if requested is None:
        sign, encrypt_rsa, encrypt_ec = True, is_rsa, not is_rsa
    else:
        sign = requested.digital_signature or requested.content_commitment
        encrypt_rsa = requested.key_encipherment
        encrypt_ec = requested.key_agreement
    return x509.KeyUsage(digital_signature=sign, content_commitment=False,
                         key_encipherment=encrypt_rsa, data_encipherment=False,
                         key_agreement=encrypt_ec, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def bad_csr(detail: str) -> problems.AcmeProblemError:
    """The ``badCSR`` problem."""
    return problems.AcmeProblemError("badCSR", detail)


def parse_csr(der: bytes) -> CertificateRequest:
    """Decode a CSR and check its signature, key and name types; ``badCSR`` otherwise."""
    try:
        csr = x509.load_der_x509_csr(der)
        signature_ok = csr.is_signature_valid
        extensions = csr.extensions
        subject_cn = [attr.value for attr in
                      csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        public_key = csr.public_key()
    except Exception as error:  # noqa: BLE001 - cryptography raises several types for bad DER
        raise bad_csr(f"cannot parse the CSR: {error}") from None
    if not signature_ok:
        raise bad_csr("the CSR's self-signature does not verify")
    _check_key(public_key)
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise bad_csr("the CSR has no subjectAltName extension request") from None
    try:
        key_usage: Optional[x509.KeyUsage] = extensions.get_extension_for_class(
            x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    dns_names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    try:
        mailboxes = [mail_ids.normalize_mailbox(box) for box in csr_names.mailboxes(san)]
        srvs = [name.lower() for name in csr_names.srv_names(san)]
    except ValueError as error:
        raise bad_csr(f"a subjectAltName is malformed: {error}") from None
    known = len(dns_names) + len(mailboxes) + len(srvs)
    if known != len(list(san)):
        raise bad_csr("the CSR asks for subjectAltName types this CA does not issue "
                      "(only dNSName, rfc822Name, SmtpUTF8Mailbox and SRVName)")
    if subject_cn and subject_cn[0] not in dns_names + mailboxes:
        raise bad_csr(f"the subject CN {subject_cn[0]!r} is not among the subjectAltNames")
    return CertificateRequest(csr, dns_names, mailboxes, srvs, key_usage)


def _check_key(public_key: object) -> None:
    """Only RSA >= 2048 bits and EC P-256/P-384 keys are certified."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _MIN_RSA_BITS:
            raise problems.AcmeProblemError("badPublicKey",
                                            f"RSA keys must have at least {_MIN_RSA_BITS} bits")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _ALLOWED_CURVES):
            raise problems.AcmeProblemError("badPublicKey", "EC keys must be P-256 or P-384")
    else:
        raise problems.AcmeProblemError("badPublicKey", "only RSA and EC keys are accepted")


def check_against_order(request: CertificateRequest, identifiers: list[dict[str, str]],
                        allowed_srv: set[str]) -> None:
    """The CSR's names must equal the order's identifiers exactly; SRVNames must be proven."""
    wanted_dns = {ident["value"] for ident in identifiers if ident["type"] == "dns"}
    wanted_mail = {ident["value"] for ident in identifiers if ident["type"] == "email"}
    if len(set(request.dns_names)) != len(request.dns_names) or \
            len(set(request.mailboxes)) != len(request.mailboxes):
        raise bad_csr("the CSR repeats a name")
    if set(request.dns_names) != wanted_dns or set(request.mailboxes) != wanted_mail:
        raise bad_csr(f"the CSR names dns={sorted(request.dns_names)} "
                      f"email={sorted(request.mailboxes)}, but the order is for "
                      f"dns={sorted(wanted_dns)} email={sorted(wanted_mail)}")
    for srv in request.srv_names:
        if srv not in allowed_srv:
            raise bad_csr(f"SRVName {srv!r} was not validated by an email-tls challenge "
                          "for that name and service")
    if wanted_mail and request.key_usage is not None:
        _check_smime_key_usage(request.key_usage)


def _check_smime_key_usage(usage: x509.KeyUsage) -> None:
    """RFC 8823 §3.3: only signing and encryption bits; anything else is refused."""
    other = usage.data_encipherment or usage.key_cert_sign or usage.crl_sign
    if usage.key_agreement:
        other = other or usage.encipher_only or usage.decipher_only
    if other:
        raise bad_csr("the CSR's keyUsage may only ask for digitalSignature/nonRepudiation "
                      "and keyEncipherment/keyAgreement (RFC 8823 §3.3)")
    if not (usage.digital_signature or usage.content_commitment or usage.key_encipherment
            or usage.key_agreement):
        raise bad_csr("the CSR's keyUsage asks for neither signing nor encryption")
