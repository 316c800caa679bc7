"""OpenDKIM as a Postfix milter, signing what the submission listeners accept for example.test."""

from __future__ import annotations

import base64
import os
import pwd
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email.protocol.rfc8823 import CHALLENGE_SIGNED_HEADERS

from .config import render
from .process import Daemon, accepts, poll_until

# The header fields RFC 8823 section 3 requires in h=, plus MIME-Version, as OpenDKIM lists them.
RFC8823_SIGNED_HEADERS = (*(name.title() for name in CHALLENGE_SIGNED_HEADERS), "MIME-Version")


class OpenDkim(Daemon):
    """opendkim -f. It logs only to syslog (absent here): check its effect in the headers."""

    name = "opendkim"
    # It notices SIGTERM only after up to 6 s, and a signer keeps no state worth a clean exit.
    stop_grace = 1.0

    def __init__(self, workdir: Path, port: int, dns_port: int, domain: str) -> None:
        super().__init__(workdir)
        self.port = port
        self.dns_port = dns_port
        self.domain = domain
        self.selector = "lab"
        self.key_file = self.dir / f"{self.selector}.private"
        self.config_file = self.dir / "opendkim.conf"  # also for opendkim-testkey -x
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_b64 = base64.b64encode(public_der).decode()

    @property
    def record_name(self) -> str:
        """Where the public key is published: lab._domainkey.example.test."""
        return f"{self.selector}._domainkey.{self.domain}"

    def zone_record(self) -> str:
        """The key's TXT record for the zone file, in strings of at most 250 characters."""
        value = f"v=DKIM1; k=rsa; p={self.public_key_b64}"
        chunks = " ".join(f'"{value[i:i + 250]}"' for i in range(0, len(value), 250))
        return f"{self.selector}._domainkey IN TXT ( {chunks} )"

    def configure(self) -> None:
        user = pwd.getpwnam("opendkim")
        self.key_file.touch(mode=0o600)
        self.key_file.write_bytes(self._private_pem)
        os.chown(self.key_file, user.pw_uid, user.pw_gid)
        render(
            "opendkim.conf",
            self.config_file,
            dir=self.dir,
            port=self.port,
            domain=self.domain,
            selector=self.selector,
            key_file=self.key_file,
            headers=",".join(RFC8823_SIGNED_HEADERS),
        )
        render("unbound.conf", self.dir / "unbound.conf", dns_port=self.dns_port)

    def launch(self) -> None:
        self._spawn(["opendkim", "-f", "-x", str(self.config_file)])

    def wait_ready(self, deadline: float) -> None:
        what = f"opendkim on port {self.port}"
        poll_until(what, partial(accepts, self.port), deadline, self.alive)

    def logs(self, lines: int) -> dict[str, str]:
        """Only start-up errors ever show here: OpenDKIM logs nothing else without syslog."""
        text = super().logs(lines)[self.name]
        return {self.name: text or "(empty: OpenDKIM logs to syslog only)"}
