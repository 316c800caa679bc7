"""acme2certifier, the independent RFC 8823 CA from PyPI, served on loopback against a Lab.

``running_acme2certifier(lab, state)`` writes its configuration (an openssl_ca_handler CA made
here, an S/MIME extensions profile, ca@example.test's lab mailbox over IMAPS and submission) and
runs ``python -m tests.integration.a2c_server`` in a child process, because acme2certifier reads
its configuration and sets up logging at import time. See notes/acme2certifier.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.lab.lab import LOOPBACK_IPS, Lab
from tests.lab.ports import HOST
from tests.lab.process import LabError

ROOT = Path(__file__).resolve().parents[2]
CA_MAILBOX = "ca"
START_TIMEOUT = 60.0
CA_VALIDITY = datetime.timedelta(days=30)
#: The name every local-host-name lookup in the server process gets instead of the resolver's.
FIXED_FQDN = "acme2certifier.example.test"
#: The S/MIME profile: what a mail client expects of a signing and encryption certificate.
SMIME_EXTENSIONS = """\
[extensions]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = emailProtection
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""
WSGI_MODULE = "acme2certifier.share.acme2certifier_wsgi"


@dataclasses.dataclass(frozen=True)
class RunningAcme2Certifier:
    """What a client and a test need: the directory URL, the issuing CA, the server log."""

    directory_url: str
    issuing_ca: Path
    log: Path


def write_issuing_ca(directory: Path) -> tuple[Path, Path]:
    """A throw-away EC root for openssl_ca_handler; returns (certificate, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme2certifier test S/MIME CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "issuing-ca.pem", directory / "issuing-ca.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def write_config(lab: Lab, state: Path) -> tuple[Path, Path]:
    """acme_srv.cfg for email identifiers only, mailing as ca; returns (config, issuing CA)."""
    ca_cert, ca_key = write_issuing_ca(state)
    extensions = state / "smime-extensions.cfg"
    extensions.write_text(SMIME_EXTENSIONS)
    (state / "issued").mkdir()
    ca = lab.user(CA_MAILBOX)
    settings = {
        "DEFAULT": {
            "imap_server": HOST, "imap_port": lab.ports.imaps, "imap_use_ssl": True,
            "smtp_server": HOST, "smtp_port": lab.ports.submission, "smtp_use_tls": True,
            "username": ca.address, "password": ca.password, "email_address": ca.address,
            "connection_timeout": 10},
        # certbot registers without contact (--register-unsafely-without-email) in the tests
        "Account": {"contact_check_disable": True},
        "Order": {"email_identifier_support": True, "email_identifier_rewrite": False},
        "Challenge": {"http_01_support": False, "dns_01_support": False,
                      "tls_alpn_01_support": False},
        "CAhandler": {
            "handler_module": "acme2certifier.cahandlers.openssl_ca_handler",
            "issuing_ca_key": ca_key, "issuing_ca_cert": ca_cert,
            "issuing_ca_crl": state / "issuing-ca.crl", "cert_validity_days": 30,
            "cert_save_path": state / "issued", "ca_cert_chain_list": f'["{ca_cert}"]',
            "openssl_conf": extensions},
        "DBhandler": {"handler_module": "acme2certifier.dbhandlers.wsgi_handler",
                      "dbfile": state / "acme2certifier.db"},
    }
    config = state / "acme_srv.cfg"
    config.write_text("".join(
        f"[{section}]\n" + "".join(f"{key}: {value}\n" for key, value in keys.items()) + "\n"
        for section, keys in settings.items()))
    config.chmod(0o600)
    return config, ca_cert


@contextlib.contextmanager
def running_acme2certifier(lab: Lab, state: Path) -> Iterator[RunningAcme2Certifier]:
    """Run acme2certifier against the lab until the block ends; clients trust lab.ca_file."""
    state.mkdir(parents=True, exist_ok=True)
    config, issuing_ca = write_config(lab, state)
    cert, key = lab.ca.issue("acme2certifier", ["localhost"], LOOPBACK_IPS)
    log = state / "acme2certifier.log"
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.a2c_server", str(cert), str(key)],
            cwd=ROOT, env={**os.environ, "ACME_SRV_CONFIGFILE": str(config)},
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (found := re.search(r"^directory: (\S+)$", log.read_text(), re.MULTILINE)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"acme2certifier did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield RunningAcme2Certifier(found.group(1), issuing_ca, log)
    finally:
        process.terminate()
        process.wait(timeout=START_TIMEOUT)


# ---- the child process ----------------------------------------------------------------------

class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request: a challenge POST blocks while acme2certifier polls its mailbox."""

    daemon_threads = True


def fixed_fqdn(name: str = "") -> str:
    """socket.getfqdn's stand-in: wsgiref's bind and smtplib's EHLO would ask the resolver."""
    return FIXED_FQDN


def https_app(application: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Tell acme2certifier its URLs are https (wsgiref only sees a plain socket server)."""
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.url_scheme"] = "https"
        return application(environ, start_response)
    return wrapped


def serve(cert: Path, key: Path) -> None:
    """Serve acme2certifier over TLS on a free loopback port; print the directory URL."""
    socket.getfqdn = fixed_fqdn
    from acme2certifier.share import acme2certifier_wsgi  # reads ACME_SRV_CONFIGFILE

    server = ThreadingWSGIServer((HOST, 0), WSGIRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.set_app(https_app(acme2certifier_wsgi.application))
    print(f"directory: https://{HOST}:{server.server_port}/directory", flush=True)
    server.serve_forever()


def main() -> None:
    """``python -m tests.integration.a2c_server CERT KEY`` with ACME_SRV_CONFIGFILE set."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("cert", type=Path)
    parser.add_argument("key", type=Path)
    options = parser.parse_args()
    serve(options.cert, options.key)


if __name__ == "__main__":
    main()
