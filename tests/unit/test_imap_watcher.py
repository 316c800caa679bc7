"""ImapWatcher over a fake IMAPClient: IDLE or polling, reconnects, size and age limits."""
import datetime
import logging
from typing import Any, Optional

import pytest
from imapclient import exceptions as imap_errors

from certbot_email.transport import MailboxSettings, MailProtocol, TlsMode, TransportError
from certbot_email.transport import imap as imap_module
from certbot_email.transport.imap import ANSWERED_KEYWORD, ImapWatcher

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.timezone.utc)
SETTINGS = MailboxSettings(MailProtocol.IMAP, "imap.example.com", 993, TlsMode.IMPLICIT, "alice",
                           "secret")


class FakeServer:
    """The mailbox behind every FakeClient: messages by UID, and what clients did."""

    def __init__(self, idle: bool = True) -> None:
        self.idle = idle
        self.messages: dict[int, tuple[datetime.datetime, bytes]] = {}
        self.flags: dict[int, set[bytes]] = {}
        self.log: list[str] = []
        self.drop_next_search = False
        self.drop_next_body_fetch = False
        self.refuse_login = False

    def add(self, raw: bytes, arrived: datetime.datetime = NOW) -> int:
        uid = len(self.messages) + 1
        self.messages[uid] = (arrived, raw)
        return uid


class FakeClient:
    """Just the IMAPClient calls ImapWatcher makes."""

    server: FakeServer

    def __init__(self, host: str, port: int, ssl: bool, ssl_context: Any,
                 timeout: float) -> None:
        self.server.log.append(f"connect ssl={ssl}")
        self.normalise_times = True

    def starttls(self, context: Any) -> None:
        self.server.log.append("starttls")

    def login(self, user: str, password: str) -> None:
        if self.server.refuse_login:
            raise imap_errors.LoginError("[AUTHENTICATIONFAILED] Authentication failed.")
        self.server.log.append(f"login {user}")

    def select_folder(self, folder: str) -> dict[bytes, Any]:
        self.server.log.append(f"select {folder}")
        return {b"UIDVALIDITY": 7, b"UIDNEXT": len(self.server.messages) + 1}

    def has_capability(self, name: str) -> bool:
        return name == "IDLE" and self.server.idle

    def search(self, criteria: list[Any]) -> list[int]:
        if self.server.drop_next_search:
            self.server.drop_next_search = False
            raise imap_errors.IMAPClientAbortError("socket error: EOF")
        assert criteria[2:] == ["UNKEYWORD", ANSWERED_KEYWORD]
        return [uid for uid in self.server.messages
                if ANSWERED_KEYWORD.encode() not in self.server.flags.get(uid, set())]

    def fetch(self, uids: list[int], items: list[str]) -> dict[int, dict[bytes, Any]]:
        if "BODY.PEEK[]" in items and self.server.drop_next_body_fetch:
            self.server.drop_next_body_fetch = False
            raise imap_errors.IMAPClientAbortError("socket error: EOF")
        found = {}
        for uid in uids:
            arrived, raw = self.server.messages[uid]
            found[uid] = {b"INTERNALDATE": arrived, b"RFC822.SIZE": len(raw), b"BODY[]": raw}
        return found

    def add_flags(self, uids: list[int], flags: list[bytes]) -> None:
        for uid in uids:
            self.server.flags.setdefault(uid, set()).update(flags)

    def idle(self) -> None:
        self.server.log.append("idle")

    def idle_check(self, timeout: Optional[float] = None) -> list[Any]:
        return []

    def idle_done(self) -> tuple[bytes, list[Any]]:
        self.server.log.append("done")
        return b"", []

    def logout(self) -> None:
        self.server.log.append("logout")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    client = type("BoundFakeClient", (FakeClient,), {"server": fake})
    monkeypatch.setattr(imap_module, "IMAPClient", client)
    return fake


def watcher(since: datetime.datetime = NOW, settings: MailboxSettings = SETTINGS) -> ImapWatcher:
    made = ImapWatcher(settings, since=since, max_bytes=1000, poll_seconds=0)
    made.connect()
    return made


def test_each_mail_is_handed_out_once(server: FakeServer) -> None:
    server.add(b"Subject: one\r\n\r\n")
    watch = watcher()
    assert [mail.raw for mail in watch.next_mails(0)] == [b"Subject: one\r\n\r\n"]
    server.add(b"Subject: two\r\n\r\n")
    assert [mail.raw for mail in watch.next_mails(0)] == [b"Subject: two\r\n\r\n"]
    assert watch.next_mails(0) == []


