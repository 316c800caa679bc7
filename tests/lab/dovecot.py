"""Dovecot: the lab's mailboxes over IMAP, POP3 and LMTP, and the SASL socket for Postfix."""

from __future__ import annotations

import os
import pwd
import ssl
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from .config import render
from .ports import Ports
from .process import Daemon, greets, poll_until


class Dovecot(Daemon):
    """dovecot -F (so the master is our child); its log_path and its stderr share one file."""

    name = "dovecot"

    def __init__(
        self,
        workdir: Path,
        ports: Ports,
        mail_host: str,
        cert: tuple[Path, Path],
        passwords: Mapping[str, str],
        client_tls: ssl.SSLContext,
    ) -> None:
        super().__init__(workdir)
        self.ports = ports
        self.mail_host = mail_host
        self.cert_file, self.key_file = cert
        self.passwords = passwords
        self.client_tls = client_tls
        self.config_file = self.dir / "dovecot.conf"
        self.mail_dir = workdir / "mail"
        self.auth_socket = self.dir / "run" / "auth-postfix"

    def configure(self) -> None:
        for sub in ("run", "state"):
            (self.dir / sub).mkdir(mode=0o755, exist_ok=True)
        self.mail_dir.mkdir(mode=0o755, exist_ok=True)
        nobody = pwd.getpwnam("nobody")  # mail uids must be >= first_valid_uid (500)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        (self.dir / "users").write_text(
            "".join(f"{user}:{{PLAIN}}{secret}::::::\n" for user, secret in self.passwords.items())
        )
        p = self.ports
        render(
            "dovecot.conf",
            self.config_file,
            dir=self.dir,
            mail_dir=self.mail_dir,
            mail_host=self.mail_host,
            cert_file=self.cert_file,
            key_file=self.key_file,
            imap=p.imap,
            imaps=p.imaps,
            pop3=p.pop3,
            pop3s=p.pop3s,
            lmtp=p.lmtp,
        )

    def launch(self) -> None:
        self._spawn(["dovecot", "-F", "-c", str(self.config_file)])

    def wait_ready(self, deadline: float) -> None:
        p, tls, host = self.ports, self.client_tls, self.mail_host
        greetings = {
            f"dovecot imap {p.imap}": (p.imap, None, b"* OK"),
            f"dovecot imaps {p.imaps}": (p.imaps, tls, b"* OK"),
            f"dovecot pop3 {p.pop3}": (p.pop3, None, b"+OK"),
            f"dovecot pop3s {p.pop3s}": (p.pop3s, tls, b"+OK"),
            f"dovecot lmtp {p.lmtp}": (p.lmtp, None, b"220"),
        }
        for what, (port, context, greeting) in greetings.items():
            poll_until(what, partial(greets, port, greeting, context, host), deadline, self.alive)
        poll_until(f"dovecot {self.auth_socket}", self.auth_socket.exists, deadline, self.alive)
