"""Pop3Watcher over a fake poplib: a session per poll, UIDL once, Date and size limits."""
import datetime
import poplib
from typing import Any

import pytest

from certbot_email.transport import MailboxSettings, MailProtocol, TlsMode, TransportError
from certbot_email.transport import pop3 as pop3_module
from certbot_email.transport.pop3 import Pop3Watcher

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.timezone.utc)
SETTINGS = MailboxSettings(MailProtocol.POP3, "pop.example.com", 995, TlsMode.IMPLICIT, "carol",
                           "secret")


#: What poplib returns for multi-line commands.
Response = tuple[bytes, list[bytes], int]


def message(subject: str, date: str = "Sat, 28 Nov 2026 12:00:05 +0000") -> list[bytes]:
    return [f"Date: {date}".encode(), f"Subject: {subject}".encode(), b"", b"body"]


class FakeMaildrop:
    """What the server holds: (UIDL, lines) in order; and how often a session was opened."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[bytes]]] = []
        self.sessions = 0
        self.refuse_login = False
        #: RETR of these UIDLs fails: "-ERR" (refused) or a dropped connection.
        self.refuse_retr: set[str] = set()
        self.drop_on_retr: set[str] = set()


class FakePop3:
    """Just the poplib.POP3 calls Pop3Watcher makes, as a snapshot at login."""

    drop: FakeMaildrop

    def __init__(self, host: str, port: int, timeout: float, context: Any) -> None:
        self.drop.sessions += 1
        self.snapshot = list(self.drop.messages)

    def user(self, name: str) -> bytes:
        return b"+OK"

    def pass_(self, password: str) -> bytes:
        if self.drop.refuse_login:
            raise poplib.error_proto(b"-ERR [AUTH] Authentication failed.")
        return b"+OK"

    def list(self) -> Response:
        return b"+OK", [f"{n} {len(b''.join(lines))}".encode()
                        for n, (_uid, lines) in enumerate(self.snapshot, 1)], 0

    def uidl(self) -> Response:
        return b"+OK", [f"{n} {uid}".encode()
                        for n, (uid, _lines) in enumerate(self.snapshot, 1)], 0

    def top(self, number: int, lines: int) -> Response:
        body = self.snapshot[number - 1][1]
        return b"+OK", body[:body.index(b"")], 0

    def retr(self, number: int) -> Response:
        uid, lines = self.snapshot[number - 1]
        if uid in self.drop.refuse_retr:
            raise poplib.error_proto(b"-ERR message is gone")
        if uid in self.drop.drop_on_retr:
            self.drop.drop_on_retr.discard(uid)
            raise ConnectionResetError("connection reset by peer")
        return b"+OK", lines, 0

    def quit(self) -> bytes:
        return b"+OK"


@pytest.fixture
def drop(monkeypatch: pytest.MonkeyPatch) -> FakeMaildrop:
    fake = FakeMaildrop()
    monkeypatch.setattr(pop3_module.poplib, "POP3_SSL",
                        type("BoundFakePop3", (FakePop3,), {"drop": fake}))
    return fake


def watcher() -> Pop3Watcher:
    made = Pop3Watcher(SETTINGS, since=NOW, max_bytes=200, poll_seconds=0)
    made.connect()
    return made


def test_each_mail_once_each_poll_a_fresh_session(drop: FakeMaildrop) -> None:
    drop.messages.append(("u1", message("one")))
    watch = watcher()
    assert [mail.uid for mail in watch.next_mails(0)] == ["u1"]
    drop.messages.append(("u2", message("two")))
    (second,) = watch.next_mails(0)
    assert (second.uid, second.raw) == ("u2", b"\r\n".join(message("two")) + b"\r\n")
    assert watch.next_mails(0) == []
    assert drop.sessions == 4


def test_old_and_huge_mails_are_skipped(drop: FakeMaildrop) -> None:
    drop.messages.append(("old", message("old", "Sat, 28 Nov 2026 11:00:00 +0000")))
    drop.messages.append(("huge", message("huge" + "x" * 300)))
    drop.messages.append(("fine", message("fine")))
    assert [mail.uid for mail in watcher().next_mails(0)] == ["fine"]


def test_refused_login_names_the_user_not_the_password(drop: FakeMaildrop) -> None:
    drop.refuse_login = True
    with pytest.raises(TransportError, match="POP3 login as 'carol'") as caught:
        watcher()
    assert "secret" not in str(caught.value)


def test_a_mail_listed_after_login_is_handed_out_whatever_its_date(drop: FakeMaildrop) -> None:
    drop.messages.append(("there", message("there", "Sat, 28 Nov 2026 11:00:00 +0000")))
    watch = watcher()
    # Written by a sender whose clock is behind: its Date is before since, but it came later.
    drop.messages.append(("later", message("later", "Sat, 28 Nov 2026 11:00:00 +0000")))
    (mail,) = watch.next_mails(0)
    assert mail.uid == "later" and mail.label.endswith("message 2 (UIDL later)")


def test_a_session_that_breaks_half_way_loses_no_mail(drop: FakeMaildrop) -> None:
    watch = watcher()
    drop.messages += [("u1", message("one")), ("u2", message("two"))]
    drop.drop_on_retr.add("u2")
    assert watch.next_mails(0) == []
    assert [mail.uid for mail in watch.next_mails(0)] == ["u1", "u2"]


def test_a_message_that_cannot_be_read_is_skipped_and_the_next_poll_goes_on(
        drop: FakeMaildrop, caplog: pytest.LogCaptureFixture) -> None:
    watch = watcher()
    drop.messages += [("bad", message("bad")), ("good", message("good"))]
    drop.refuse_retr.add("bad")
    assert watch.next_mails(0) == []  # the session, perhaps out of step, ends at the bad one
    assert [mail.uid for mail in watch.next_mails(0)] == ["good"]
    assert "message 1 (UIDL bad) cannot be read, so it is not judged" in caplog.text
