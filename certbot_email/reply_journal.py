"""Which challenge mails were answered or judged, remembered across runs.

RFC 8823 forbids answering twice, and a mail a run judged must not be judged afresh by the next
one (a stale challenge would then make the new one ambiguous). IMAP mailboxes also get a keyword
on an answered mail, but POP3 has no flags, and a mailbox shared by several hosts or folders may
be watched again; this file in certbot's work directory is the memory that works for all of
them. It holds token-part1 values and Message-IDs (``reply_registry`` says which), never
anything secret.
"""
import datetime
import json
import logging
import os
import tempfile
import threading
from typing import Iterable

logger = logging.getLogger(__name__)

JOURNAL_NAME = "email-reply-answered.json"
#: Entries older than this are dropped: CAs expire challenges long before (CA/B: 24 hours).
KEEP = datetime.timedelta(days=30)
#: Most entries kept: a flood of mails must not grow the file without end (newest kept).
MAX_ENTRIES = 10_000


class AnsweredJournal:
    """A small JSON file of mail keys with the time they were recorded."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> set[str]:
        """The keys answered within ``KEEP``; an unreadable file is reported and read as empty."""
        with self._lock:
            return set(self._read())

    def record(self, keys: Iterable[str]) -> None:
        """Add ``keys`` now, atomically (a crash leaves the old file or the new one)."""
        with self._lock:
            entries = self._read()
            now = datetime.datetime.now(datetime.timezone.utc).isoformat()
            entries.update({key: now for key in keys})
            if len(entries) > MAX_ENTRIES:
                entries = dict(sorted(entries.items(), key=lambda item: item[1])[-MAX_ENTRIES:])
            directory = os.path.dirname(self.path) or "."
            os.makedirs(directory, mode=0o700, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=directory, prefix=".email-reply-")
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(entries, file, indent=1, sort_keys=True)
            os.replace(temporary, self.path)

    def _read(self) -> dict[str, str]:
        """Entries still within ``KEEP``; the caller holds the lock."""
        try:
            with open(self.path, encoding="utf-8") as file:
                entries = json.load(file)
            if not isinstance(entries, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning("Ignoring the unreadable email-reply journal %s (%s); challenge "
                           "mails answered in earlier runs may be answered again", self.path,
                           error)
            return {}
        oldest = datetime.datetime.now(datetime.timezone.utc) - KEEP
        return {key: when for key, when in entries.items()
                if isinstance(when, str) and _parse_time(when) >= oldest}


def _parse_time(text: str) -> datetime.datetime:
    """An ISO time from the journal; a broken one counts as long ago."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)
