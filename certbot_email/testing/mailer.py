"""The RFC 8823 challenge mail (§3.1): composed and DKIM-signed as pure steps, then sent by SMTP."""
import base64
import dataclasses
import email.message
import email.policy
import email.utils
import logging
import smtplib
import subprocess
from pathlib import Path
from typing import Optional

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email.protocol import rfc8823
from certbot_email.testing.config import MailSettings

logger = logging.getLogger(__name__)
DKIM_KEY_FILE = "dkim-key.pem"
_SMTP_TIMEOUT = 10.0

_BODY = ("This is an automatic ACME challenge from the certbot-email TEST CA for {to}.\r\n"
         "If you did not ask for a certificate, ignore this message.\r\n"
         "An ACME client answers it by itself; token-part1 is in the Subject.\r\n")


def load_or_create_dkim_key(state_dir: Path, configured: Optional[Path]) -> bytes:
    """The PEM of the CA's DKIM key: the configured one, or one kept in the state directory."""
    path = configured or state_dir / DKIM_KEY_FILE
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
    return path.read_bytes()


def dkim_txt_record(key_pem: bytes) -> str:
    """The selector's TXT value ``v=DKIM1; k=rsa; p=...`` to publish in DNS."""
    key = serialization.load_pem_private_key(key_pem, None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def compose_challenge(settings: MailSettings, recipient: str, token_part1: str) -> bytes:
    """The unsigned challenge mail, CRLF line endings, every header the RFC asks for."""
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    domain = settings.sender.rpartition("@")[2]
    message["From"] = settings.sender
    message["To"] = recipient
    if settings.reply_to:
        message["Reply-To"] = settings.reply_to
    message["Subject"] = f"{rfc8823.SUBJECT_LABEL} {token_part1}"
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid("acme", domain=domain)
    if not settings.omit_auto_submitted:
        message["Auto-Submitted"] = "auto-generated; type=acme"
    message.set_content(_BODY.format(to=recipient), charset="us-ascii", cte="7bit")
    return message.as_bytes()


def sign_challenge(raw: bytes, settings: MailSettings, key_pem: bytes) -> bytes:
    """Prepend a DKIM-Signature with d= the From domain and h= the RFC's lists."""
    domain = settings.sender.rpartition("@")[2]
    headers = [name.encode("ascii") for name in
               rfc8823.CHALLENGE_SIGNED_HEADERS + rfc8823.RECOMMENDED_SIGNED_HEADERS]
    signature = dkim.sign(raw, settings.dkim_selector.encode("ascii"),
                          domain.encode("ascii"), key_pem, include_headers=headers,
                          canonicalize=(b"relaxed", b"relaxed"))
    return signature + raw


@dataclasses.dataclass(frozen=True)
class SmimeSigner:
    """Files ``openssl cms`` signs with: the sender's certificate, its key, the intermediate."""

    certificate: Path
    key: Path
    chain: Path


#: Outer headers that the S/MIME wrapper replaces with its own MIME structure.
_MIME_HEADERS = (b"content-type", b"content-transfer-encoding", b"mime-version")


def _header_fields(raw: bytes) -> list[bytes]:
    """The header block of a CRLF message as whole fields, folded lines kept together."""
    block = raw.split(b"\r\n\r\n", 1)[0]
    fields: list[bytes] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields


def smime_sign_challenge(raw: bytes, signer: SmimeSigner) -> bytes:
    """multipart/signed over a message/rfc822 copy of the whole mail (header protection, A8)."""
    inner = b"Content-Type: message/rfc822\r\n\r\n" + raw
    signed = subprocess.run(
        ["openssl", "cms", "-sign", "-signer", str(signer.certificate), "-inkey",
         str(signer.key), "-certfile", str(signer.chain), "-md", "sha256"],
        input=inner, capture_output=True, check=False)
    if signed.returncode != 0:
        raise RuntimeError("openssl cms -sign failed: "
                           + signed.stderr.decode("utf-8", "replace").strip())
    body = signed.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    outer = [field for field in _header_fields(raw)
             if field.split(b":", 1)[0].strip().lower() not in _MIME_HEADERS]
    return b"\r\n".join(outer) + b"\r\n" + body


class Mailer:
    """Sends challenge mails through the configured SMTP server (loopback in every test)."""

    def __init__(self, settings: MailSettings, key_pem: bytes,
                 smime: Optional[SmimeSigner] = None) -> None:
        self.settings = settings
        self.key_pem = key_pem
        self.smime = smime

    def challenge_bytes(self, recipient: str, token_part1: str) -> bytes:
        """The mail as it goes on the wire: DKIM-signed, S/MIME-signed, or unsigned."""
        raw = compose_challenge(self.settings, recipient, token_part1)
        if self.settings.unsigned:
            return raw
        if self.smime is not None:
            return smime_sign_challenge(raw, self.smime)
        return sign_challenge(raw, self.settings, self.key_pem)

    def send(self, recipient: str, token_part1: str) -> None:
        """Deliver one challenge mail; SMTP errors propagate to the caller, which logs them."""
        data = self.challenge_bytes(recipient, token_part1)
        with smtplib.SMTP(self.settings.smtp_host, self.settings.smtp_port,
                          local_hostname=self.settings.local_hostname,
                          timeout=_SMTP_TIMEOUT) as smtp:
            smtp.sendmail(self.settings.sender, [recipient], data)
        logger.info("challenge mail for %s sent via %s:%d (%s)", recipient,
                    self.settings.smtp_host, self.settings.smtp_port,
                    "unsigned" if self.settings.unsigned else
                    "S/MIME-signed" if self.smime else "DKIM-signed")
