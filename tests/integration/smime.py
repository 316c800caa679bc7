"""Does an issued S/MIME certificate do its job? Sign a message with it, verify with openssl."""
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

MESSAGE = b"Content-Type: text/plain\r\n\r\nSigned with a certificate certbot obtained.\r\n"


def assert_signs_verifiable_mail(lineage: Path, trusted_ca: Path) -> None:
    """`openssl cms -sign` with the lineage's key, adding the intermediates the CA sent once
    each (some CAs repeat certificates in the chain, which openssl refuses); `-verify` against
    trusted_ca."""
    leaf = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    chain = (lineage / "chain.pem").read_bytes()
    sent = x509.load_pem_x509_certificates(chain) if chain.strip() else []
    intermediates = [c for c in dict.fromkeys(sent) if c != leaf]
    with tempfile.NamedTemporaryFile(suffix=".pem") as extra:
        extra.write(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in intermediates))
        extra.flush()
        signing = subprocess.run(
            ["openssl", "cms", "-sign", "-signer", str(lineage / "cert.pem"),
             "-inkey", str(lineage / "privkey.pem"),
             *(["-certfile", extra.name] if intermediates else [])],
            input=MESSAGE, capture_output=True, check=False)
    assert signing.returncode == 0, signing.stderr.decode()
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-CAfile", str(trusted_ca), "-purpose", "smimesign"],
        input=signing.stdout, capture_output=True, check=False)
    assert verified.returncode == 0, verified.stderr.decode()
    assert verified.stdout.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
