"""Reads RFC 8823 response mails from the CA's own IMAP mailbox and hands each to the CA once."""
import logging
import ssl
import threading
from typing import Callable

import imapclient

from certbot_email.testing.config import MailSettings

logger = logging.getLogger(__name__)
_IMAP_TIMEOUT = 10.0


class MailboxReader:
    """Polls INBOX; every message is judged once, then deleted, so a replay must be re-sent."""

    def __init__(self, settings: MailSettings, handle: Callable[[bytes], bool]) -> None:
        self.settings = settings
        self.handle = handle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="testca-imap", daemon=True)

    def start(self) -> None:
        """Start polling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        """Poll until stopped; an outage is logged once when it starts and once when it ends
        (tracebacks only at debug level), however many polls fail in between."""
        down = False
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as error:  # noqa: BLE001 - keep polling through server restarts
                if not down:
                    logger.warning("Cannot read the CA mailbox %s (%s: %s); retrying every %g s "
                                   "without logging each failure", self.describe(),
                                   type(error).__name__, error, self.settings.poll_seconds)
                logger.debug("polling the CA mailbox failed", exc_info=True)
                down = True
            else:
                if down:
                    logger.warning("The CA mailbox %s can be read again", self.describe())
                down = False
            self._stop.wait(self.settings.poll_seconds)

    def describe(self) -> str:
        """``user on host:port`` of the CA's mailbox, for log lines."""
        return f"{self.settings.imap_user} on {self.settings.imap_host}:{self.settings.imap_port}"

    def _connect(self) -> imapclient.IMAPClient:
        """Log in to the CA mailbox (TLS without verification: a loopback test server)."""
        context = None
        if self.settings.imap_tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        client = imapclient.IMAPClient(self.settings.imap_host, self.settings.imap_port,
                                       ssl=self.settings.imap_tls, ssl_context=context,
                                       timeout=_IMAP_TIMEOUT)
        client.login(self.settings.imap_user or "", self.settings.imap_password or "")
        return client

    def poll_once(self) -> int:
        """Judge every message in INBOX and delete it; returns how many were read."""
        client = self._connect()
        try:
            client.select_folder("INBOX")
            uids = client.search(["NOT", "DELETED"])
            if not uids:
                return 0
            for _uid, data in client.fetch(uids, ["RFC822"]).items():
                raw = data.get(b"RFC822")
                if isinstance(raw, bytes):
                    self.handle(raw)
            client.delete_messages(uids)
            client.expunge()
            return len(uids)
        finally:
            try:
                client.logout()
            except Exception:  # noqa: BLE001 - logout failures do not matter
                logger.debug("IMAP logout failed", exc_info=True)
