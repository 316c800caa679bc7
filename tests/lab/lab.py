"""The lab: BIND, Postfix, Dovecot, OpenDKIM and Pebble for example.test, from one temp dir."""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import signal
import ssl
import tempfile
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from imapclient import IMAPClient

from . import clients
from .bind import Bind
from .certs import CertificateAuthority
from .dkim import OpenDkim
from .dovecot import Dovecot
from .pebble import Pebble
from .ports import PortReservation, Ports
from .postfix import Postfix
from .process import Daemon, LabError, find_binary, signal_pids, wait_gone

DOMAIN = "example.test"
MAIL_HOST = f"mail.{DOMAIN}"
MAIL_CERT_NAMES = [MAIL_HOST, f"imap.{DOMAIN}", f"smtp.{DOMAIN}", f"pop.{DOMAIN}", "localhost"]
LOOPBACK_IPS = ["127.0.0.1", "::1"]
# Unix socket paths are limited to 108 bytes; the longest below the work dir, Dovecot's
# dovecot/run/token-login/imap-urlauth, takes 37 of them.
MAX_WORKDIR_LENGTH = 60
DEFAULT_START_TIMEOUT = 15.0
# Pebble's own default is 5 years; 90 days is what a real CA issues.
DEFAULT_CERT_VALIDITY = 90 * 24 * 3600

BINARIES = {
    "dns": ["named", "tsig-keygen"],
    "mail": ["postfix", "dovecot"],
    "dkim": ["opendkim"],
    "pebble": ["pebble"],
}

D = TypeVar("D", bound=Daemon)


@dataclasses.dataclass(frozen=True)
class User:
    """A mailbox of the lab, with its password (IMAP, POP3 and SMTP AUTH)."""

    address: str
    password: str


USERS = {name: User(f"{name}@{DOMAIN}", f"{name}-secret") for name in ("alice", "bob", "ca")}


