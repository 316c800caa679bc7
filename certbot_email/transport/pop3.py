"""Watching a POP3 maildrop for new mail: one short session per poll (POP3 has no IDLE).

A POP3 session sees the maildrop as it was at login, so every poll logs in afresh. Mails are
told apart by UIDL. POP3 keeps no arrival time and no flags: for the mails already there at the
first login the Date header stands in for the arrival time, every mail listed later arrived
while we watched and is judged whatever its Date says; nothing is marked on the server (mails
are never deleted).
"""
import datetime
import email.parser
import email.policy
import email.utils
import logging
import poplib
import ssl
from typing import Optional

from certbot_email.transport import (
    IncomingMail,
    Interruptible,
    MailboxSettings,
    TlsMode,
    TransportError,
    tls_context,
)
from certbot_email.transport.mailbox import passed_over_as_too_large

logger = logging.getLogger(__name__)

#: Longest single wait between polls, so that a stop request is noticed soon.
MAX_WAIT_SLICE = 5.0


class Pop3Watcher(Interruptible):
    """Hands out each mail in a maildrop dated after ``since`` exactly once."""

    uses_idle = False

    def __init__(self, settings: MailboxSettings, since: datetime.datetime, max_bytes: int,
                 poll_seconds: float = 10.0) -> None:
        super().__init__()
        self.settings = settings
        self.since = since
        self.max_bytes = max_bytes
        self.poll_seconds = poll_seconds
        self._delivered: set[str] = set()
        #: UIDLs listed at the first login; None until then (every mail is then dated).
        self._present_at_start: Optional[set[str]] = None

    def connect(self) -> None:
        """Log in to check the account and note what is there already; ``TransportError``
        says which step failed."""
        session = self._session()
        try:
            self._present_at_start = {uid for _number, uid in _pairs(session.uidl()[1])}
        except (OSError, poplib.error_proto) as error:
            raise TransportError(f"POP3 {self.settings.describe()}: UIDL failed: {error}") \
                from None
        finally:
            _quietly_quit(session)

    def next_mails(self, wait_seconds: float) -> list[IncomingMail]:
        """New mails since the last call; polls for up to ``wait_seconds`` when there are none."""
        mails = self._poll()
        if not mails and wait_seconds > 0:
            self._sleep(min(wait_seconds, self.poll_seconds, MAX_WAIT_SLICE))
            mails = self._poll()
        return mails

    def mark_answered(self, mail: IncomingMail) -> None:
        """POP3 has no flags; the mail stays, and later runs rely on ``since`` and the judge."""

    def close(self) -> None:
        """Sessions are closed after each poll; nothing stays open."""

    def _session(self) -> poplib.POP3:
        """A logged-in session (TLS verified)."""
        settings = self.settings
        context = tls_context(settings.ca_file)
        try:
            if settings.tls is TlsMode.IMPLICIT:
                session: poplib.POP3 = poplib.POP3_SSL(settings.host, settings.port,
                                                       timeout=settings.timeout, context=context)
            else:
                session = poplib.POP3(settings.host, settings.port, timeout=settings.timeout)
                session.stls(context)
        except (OSError, ssl.SSLError, poplib.error_proto) as error:
            raise TransportError(f"cannot connect to POP3 server {settings.host}:"
                                 f"{settings.port}: {error}") from None
        try:
            session.user(settings.user)
            session.pass_(settings.password)
        except poplib.error_proto:
            _quietly_quit(session)
            raise TransportError(f"POP3 login as {settings.user!r} at {settings.host} was "
                                 f"refused; check the user and password") from None
        return session

    def _poll(self) -> list[IncomingMail]:
        """One session: fetch what is new, log out; a dropped connection is logged, not raised."""
        try:
            session = self._session()
        except TransportError as error:
            logger.warning("POP3 %s: %s; trying again", self.settings.describe(), error)
            return []
        try:
            return self._fetch_new(session)
        except (OSError, poplib.error_proto) as error:
            logger.warning("POP3 session with %s broke (%s); trying again",
                           self.settings.describe(), error)
            return []
        finally:
            _quietly_quit(session)

    def _fetch_new(self, session: poplib.POP3) -> list[IncomingMail]:
        """Download the mails not handed out yet, small enough, dated after ``since`` if they
        were there at the first login. A mail counts as handed out only once all of this
        poll's mails are here: a session that breaks half-way loses none of them."""
        since = self.since.replace(microsecond=0)  # Date has whole seconds
        sizes = dict(_pairs(session.list()[1]))
        fetched, handled = [], []
        for number, uid in _pairs(session.uidl()[1]):
            if uid in self._delivered:
                continue
            size = int(sizes.get(number, "0"))
            if size > self.max_bytes:
                passed_over_as_too_large(self._label(number, uid), size)
                handled.append(uid)
                continue
            try:
                if self._present_at_start is None or uid in self._present_at_start:
                    dated = _date(b"\r\n".join(session.top(int(number), 0)[1]))
                    if dated is not None and dated < since:
                        handled.append(uid)
                        continue
                raw = b"\r\n".join(session.retr(int(number))[1]) + b"\r\n"
            except poplib.error_proto as error:
                # The server refused it, or poplib could not read it (a line over 2048 bytes):
                # it is not judged, and the session, perhaps out of step now, ends here; the
                # next poll goes on with the mails after it.
                logger.warning("POP3 %s cannot be read, so it is not judged: %s",
                               self._label(number, uid), error)
                handled.append(uid)
                break
            fetched.append(IncomingMail(uid, raw, label=self._label(number, uid),
                                        arrived=datetime.datetime.now(datetime.timezone.utc)))
            handled.append(uid)
        self._delivered.update(handled)
        return fetched


    def _label(self, number: str, uid: str) -> str:
        """How the log names a message: the maildrop, its number in this session, its UIDL."""
        return f"{self.settings.describe()} message {number} (UIDL {uid})"


def _pairs(lines: list[bytes]) -> list[tuple[str, str]]:
    """``"1 value"`` lines of LIST/UIDL as (message number, value) pairs."""
    found = []
    for line in lines:
        number, _, value = line.decode("ascii", "replace").partition(" ")
        found.append((number, value.strip()))
    return found


def _date(headers: bytes) -> Optional[datetime.datetime]:
    """The Date header as an aware datetime, or None when absent or unreadable."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(headers)
    try:
        dated = email.utils.parsedate_to_datetime(parsed.get("Date", ""))
    except (TypeError, ValueError):
        return None
    return dated if dated.tzinfo is not None else None


def _quietly_quit(session: poplib.POP3) -> None:
    """QUIT, or just drop the socket; a dead session must not raise here."""
    try:
        session.quit()
    except (OSError, poplib.error_proto):
        session.close()
