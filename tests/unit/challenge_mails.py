"""Challenge mails for tests: well-formed by default, DKIM-signed with keys made in the test."""
import base64
from typing import Optional

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email.protocol.rfc8823 import CHALLENGE_SIGNED_HEADERS

CA = "acme-generator@example.org"
ALICE = "alice@example.com"
TOKEN1 = "LgYemJLy3F1LDkiJrdIGbEzyFJyOyf6vBdyZ1TG3sME="
MESSAGE_ID = "<A2299BB.FF7788@example.org>"
SELECTOR = b"sel"
SIGNED = [name.encode() for name in CHALLENGE_SIGNED_HEADERS]

Headers = list[tuple[str, str]]


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


class Keys:
    """DKIM keys made for the test, published by a fake dnsfunc."""

    def __init__(self) -> None:
        self.private: dict[bytes, bytes] = {}
        self.records: dict[bytes, bytes] = {}
        #: A key of nobody's: what a forger who does not hold the CA's key signs with.
        self.impostor = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))

    def add(self, domain: bytes) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.private[domain] = _pem(key)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.records[SELECTOR + b"._domainkey." + domain + b"."] = \
            b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def lookup(self, name: bytes, timeout: float = 5) -> Optional[bytes]:
        return self.records.get(name)


def headers(**changes: Optional[str]) -> Headers:
    """The headers of a well-formed challenge; ``changes`` replace (None: drop) by name."""
    base = {
        "From": f"ACME CA <{CA}>",
        "To": f"Alice <{ALICE}>",
        "Subject": f"ACME: {TOKEN1}",
        "Date": "Sat, 5 Dec 2020 10:08:55 +0100",
        "Message-ID": MESSAGE_ID,
        "Auto-Submitted": "auto-generated; type=acme",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=us-ascii",
        "Content-Transfer-Encoding": "7bit",
    }
    for name, value in changes.items():
        base[name.replace("_", "-")] = value  # type: ignore[assignment]
    return [(name, value) for name, value in base.items() if value is not None]


def mail(header_list: Optional[Headers] = None, body: str = "This is an ACME challenge.\r\n",
         extra: Headers = ()) -> bytes:  # type: ignore[assignment]
    """Wire bytes of a mail with CRLF line ends."""
    lines = [f"{name}: {value}" for name, value in (header_list or headers()) + list(extra)]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def sign(keys: Keys, raw: bytes, domain: bytes = b"example.org",
         include: Optional[list[bytes]] = None, length: bool = False,
         private: Optional[bytes] = None) -> bytes:
    """``raw`` with a DKIM-Signature of ``domain`` prepended (by ``private`` if given)."""
    signature = dkim.sign(raw, SELECTOR, domain, private or keys.private[domain],
                          include_headers=include or SIGNED, length=length)
    return signature + raw
