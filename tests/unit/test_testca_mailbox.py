"""The test CA's mailbox reader: an IMAP outage is one log line, and so is the recovery."""
import logging
import threading

import pytest

from certbot_email.testing.config import MailSettings
from certbot_email.testing.mailbox import MailboxReader


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    outcomes = [ConnectionRefusedError(111, "Connection refused")] * 20 + [0] * 3 + \
        [TimeoutError("timed out")] * 5 + [0]
    finished = threading.Event()
    reader = MailboxReader(MailSettings(imap_user="ca@example.test", imap_port=10993,
                                        poll_seconds=0.001), handle=lambda raw: True)

    def poll_once() -> int:
        outcome = outcomes.pop(0) if outcomes else 0
        if not outcomes:
            finished.set()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    reader.poll_once = poll_once  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="certbot_email.testing.mailbox"):
        reader.start()
        assert finished.wait(10)
        reader.stop()
    assert [record.getMessage() for record in caplog.records] == [
        "Cannot read the CA mailbox ca@example.test on 127.0.0.1:10993 (ConnectionRefusedError: "
        "[Errno 111] Connection refused); retrying every 0.001 s without logging each failure",
        "The CA mailbox ca@example.test on 127.0.0.1:10993 can be read again",
        "Cannot read the CA mailbox ca@example.test on 127.0.0.1:10993 (TimeoutError: timed out); "
        "retrying every 0.001 s without logging each failure",
        "The CA mailbox ca@example.test on 127.0.0.1:10993 can be read again"]
    assert all(record.exc_info is None for record in caplog.records)
