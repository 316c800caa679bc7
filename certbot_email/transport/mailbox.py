"""One interface over IMAP and POP3 mailbox watchers, and the choice between them."""
import datetime
import logging
from typing import Protocol

from certbot_email.protocol.challenge_mail import Rule
from certbot_email.transport import IncomingMail, MailboxSettings, MailProtocol

logger = logging.getLogger(__name__)


class Watcher(Protocol):
    """What the responder needs from a mailbox: each new mail once, and a way to stop."""

    settings: MailboxSettings
    uses_idle: bool

    def connect(self) -> None:
        """Log in now, so that bad credentials fail the run at once."""

    def next_mails(self, wait_seconds: float) -> list[IncomingMail]:
        """New mails, waiting up to ``wait_seconds`` when there are none."""

    def mark_answered(self, mail: IncomingMail) -> None:
        """Remember on the server, where it can, that ``mail`` was answered."""

    def interrupt(self) -> None:
        """Cut the current wait short."""

    def close(self) -> None:
        """Log out; never raises."""


def open_watcher(settings: MailboxSettings, since: datetime.datetime, max_bytes: int,
                 poll_seconds: float) -> Watcher:
    """An IMAP or POP3 watcher, as ``settings.protocol`` says; imports only the one needed."""
    if settings.protocol is MailProtocol.POP3:
        from certbot_email.transport.pop3 import Pop3Watcher
        return Pop3Watcher(settings, since, max_bytes, poll_seconds)
    from certbot_email.transport.imap import ImapWatcher
    return ImapWatcher(settings, since, max_bytes, poll_seconds)


def check_login(settings: MailboxSettings) -> None:
    """Log in and open the folder (IMAP) or list the maildrop (POP3), fetching no mail: finds a
    wrong port, TLS mode or password before a CA is asked for anything; ``TransportError``
    says which."""
    watcher = open_watcher(settings, datetime.datetime.now(datetime.timezone.utc), max_bytes=0,
                           poll_seconds=0)
    try:
        watcher.connect()
    finally:
        watcher.close()


def passed_over_as_too_large(label: str, size: int) -> None:
    """Say that a mail too large to be a challenge is left in the mailbox, never downloaded."""
    logger.info("Not answering %s (%d bytes): %s [%s]", label, size, Rule.TOO_LARGE.value,
                Rule.TOO_LARGE.name)