class Lab:
    """Real mail, DNS and ACME servers for example.test on 127.0.0.1 and ::1, on free ports.

    ``with Lab() as lab:`` starts everything; ``Lab().start(pebble=False)`` leaves a part out.
    The servers are reached through the ``dns``, ``postfix``, ``dovecot``, ``opendkim`` and
    ``pebble`` attributes, the ports through ``ports``, and mail through the helpers below.
    """

    domain = DOMAIN
    mail_host = MAIL_HOST
    users = USERS

    def __init__(self, workdir: Path | None = None, **fixed_ports: int) -> None:
        """workdir: where all state goes; by default a new dir under /tmp, removed by stop().

        fixed_ports: Ports fields to use as given instead of free ones, e.g. http01=5002.
        """
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="lab-", dir="/tmp"))
        if len(str(self.workdir)) > MAX_WORKDIR_LENGTH:
            raise LabError(f"{self.workdir}: over {MAX_WORKDIR_LENGTH} chars, too long for sockets")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # postfix, dovecot, dovenull, nobody, opendkim must traverse it
        self._reservation = PortReservation()
        self.ports: Ports = self._reservation.allocate(**fixed_ports)
        self.ca = CertificateAuthority(self.workdir / "ca")
        self._daemons: list[Daemon] = []

    # -- lifecycle ----------------------------------------------------------------------------

    @staticmethod
    def missing_requirements(
        *, dns: bool = True, mail: bool = True, dkim: bool = True, pebble: bool = True
    ) -> list[str]:
        """What keeps this machine from running those parts: missing binaries, not being root."""
        wanted = {"dns": dns, "mail": mail, "dkim": dkim and mail, "pebble": pebble}
        missing = [
            f"{binary} (for {part})"
            for part, on in wanted.items()
            if on
            for binary in BINARIES[part]
            if find_binary(binary) is None
        ]
        if os.geteuid() != 0:
            missing.append("root (the servers bind and switch users as root)")
        return missing

    def start(
        self,
        *,
        dns: bool = True,
        mail: bool = True,
        dkim: bool | None = None,
        pebble: bool = True,
        pebble_always_valid: bool = False,
        cert_validity_seconds: int = DEFAULT_CERT_VALIDITY,
        zone_records: Sequence[str] = (),
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> Lab:
        """Start the chosen servers, wait until each one answers, and return self.

        dkim (default: same as mail) adds OpenDKIM to Postfix's submission listeners, its key
        published in the zone. zone_records are extra zone file lines, e.g.
        "_acme-challenge.alias IN CNAME target". On any failure everything is stopped and
        LabError raised, with the log tails in its message.
        """
        if self._daemons:
            raise LabError("the lab is already running")
        dkim = mail if dkim is None else dkim
        atexit.register(self.stop)
        try:
            if dkim and not mail:
                raise LabError("dkim=True needs mail=True: OpenDKIM is Postfix's milter")
            missing = self.missing_requirements(dns=dns, mail=mail, dkim=dkim, pebble=pebble)
            if missing:
                raise LabError(f"cannot start the lab, missing: {', '.join(missing)}")
            self._daemons = self._create(
                dns, mail, dkim, pebble, pebble_always_valid, cert_validity_seconds, zone_records
            )
            for daemon in self._daemons:
                daemon.configure()
            for daemon in self._daemons:
                daemon.launch()
            deadline = time.monotonic() + timeout
            for daemon in self._daemons:
                daemon.wait_ready(deadline)
        except BaseException as error:
            logs = self.format_logs(lines=20)
            self.stop()
            if isinstance(error, LabError) and logs:
                raise LabError(f"{error}\n{logs}") from error
            raise
        return self

    def _create(
        self,
        dns: bool,
        mail: bool,
        dkim: bool,
        pebble: bool,
        pebble_always_valid: bool,
        cert_validity_seconds: int,
        zone_records: Sequence[str],
    ) -> list[Daemon]:
        """The daemons, in start order: DNS first, since OpenDKIM and Pebble query it."""
        tls = self.ca.client_context()
        ports = self.ports
        opendkim = OpenDkim(self.workdir, ports.milter, ports.dns, DOMAIN) if dkim else None
        daemons: list[Daemon] = []
        if dns:
            records = [*zone_records, *([] if opendkim is None else [opendkim.zone_record()])]
            daemons.append(Bind(self.workdir, ports.dns, DOMAIN, records))
        if opendkim is not None:
            daemons.append(opendkim)
        if mail:
            cert = self.ca.issue("mail", MAIL_CERT_NAMES, LOOPBACK_IPS)
            passwords = {user.address: user.password for user in USERS.values()}
            dovecot = Dovecot(self.workdir, ports, MAIL_HOST, cert, passwords, tls)
            milter = None if opendkim is None else ports.milter
            postfix = Postfix(
                self.workdir, ports, DOMAIN, MAIL_HOST, cert, passwords, dovecot.auth_socket,
                milter, tls,
            )
            daemons += [dovecot, postfix]
        if pebble:
            cert = self.ca.issue("pebble", ["localhost"], LOOPBACK_IPS)
            daemons.append(
                Pebble(
                    self.workdir, ports, cert, self.ca.ca_file, tls, cert_validity_seconds,
                    pebble_always_valid,
                )
            )
        return daemons

    def stop(self) -> None:
        """Stop every server by PID, all at once: each gets its stop_grace, then SIGKILL.

        Safe to call twice; a stopped lab does not start again (make a new one). Raises
        LabError only if a process survives SIGKILL.
        """
        atexit.unregister(self.stop)
        started = time.monotonic()
        requests = [(daemon, daemon.request_stop()) for daemon in reversed(self._daemons)]
        survivors: list[int] = []
        for daemon, pids in sorted(requests, key=lambda request: request[0].stop_grace):
            remaining = wait_gone(pids, started + daemon.stop_grace - time.monotonic())
            if remaining:
                signal_pids(remaining, signal.SIGKILL)
                survivors += wait_gone(remaining, 5)
            daemon.reap()
        self._daemons = []
        self._reservation.release()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if survivors:
            raise LabError(f"processes survived SIGKILL: {survivors}")

    def __enter__(self) -> Lab:
        return self if self._daemons else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the servers --------------------------------------------------------------------------

    def _get(self, kind: type[D]) -> D:
        for daemon in self._daemons:
            if isinstance(daemon, kind):
                return daemon
        raise LabError(f"{kind.__name__} is not running in this lab")

    @property
    def dns(self) -> Bind:
        """BIND: host, port, zone, key_name/_secret/_algorithm/_file, resolver(), txt()."""
        return self._get(Bind)

    @property
    def postfix(self) -> Postfix:
        """Postfix: etc (for postfix -c / postconf -c), log_path (its maillog)."""
        return self._get(Postfix)

    @property
    def dovecot(self) -> Dovecot:
        """Dovecot: config_file, mail_dir, auth_socket."""
        return self._get(Dovecot)

    @property
    def opendkim(self) -> OpenDkim:
        """OpenDKIM: selector, record_name, public_key_b64."""
        return self._get(OpenDkim)

    @property
    def pebble(self) -> Pebble:
        """Pebble: directory_url, ca_bundle, root_pem(), certbot_options/_environment()."""
        return self._get(Pebble)

    @property
    def ca_file(self) -> Path:
        """The CA of every lab TLS listener (mail servers, Pebble): for clients to verify."""
        return self.ca.ca_file

    def client_tls(self) -> ssl.SSLContext:
        """A client TLS context that trusts only the lab CA and checks host names."""
        return self.ca.client_context()

    def logs(self, lines: int = 60) -> dict[str, str]:
        """Log name -> the last lines of that server's log."""
        found: dict[str, str] = {}
        for daemon in self._daemons:
            found.update(daemon.logs(lines))
        return found

    def format_logs(self, lines: int = 60) -> str:
        """All log tails as one text, for a failure report."""
        return "\n".join(f"----- {name} -----\n{text}" for name, text in self.logs(lines).items())

    # -- mail helpers -------------------------------------------------------------------------

    def user(self, name: str) -> User:
        """A user by local part ("alice") or by address."""
        return USERS[name.partition("@")[0]]

    def message(
        self, sender: str, recipient: str, subject: str, body: str = "lab test\n", **headers: str
    ) -> EmailMessage:
        """A complete message (clients.build_message); a bare local part means @example.test."""
        return clients.build_message(
            self._address(sender), self._address(recipient), subject, body, **headers
        )

    def send_mail(self, message: EmailMessage, *, starttls: bool = False) -> None:
        """Inject through the port-25 listener: no AUTH, never DKIM signed."""
        context = self.client_tls() if starttls else None
        clients.smtp_send(self.ports.smtp, message, starttls=context)

    def submit_mail(self, user: str, message: EmailMessage, *, implicit_tls: bool = False) -> None:
        """Submit as user with AUTH, on submission (STARTTLS) or submissions (implicit TLS)."""
        account = self.user(user)
        port = self.ports.submissions if implicit_tls else self.ports.submission
        clients.smtp_submit(
            port, message, account.address, account.password, self.client_tls(),
            implicit_tls=implicit_tls,
        )

    def wait_for_mail(self, user: str, subject: str, timeout: float = 10) -> bytes:
        """The raw newest message in user's INBOX whose Subject contains subject (over IMAPS)."""
        account = self.user(user)
        return clients.wait_for_message(
            self.ports.imaps, account.address, account.password, self.client_tls(), subject, timeout
        )

    def imap(self, user: str) -> IMAPClient:
        """A logged-in IMAPS client for user (TLS verified); the caller logs it out."""
        account = self.user(user)
        return clients.imap_login(
            self.ports.imaps, account.address, account.password, self.client_tls()
        )

    def empty_mailbox(self, user: str) -> None:
        """Delete everything in user's INBOX, so that a test sees only the mail it caused."""
        client = self.imap(user)
        try:
            client.select_folder("INBOX")
            found = client.search(["ALL"])
            if found:
                client.delete_messages(found)
                client.expunge()
        finally:
            client.logout()

    def _address(self, who: str) -> str:
        return who if "@" in who else f"{who}@{DOMAIN}"