def test_waits_with_idle_when_the_server_has_it(server: FakeServer) -> None:
    watch = watcher()
    assert watch.uses_idle
    watch.next_mails(1)
    assert server.log[-2:] == ["idle", "done"]


def test_polls_when_the_server_lacks_idle(server: FakeServer) -> None:
    server.idle = False
    watch = watcher()
    assert not watch.uses_idle
    server.add(b"Subject: later\r\n\r\n")
    assert [mail.raw for mail in watch.next_mails(1)] == [b"Subject: later\r\n\r\n"]
    assert "idle" not in server.log


def test_mails_older_than_since_and_huge_mails_are_skipped(
        server: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    server.add(b"Subject: old\r\n\r\n", arrived=NOW - datetime.timedelta(minutes=5))
    server.add(b"Subject: huge\r\n\r\n" + b"x" * 2000)
    server.add(b"Subject: fine\r\n\r\n")
    with caplog.at_level(logging.INFO):
        assert [mail.raw for mail in watcher().next_mails(0)] == [b"Subject: fine\r\n\r\n"]
    assert f"Not answering {SETTINGS.describe()} UID 2 (2017 bytes)" in caplog.text
    assert "[TOO_LARGE]" in caplog.text


def test_answered_mails_are_flagged_and_never_handed_out_again(server: FakeServer) -> None:
    server.add(b"Subject: challenge\r\n\r\n")
    (mail,) = watcher().next_mails(0)
    watcher().mark_answered(mail)
    assert server.flags[mail.uid] == {b"\\Seen", ANSWERED_KEYWORD.encode()}
    assert watcher().next_mails(0) == []


def test_dropped_connection_reconnects_and_loses_nothing(server: FakeServer) -> None:
    watch = watcher()
    server.drop_next_search = True
    server.add(b"Subject: during the outage\r\n\r\n")
    assert watch.next_mails(0) == []
    assert [mail.raw for mail in watch.next_mails(0)] == [b"Subject: during the outage\r\n\r\n"]
    assert watch.reconnects == 1
    assert server.log.count("login alice") == 2


def test_starttls_comes_before_login(server: FakeServer) -> None:
    watcher(settings=MailboxSettings(MailProtocol.IMAP, "h", 143, TlsMode.STARTTLS, "alice",
                                     "secret"))
    assert server.log[:3] == ["connect ssl=False", "starttls", "login alice"]


def test_refused_login_names_the_user_not_the_password(server: FakeServer) -> None:
    server.refuse_login = True
    with pytest.raises(TransportError, match="login as 'alice'") as caught:
        watcher()
    assert "secret" not in str(caught.value)


def test_a_mail_in_the_same_second_as_since_is_handed_out(server: FakeServer) -> None:
    # INTERNALDATE has whole seconds: 12:00:00 may be 12:00:00.9, after since.
    server.add(b"Subject: same second\r\n\r\n", arrived=NOW)
    watch = watcher(since=NOW + datetime.timedelta(milliseconds=500))
    assert [mail.raw for mail in watch.next_mails(0)] == [b"Subject: same second\r\n\r\n"]


def test_a_mail_that_arrives_after_login_is_handed_out_whatever_its_date(
        server: FakeServer) -> None:
    server.add(b"Subject: before login\r\n\r\n", arrived=NOW - datetime.timedelta(minutes=5))
    watch = watcher()
    # The server's clock lags ours: its INTERNALDATE is before since, yet it came after login.
    uid = server.add(b"Subject: after login\r\n\r\n", arrived=NOW - datetime.timedelta(minutes=5))
    (mail,) = watch.next_mails(0)
    assert (mail.uid, mail.raw) == (uid, b"Subject: after login\r\n\r\n")
    assert mail.label == f"{SETTINGS.describe()} UID {uid}" and mail.arrived is not None


def test_a_fetch_that_breaks_half_way_loses_no_mail(server: FakeServer) -> None:
    watch = watcher()
    server.add(b"Subject: fetched when the line broke\r\n\r\n")
    server.drop_next_body_fetch = True
    assert watch.next_mails(0) == []
    assert [mail.raw for mail in watch.next_mails(0)] == \
        [b"Subject: fetched when the line broke\r\n\r\n"]
