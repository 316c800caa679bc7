"""Dovecot: the lab's mailboxes over IMAP, POP3 and LMTP, and the SASL socket for Postfix."""

from __future__ import annotations

import os
import pwd
import ssl
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from certbot_email_smtpext.dovecot import parse_version

from .config import render
from .ports import Ports
from .process import Daemon, greets, poll_until, run

#: Dovecot 2.4 changed the config syntax (templates/dovecot-2.4.conf); 2.3 is Debian 12's.
SYNTAX_2_4 = (2, 4)


def installed_version() -> tuple[int, ...]:
    """The installed Dovecot's version, e.g. (2, 3, 19, 1) on Debian 12, (2, 4, 1) on 13."""
    return parse_version(run(["dovecot", "--version"]))


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
        self.version = installed_version()

    @property
    def syntax_2_4(self) -> bool:
        """Whether this Dovecot reads 2.4 syntax (ssl_server_cert_file, passdb name {...})."""
        return self.version >= SYNTAX_2_4

    @property
    def cert_setting(self) -> str:
        """The setting that names the certificate served (2.3 and 2.4 differ)."""
        return "ssl_server_cert_file" if self.syntax_2_4 else "ssl_cert"

    def cert_settings(self, cert_file: Path, key_file: Path) -> str:
        """The lines an admin writes to serve cert_file/key_file (in any block or at the top)."""
        if self.syntax_2_4:
            return f"ssl_server_cert_file = {cert_file}\nssl_server_key_file = {key_file}\n"
        return f"ssl_cert = <{cert_file}\nssl_key = <{key_file}\n"

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
            "dovecot-2.4.conf" if self.syntax_2_4 else "dovecot-2.3.conf",
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
