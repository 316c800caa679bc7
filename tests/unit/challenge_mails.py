"""Challenge mails for tests: well-formed by default, DKIM-signed with keys made in the test."""
import base64
import subprocess
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


#: Selectors under which ``Keys.add_variants`` publishes keys that break a rule.
TEST_MODE = b"testing"      # t=y
SMALL = b"small"            # a 768-bit RSA key
REVOKED = b"revoked"        # p= empty
DOWN = b"down"              # its lookup fails, as when the name server does not answer


def record(key: rsa.RSAPrivateKey, extra: bytes = b"") -> bytes:
    """The DKIM TXT record of ``key``."""
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; " + extra + b"p=" + base64.b64encode(public)


def small_rsa_key() -> rsa.RSAPrivateKey:
    """A 768-bit key, which ``cryptography`` will not make: the openssl CLI does."""
    pem = subprocess.run(["openssl", "genrsa", "768"], capture_output=True, check=True).stdout
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


class Keys:
    """DKIM keys made for the test, published by a fake dnsfunc."""

    def __init__(self) -> None:
        self.private: dict[bytes, bytes] = {}
        self.records: dict[bytes, bytes] = {}
        #: Names whose lookup fails (the name server is down), and how often one was asked.
        self.failing: set[bytes] = set()
        self.lookups: list[bytes] = []
        #: A key of nobody's: what a forger who does not hold the CA's key signs with.
        self.impostor = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))

    def add(self, domain: bytes, selector: bytes = SELECTOR) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.private[selector + b"/" + domain] = _pem(key)
        self.records[self.name(domain, selector)] = record(key)

    def add_variants(self, domain: bytes) -> None:
        """Keys of ``domain`` that a rule refuses: test mode, too small, revoked, unreachable."""
        for selector in (TEST_MODE, REVOKED, DOWN):
            self.add(domain, selector)
        self.records[self.name(domain, TEST_MODE)] = \
            self.records[self.name(domain, TEST_MODE)].replace(b"k=rsa; ", b"k=rsa; t=y; ")
        self.records[self.name(domain, REVOKED)] = b"v=DKIM1; k=rsa; p="
        self.failing.add(self.name(domain, DOWN))
        small = small_rsa_key()
        self.private[SMALL + b"/" + domain] = _pem(small)
        self.records[self.name(domain, SMALL)] = record(small)

    @staticmethod
    def name(domain: bytes, selector: bytes = SELECTOR) -> bytes:
        return selector + b"._domainkey." + domain + b"."

    def lookup(self, name: bytes, timeout: float = 5) -> Optional[bytes]:
        self.lookups.append(name)
        if name in self.failing:
            raise LookupError(f"TXT lookup of {name.decode()} at 192.0.2.53 port 53 failed: "
                              f"The DNS operation timed out.")
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
         private: Optional[bytes] = None, selector: bytes = SELECTOR,
         algorithm: bytes = b"rsa-sha256") -> bytes:
    """``raw`` with a DKIM-Signature of ``domain`` prepended (by ``private`` if given)."""
    signature = dkim.sign(raw, selector, domain,
                          private or keys.private[selector + b"/" + domain],
                          include_headers=include or SIGNED, length=length,
                          signature_algorithm=algorithm)
    return signature + raw
