"""Transport layer: talking to mail and DNS servers. No certbot imports here."""
import dataclasses
import datetime
import enum
import logging
import socket
import ssl
import threading
from typing import Optional, Union


class TransportError(Exception):
    """A server could not be reached or refused us; the message never holds a secret."""


class TlsMode(enum.Enum):
    """How a connection gets TLS; there is deliberately no plaintext mode (passwords travel)."""

    #: TLS from the first byte (IMAPS 993, submissions 465; RFC 8314's preference).
    IMPLICIT = "implicit"
    #: Plaintext greeting, then STARTTLS before anything else (IMAP 143, submission 587).
    STARTTLS = "starttls"


def tls_context(ca_file: Optional[str] = None) -> ssl.SSLContext:
    """A verifying TLS context: the system CAs, or only ``ca_file`` for a private CA."""
    return ssl.create_default_context(cafile=ca_file)


def offers_implicit_tls(host: str, port: int, timeout: float) -> bool:
    """True if the port completes a TLS handshake straight away, as implicit-TLS ports do.

    Only a probe for naming a TLS mode mistake: the certificate is not checked, and nothing
    is sent over the connection.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


def first_bytes(host: str, port: int, timeout: float) -> bytes:
    """What the port sends of its own accord right after connecting (a plaintext greeting such
    as SMTP's ``220``), or ``b""`` when it sends nothing in time."""
    try:
        with socket.create_connection((host, port), timeout) as sock:
            return sock.recv(16)
    except OSError:
        return b""


class MailProtocol(enum.Enum):
    """How the challenge mail is fetched."""

    IMAP = "imap"
    POP3 = "pop3"


@dataclasses.dataclass(frozen=True)
class MailboxSettings:
    """Where a mailbox is and how to log in; the password never shows in a repr."""

    protocol: MailProtocol
    host: str
    port: int
    tls: TlsMode
    user: str
    password: str = dataclasses.field(repr=False)
    #: IMAP only: POP3 has just the one maildrop.
    folder: str = "INBOX"
    ca_file: Optional[str] = None
    timeout: float = 30.0

    def describe(self) -> str:
        """``user on host:port/folder`` for messages, without the password; users hold an ``@``."""
        where = f"{self.user} on {self.host}:{self.port}"
        return f"{where}/{self.folder}" if self.protocol is MailProtocol.IMAP else where


@dataclasses.dataclass(frozen=True)
class IncomingMail:
    """One mail as stored, with its IMAP UID or POP3 UIDL for ``mark_answered``."""

    uid: Union[int, str]
    raw: bytes
    #: How a person finds the mail: the mailbox and its UID or POP3 message number.
    label: str = ""
    #: IMAP INTERNALDATE, or when a POP3 poll first listed it.
    arrived: Optional[datetime.datetime] = None


class Interruptible:
    """Sleeps that ``interrupt()`` cuts short, so that stopping a mailbox watcher is prompt."""

    def __init__(self) -> None:
        self._interrupted = threading.Event()

    def interrupt(self) -> None:
        """End the current and every later wait early (the watcher is being stopped)."""
        self._interrupted.set()

    def _sleep(self, seconds: float) -> None:
        """Sleep, unless interrupted."""
        self._interrupted.wait(seconds)


#: Loggers of the libraries' protocol traces: every IMAP line (mail bodies too), dkimpy's steps.
TRACE_LOGGERS = {"imapclient": logging.WARNING, "dkimpy": logging.CRITICAL + 1}


def show_protocol_traces(shown: bool) -> None:
    """Let the libraries' traces through (certbot -vvv), or keep them out of console and log.

    Off, imapclient keeps its warnings and dkimpy says nothing: each of its findings comes back
    as the rule that refused the mail.
    """
    for name, quiet_level in TRACE_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.DEBUG if shown else quiet_level)
