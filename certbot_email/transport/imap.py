"""Watching one IMAP folder for new mail: IDLE when offered, polling otherwise, reconnecting."""
import datetime
import imaplib
import logging
import ssl
from typing import Optional

from imapclient import IMAPClient
from imapclient import exceptions as imap_errors

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

#: Longest single IDLE or poll wait, so that a stop request is noticed soon.
MAX_WAIT_SLICE = 5.0
#: Reconnection back-off after a dropped connection: doubling from 1 s up to this.
MAX_BACKOFF = 30.0

#: IMAP keyword set on a mail once answered, so that no later run answers it again.
ANSWERED_KEYWORD = "$ACMEAnswered"

#: Errors that mean the connection is gone, as opposed to the server refusing a command.
_CONNECTION_ERRORS = (imap_errors.IMAPClientAbortError, imaplib.IMAP4.abort, OSError, EOFError)


class ImapWatcher(Interruptible):
    """Hands out each mail that arrives in a folder after ``since`` exactly once."""

    def __init__(self, settings: MailboxSettings, since: datetime.datetime, max_bytes: int,
                 poll_seconds: float = 10.0) -> None:
        self.settings = settings
        self.since = since
        self.max_bytes = max_bytes
        self.poll_seconds = poll_seconds
        super().__init__()
        self._client: Optional[IMAPClient] = None
        self._uidvalidity: Optional[int] = None
        #: UIDs from this one on arrived after our first look: they are judged whatever
        #: their INTERNALDATE says (the server's clock may lag ours).
        self._first_new_uid: Optional[int] = None
        self._delivered: set[int] = set()
        self._backoff = 1.0
        self.reconnects = 0
        self.uses_idle = False

    def connect(self) -> None:
        """Log in and open the folder; ``TransportError`` says which step failed."""
        settings = self.settings
        try:
            client = IMAPClient(settings.host, port=settings.port,
                                ssl=settings.tls is TlsMode.IMPLICIT,
                                ssl_context=tls_context(settings.ca_file),
                                timeout=settings.timeout)
        except (OSError, ssl.SSLError, imap_errors.IMAPClientError) as error:
            raise TransportError(f"cannot connect to IMAP server {settings.host}:"
                                 f"{settings.port}: {error}") from None
        try:
            if settings.tls is TlsMode.STARTTLS:
                client.starttls(tls_context(settings.ca_file))
            client.login(settings.user, settings.password)
            client.normalise_times = False
            selected = client.select_folder(settings.folder)
            self.uses_idle = client.has_capability("IDLE")
        except imap_errors.LoginError:
            _quietly_close(client)
            raise TransportError(f"IMAP login as {settings.user!r} at {settings.host} was "
                                 f"refused; check the user and password") from None
        except (imap_errors.IMAPClientError, OSError, ssl.SSLError) as error:
            _quietly_close(client)
            raise TransportError(f"IMAP {settings.describe()}: {error}") from None
        uidvalidity = selected.get(b"UIDVALIDITY")
        if uidvalidity != self._uidvalidity:
            self._delivered.clear()
            self._uidvalidity = uidvalidity
            uidnext = selected.get(b"UIDNEXT")
            self._first_new_uid = uidnext if isinstance(uidnext, int) else None
        self._client = client
        self._backoff = 1.0

    def next_mails(self, wait_seconds: float) -> list[IncomingMail]:
        """New mails since the last call; waits up to ``wait_seconds`` when there are none."""
        try:
            if self._client is None:
                self.connect()
                self.reconnects += 1
            mails = self._fetch_new()
            if not mails and wait_seconds > 0:
                self._wait(min(wait_seconds, MAX_WAIT_SLICE))
                mails = self._fetch_new()
            return mails
        except _CONNECTION_ERRORS + (TransportError,) as error:
            logger.warning("IMAP connection to %s lost (%s); reconnecting in %.0f s",
                           self.settings.describe(), error, self._backoff)
            self.close()
            self._sleep(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            return []

    def mark_answered(self, mail: IncomingMail) -> None:
        """Flag the mail seen and answered; a failure only costs a later run a rejection."""
        try:
            if self._client is not None:
                self._client.add_flags([mail.uid], [b"\\Seen", ANSWERED_KEYWORD.encode()])
        except (imap_errors.IMAPClientError, *_CONNECTION_ERRORS) as error:
            logger.info("Could not flag message %s in %s as answered: %s", mail.uid,
                        self.settings.describe(), error)

    def close(self) -> None:
        """Log out if connected; never raises."""
        if self._client is not None:
            _quietly_close(self._client)
            self._client = None

    def _wait(self, seconds: float) -> None:
        """IDLE until the server reports a change, or sleep when it cannot IDLE."""
        assert self._client is not None
        if not self.uses_idle:
            self._sleep(min(seconds, self.poll_seconds))
            return
        self._client.idle()
        try:
            self._client.idle_check(timeout=seconds)
        finally:
            self._client.idle_done()

    def _fetch_new(self) -> list[IncomingMail]:
        """Download the mails that arrived after ``since`` and were not handed out or answered.

        A mail counts as handed out only once its bytes are here: a connection lost half-way
        leaves it for the next call. INTERNALDATE has whole seconds, so ``since`` is too.
        """
        assert self._client is not None
        since = self.since.replace(microsecond=0)
        criteria = ["SINCE", (since - datetime.timedelta(days=1)).date(),
                    "UNKEYWORD", ANSWERED_KEYWORD]
        uids = [uid for uid in self._client.search(criteria) if uid not in self._delivered]
        if not uids:
            return []
        wanted, passed_over, arrivals = [], [], {}
        for uid, data in sorted(self._client.fetch(uids, ["RFC822.SIZE", "INTERNALDATE"]).items()):
            arrived = data.get(b"INTERNALDATE")
            arrivals[uid] = arrived if isinstance(arrived, datetime.datetime) else None
            new = self._first_new_uid is not None and uid >= self._first_new_uid
            if not new and arrived is not None and arrived.tzinfo is not None and arrived < since:
                passed_over.append(uid)
                continue
            size = data.get(b"RFC822.SIZE", 0)
            if size > self.max_bytes:
                passed_over_as_too_large(f"{self.settings.describe()} UID {uid}", size)
                passed_over.append(uid)
                continue
            wanted.append(uid)
        fetched = self._client.fetch(wanted, ["BODY.PEEK[]"]) if wanted else {}
        self._delivered.update(passed_over + list(fetched))
        return [IncomingMail(uid, fetched[uid][b"BODY[]"],
                             label=f"{self.settings.describe()} UID {uid}",
                             arrived=arrivals.get(uid))
                for uid in sorted(fetched)]


def _quietly_close(client: IMAPClient) -> None:
    """Logout, falling back to dropping the socket; a dead connection must not raise here."""
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the connection may already be gone in any way
        try:
            client.shutdown()
        except Exception:  # noqa: BLE001
            pass
