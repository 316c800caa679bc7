"""Verifying S/MIME-signed challenge mails with the openssl CLI (no hand-written CMS parsing)."""
import os
import subprocess
import tempfile

from cryptography import x509

from certbot_email.protocol import csr
from certbot_email.protocol.mail_authenticity import SmimeSignature, SmimeVerifier

#: openssl gets this long to verify one mail.
OPENSSL_TIMEOUT = 30.0


def openssl_verifier(ca_file: str, openssl: str = "openssl") -> SmimeVerifier:
    """A verifier that trusts only the CAs in ``ca_file`` and requires S/MIME signing purpose."""

    def verify(raw: bytes) -> SmimeSignature:
        with tempfile.TemporaryDirectory(prefix="email-reply-smime-") as directory:
            signer_file = os.path.join(directory, "signer.pem")
            try:
                result = subprocess.run(
                    [openssl, "cms", "-verify", "-inform", "SMIME", "-CAfile", ca_file,
                     "-no-CApath", "-no-CAstore",  # not the system's CAs, only ca_file
                     "-purpose", "smimesign", "-signer", signer_file],
                    input=raw, capture_output=True, timeout=OPENSSL_TIMEOUT, check=False)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise ValueError(f"cannot run {openssl}: {error}") from None
            if result.returncode != 0:
                reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
                raise ValueError(f"openssl cms -verify: {reason[0] if reason else 'failed'}")
            with open(signer_file, "rb") as file:
                signer = x509.load_pem_x509_certificates(file.read())[0]
        try:
            names = signer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return SmimeSignature(signer_addresses=(), content=result.stdout)
        return SmimeSignature(signer_addresses=tuple(csr.mailboxes(names)),
                              content=result.stdout)
    return verify
