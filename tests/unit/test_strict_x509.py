"""Every certificate our test CAs make passes strict X.509 verification on any Python.

Python 3.13 turns on VERIFY_X509_STRICT in its default contexts (and urllib3, so certbot's
ACME client, does too): a CA without an Authority Key Identifier is then refused. Here the flag
is set explicitly, so older Pythons check the same, and ``openssl verify -x509_strict`` checks
every chain: the test CA's HTTPS listener, each profile it issues, and the lab's own CA.
"""
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certbot_email.testing import issuance, rawclient, runtime
from certbot_email.testing.config import CAConfig
from tests.lab.certs import CertificateAuthority

MAILBOX = "alice@example.test"
SMIME_SIGN = x509.KeyUsage(True, False, False, False, False, False, False, False, False)


def strict_client(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts cafile and verifies as strictly as Python 3.13 does."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def openssl_verify(root: Path, chain_pem: str, purpose: str, tmp_path: Path) -> None:
    """openssl verify -x509_strict of the chain's first certificate, the rest untrusted."""
    pems = [block + "-----END CERTIFICATE-----\n"
            for block in chain_pem.split("-----END CERTIFICATE-----") if block.strip()]
    leaf, untrusted = tmp_path / "leaf.pem", tmp_path / "untrusted.pem"
    leaf.write_text(pems[0])
    untrusted.write_text("".join(pems[1:]) or pems[0])
    done = subprocess.run(["openssl", "verify", "-x509_strict", "-purpose", purpose,
                           "-CAfile", str(root), "-untrusted", str(untrusted), str(leaf)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(": OK")


def handshake(port: int, server_hostname: str, context: ssl.SSLContext) -> dict:
    """The peer certificate after a verified TLS handshake with 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.getpeercert()


@pytest.fixture(name="authority", scope="module")
def fixture_authority(tmp_path_factory) -> issuance.Authority:
    return issuance.Authority(tmp_path_factory.mktemp("ca"), validity_days=3)


def test_testca_https_listener_passes_strict_verification(tmp_path):
    launched = runtime.launch(CAConfig(state_dir=tmp_path, port=0))
    try:
        port = launched.running.server.server_address[1]
        root = Path(launched.root_path)
        peer = handshake(port, "127.0.0.1", strict_client(root))
        chain = (tmp_path / runtime.SERVER_CERT_FILE).read_text()
    finally:
        launched.stop()
    assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
    openssl_verify(root, chain, "sslserver", tmp_path)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_issued_tls_chain_passes_strict_verification(authority, kind, tmp_path):
    csr = rawclient.make_csr(rawclient.new_key(kind), dns_names=("mail.example.test",),
                             srv=(("imaps", "example.test"),))
    request = issuance.parse_csr(x509.load_pem_x509_csr(csr).public_bytes(
        serialization.Encoding.DER))
    chain = authority.chain_pem(authority.issue_tls(request))
    openssl_verify(authority.root_path, chain, "sslserver", tmp_path)


@pytest.mark.parametrize("usage", [None, SMIME_SIGN])
def test_issued_smime_chain_passes_strict_verification(authority, usage, tmp_path):
    csr = rawclient.make_csr(rawclient.new_key("rsa"), mailboxes=(MAILBOX,), key_usage=usage)
    request = issuance.parse_csr(x509.load_pem_x509_csr(csr).public_bytes(
        serialization.Encoding.DER))
    chain = authority.chain_pem(authority.issue_smime(request))
    openssl_verify(authority.root_path, chain, "smimesign", tmp_path)


def test_testca_sender_identity_passes_strict_verification(authority, tmp_path):
    cert, _key = authority.mailbox_identity("ca@example.test")
    chain = authority.chain_pem(x509.load_pem_x509_certificate(cert))
    openssl_verify(authority.root_path, chain, "smimesign", tmp_path)


def test_lab_ca_certificates_pass_strict_verification(tmp_path):
    lab_ca = CertificateAuthority(tmp_path / "lab-ca")
    cert_file, key_file = lab_ca.issue("mail", ["mail.example.test"], ["127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve_one() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True):
                pass
        thread = threading.Thread(target=serve_one, daemon=True)
        thread.start()
        peer = handshake(listener.getsockname()[1], "mail.example.test",
                         strict_client(lab_ca.ca_file))
        thread.join(10)
    assert ("DNS", "mail.example.test") in peer["subjectAltName"]
    assert lab_ca.client_context().verify_flags & ssl.VERIFY_X509_STRICT
    openssl_verify(lab_ca.ca_file, cert_file.read_text(), "sslserver", tmp_path)


def test_state_dir_from_before_key_identifiers_is_refused_with_what_to_do(tmp_path):
    issuance.Authority(tmp_path, 1)
    root_key = serialization.load_pem_private_key(
        (tmp_path / issuance.ROOT_KEY_FILE).read_bytes(), None)
    old = x509.load_pem_x509_certificate((tmp_path / issuance.INTERMEDIATE_FILE).read_bytes())
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.issuer)
               .public_key(old.public_key()).serial_number(old.serial_number)
               .not_valid_before(old.not_valid_before_utc)
               .not_valid_after(old.not_valid_after_utc))
    for extension in old.extensions:
        if not isinstance(extension.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(extension.value, extension.critical)
    without_aki = builder.sign(root_key, hashes.SHA256())
    (tmp_path / issuance.INTERMEDIATE_FILE).write_bytes(
        without_aki.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ValueError, match="no Authority Key Identifier.*remove root.pem, "
                                         "root-key.pem, intermediate.pem and"):
        issuance.Authority(tmp_path, 1)
