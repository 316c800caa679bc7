"""The email-reply plugin: options, credentials file, and perform/cleanup over faked mail I/O."""
import datetime
import email
import email.policy
import logging
import os
import threading
from typing import Any

import josepy as jose
import pytest
from acme import messages
from certbot import achallenges, errors
from certbot.display import util as display_util
from certbot.tests import util as certbot_test_util
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email import certbot_compat, reply_mailflow
from certbot_email.protocol import identifiers
from certbot_email.protocol.challenges import EmailReply00
from certbot_email.reply_credentials import MailboxCredentials
from certbot_email.reply_plugin import Authenticator
from certbot_email.transport import (
    IncomingMail,
    MailboxSettings,
    MailProtocol,
    TlsMode,
    TransportError,
)
from certbot_email.transport import responder as responder_module
from certbot_email.transport.smtp import SmtpSettings
from tests.unit.certbot_versions import annotated_challenge
from tests.unit.challenge_mails import ALICE, CA, TOKEN1, Keys, headers, mail, sign

BOB = "bob@example.com"
TOKEN2 = "DGyRejmCefe7v4NfDGDKfA"
PASSWORD = "pa#ss;w%rd,1"
CREDENTIALS = f"""
imap_host = imap.example.com
imap_user = alice
imap_password = {PASSWORD}

[{BOB}]
imap_host = imap.example.com
imap_port = 143
imap_tls = starttls
imap_user = bob
imap_password = bob-secret
smtp_host = smtp.example.com
smtp_tls = starttls
"""


def option_defaults() -> dict[str, Any]:
    """Each option's dest and default, as certbot's argparse would set them."""
    found: dict[str, Any] = {}

    def add(name: str, **kwargs: Any) -> None:
        found["email_reply_" + name.replace("-", "_")] = kwargs.get("default")
    Authenticator.add_parser_arguments(add)
    return found


class PluginCase(certbot_test_util.ConfigTestCase):
    """A plugin with every option at its default and a credentials file in the temp dir."""

    def setUp(self) -> None:
        super().setUp()
        for dest, default in option_defaults().items():
            setattr(self.config, dest, default)
        self.credentials = os.path.join(self.tempdir, "email-reply.ini")
        write_private(self.credentials, CREDENTIALS)
        self.config.email_reply_credentials = self.credentials
        self.plugin = Authenticator(self.config, "email-reply")

    def tearDown(self) -> None:
        certbot_compat.csr_profile.mailbox_key_usage = None
        super().tearDown()


def write_private(path: str, text: str, mode: int = 0o600) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(path, mode)


# ---- options -----------------------------------------------------------------------------

def test_options_have_types_and_no_secrets() -> None:
    options: dict[str, dict[str, Any]] = {}
    Authenticator.add_parser_arguments(lambda name, **kwargs: options.setdefault(name, kwargs))
    assert not [name for name in options if "password" in name or "secret" in name]
    for name, kwargs in options.items():
        assert "type" in kwargs or kwargs.get("action") == "store_true", name
    assert options["token-joining"]["choices"] == ("string", "bytes")
    assert options["key-usage"]["default"] == "both"


class TestPrepare(PluginCase):
    """prepare(): compat check, CSR key usage, option sanity."""

    def test_key_usage_reaches_the_csr_profile(self) -> None:
        self.config.email_reply_key_usage = "sign"
        self.plugin.prepare()
        usage = certbot_compat.csr_profile.mailbox_key_usage(rsa.generate_private_key(65537, 2048))
        assert usage.digital_signature and not usage.key_encipherment

    def test_negative_timeout_is_refused(self) -> None:
        self.config.email_reply_timeout_seconds = -1
        with pytest.raises(errors.MisconfigurationError, match="timeout-seconds is -1"):
            self.plugin.prepare()

    def test_missing_smime_ca_file_is_refused(self) -> None:
        self.config.email_reply_smime_ca_file = "/nonexistent/ca.pem"
        with pytest.raises(errors.MisconfigurationError, match="/nonexistent/ca.pem"):
            self.plugin.prepare()

    def test_bad_dns_server_is_refused(self) -> None:
        self.config.email_reply_dkim_dns_server = "ns1.example.com"
        with pytest.raises(errors.MisconfigurationError, match="ns1.example.com"):
            self.plugin.prepare()

    def test_subset_of_names_is_refused(self) -> None:
        self.config.allow_subset_of_names = True
        with pytest.raises(errors.MisconfigurationError, match="allow-subset-of-names"):
            self.plugin.prepare()

    def test_only_mailboxes_get_email_reply(self) -> None:
        assert list(self.plugin.get_chall_pref(ALICE)) == [EmailReply00]
        assert list(self.plugin.get_chall_pref("example.com")) == []


# ---- credentials file --------------------------------------------------------------------

def credentials(tmp_path: Any, text: str, mode: int = 0o600) -> MailboxCredentials:
    path = str(tmp_path / "creds.ini")
    write_private(path, text, mode)
    return MailboxCredentials(path)


def test_top_level_keys_are_the_default_mailbox(tmp_path: Any) -> None:
    imap, smtp = credentials(tmp_path, CREDENTIALS).for_address(ALICE)
    assert (imap.host, imap.port, imap.tls, imap.user, imap.folder) == \
        ("imap.example.com", 993, TlsMode.IMPLICIT, "alice", "INBOX")
    assert imap.password == PASSWORD
    assert (smtp.host, smtp.port, smtp.tls, smtp.user, smtp.password) == \
        ("imap.example.com", 465, TlsMode.IMPLICIT, "alice", PASSWORD)
    assert smtp.local_hostname == "example.com"


def test_an_address_section_overrides_the_defaults(tmp_path: Any) -> None:
    imap, smtp = credentials(tmp_path, CREDENTIALS).for_address("bob@EXAMPLE.com")
    assert (imap.port, imap.tls, imap.user, imap.password) == \
        (143, TlsMode.STARTTLS, "bob", "bob-secret")
    assert (smtp.host, smtp.port, smtp.tls, smtp.user) == \
        ("smtp.example.com", 587, TlsMode.STARTTLS, "bob")


def test_pop3_mailbox_uses_the_pop3_keys(tmp_path: Any) -> None:
    text = ("mailbox_protocol = pop3\npop3_host = pop.example.com\npop3_tls = starttls\n"
            "pop3_user = carol\npop3_password = p\n")
    mailbox, smtp = credentials(tmp_path, text).for_address(ALICE)
    assert (mailbox.protocol, mailbox.host, mailbox.port, mailbox.user) == \
        (MailProtocol.POP3, "pop.example.com", 110, "carol")
    assert (smtp.host, smtp.port, smtp.user) == ("pop.example.com", 465, "carol")


def test_missing_key_names_key_and_address(tmp_path: Any) -> None:
    creds = credentials(tmp_path, "imap_host = h\nimap_user = u\n")
    with pytest.raises(errors.PluginError, match=f"imap_password for {ALICE}"):
        creds.for_address(ALICE)


@pytest.mark.parametrize(("line", "complaint"), [
    ("imap_pasword = x", "unknown keys imap_pasword"),
    ("imap_tls = ssl", "imap_tls = 'ssl'"),
    ("mailbox_protocol = jmap", "mailbox_protocol = 'jmap'.*imap, pop3"),
    ("smtp_port = 99999", "smtp_port = '99999'"),
    ("ca_file = /nonexistent/ca.pem", "is not a file"),
    ("[alice@example]\nimap_user = a", r"Section \[alice@example\] .* must be named after an"),
])
def test_bad_values_are_named(tmp_path: Any, line: str, complaint: str) -> None:
    text = f"imap_host = h\nimap_user = u\nimap_password = p\n{line}\n"
    with pytest.raises(errors.PluginError, match=complaint):
        credentials(tmp_path, text).for_address(ALICE)


@pytest.mark.parametrize("text", [
    "imap_host = h\nimap_user = u\nimap_password = pässwörd\n",
    "imap_host = h\nimap_user = u\nimap_password = p\nsmtp_password = pässwörd\n",
])
def test_non_ascii_password_is_refused_without_quoting_it(tmp_path: Any, text: str) -> None:
    with pytest.raises(errors.PluginError, match="_password for .* outside ASCII") as caught:
        credentials(tmp_path, text).for_address(ALICE)
    assert "ä" not in str(caught.value) and "pässwörd" not in str(caught.value)


def test_parse_error_names_the_line_not_its_secret(tmp_path: Any) -> None:
    with pytest.raises(errors.PluginError, match="line 2") as caught:
        credentials(tmp_path, "imap_host = h\nhunter2-no-equals-sign\n")
    assert "hunter2" not in str(caught.value)


def test_world_readable_file_is_warned_about(tmp_path: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        credentials(tmp_path, CREDENTIALS, mode=0o644)
    assert "Unsafe permissions" in caplog.text


def test_settings_never_show_the_password() -> None:
    imap = MailboxSettings(MailProtocol.IMAP, "h", 993, TlsMode.IMPLICIT, "u", PASSWORD)
    smtp = SmtpSettings("h", 465, TlsMode.IMPLICIT, "u", PASSWORD)
    assert PASSWORD not in repr(imap) + repr(smtp) + imap.describe()


# ---- perform / cleanup over fake mailboxes -----------------------------------------------

class FakeMailboxes:
    """Stands in for IMAP (mails per user) and SMTP (what was submitted)."""

    def __init__(self) -> None:
        self.inboxes: dict[str, list[bytes]] = {}
        self.sent: list[tuple[SmtpSettings, bytes, str, str]] = []
        self.arrived = threading.Condition()
        self.refuse_login: set[str] = set()
        self.refuse_submit = False
        self.flagged: list[bytes] = []

    def deliver(self, user: str, raw: bytes) -> None:
        with self.arrived:
            self.inboxes.setdefault(user, []).append(raw)
            self.arrived.notify_all()

    def watcher(self, settings: MailboxSettings, since: datetime.datetime, max_bytes: int,
                poll_seconds: float) -> "FakeWatcher":
        return FakeWatcher(self, settings)

    def submit(self, settings: SmtpSettings, message: bytes, sender: str,
               recipient: str) -> None:
        if self.refuse_submit:
            raise TransportError("SMTP submission server refused the login as 'alice'")
        self.sent.append((settings, message, sender, recipient))


class FakeWatcher:
    """An ImapWatcher over FakeMailboxes: hands out each delivered mail once."""

    def __init__(self, boxes: FakeMailboxes, settings: MailboxSettings) -> None:
        self.boxes = boxes
        self.settings = settings
        self.interrupted = False
        self.handed_out = 0

    def connect(self) -> None:
        if self.settings.user in self.boxes.refuse_login:
            raise TransportError(f"IMAP login as {self.settings.user!r} was refused")

    def next_mails(self, wait_seconds: float) -> list[IncomingMail]:
        with self.boxes.arrived:
            box = self.boxes.inboxes.setdefault(self.settings.user, [])
            if not box and not self.interrupted:
                self.boxes.arrived.wait(min(wait_seconds, 0.2))
            mails, box[:] = list(box), []
        first, self.handed_out = self.handed_out + 1, self.handed_out + len(mails)
        return [IncomingMail(uid, raw, label=f"{self.settings.describe()} UID {uid}")
                for uid, raw in enumerate(mails, first)]

    def mark_answered(self, mail: IncomingMail) -> None:
        self.boxes.flagged.append(mail.raw)

    def interrupt(self) -> None:
        self.interrupted = True

    def close(self) -> None:
        """Nothing to close."""


@pytest.fixture
def keys() -> Keys:
    made = Keys()
    made.add(b"example.org")
    return made


@pytest.fixture
def boxes(monkeypatch: pytest.MonkeyPatch, keys: Keys) -> FakeMailboxes:
    fake = FakeMailboxes()
    monkeypatch.setattr(reply_mailflow, "open_watcher", fake.watcher)
    monkeypatch.setattr(responder_module.smtp, "submit", fake.submit)
    monkeypatch.setattr(reply_mailflow.dkim_dns, "txt_lookup",
                        lambda server, hint="": keys.lookup)
    return fake


ACCOUNT_KEY = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))


def achall(address: str, token2: str = TOKEN2) -> achallenges.AnnotatedChallenge:
    """What certbot's auth handler passes to perform() for an email identifier."""
    challb = messages.ChallengeBody(chall=EmailReply00(token=token2, sender=CA),
                                    uri="https://ca.example/chall/1",
                                    status=messages.STATUS_PENDING)
    return annotated_challenge(challb, ACCOUNT_KEY, identifiers.IDENTIFIER_EMAIL, address)


class TestPerform(PluginCase):
    """The round trip, with the mailbox and the submission server faked."""

    boxes: FakeMailboxes
    keys: Keys

    @pytest.fixture(autouse=True)
    def _fakes(self, boxes: FakeMailboxes, keys: Keys) -> None:
        self.boxes, self.keys = boxes, keys

    def setUp(self) -> None:
        super().setUp()
        self.config.email_reply_dkim_dns_server = "127.0.0.1:5353"
        self.display_patch = certbot_test_util.patch_display_util()
        self.display = self.display_patch.start()

    def tearDown(self) -> None:
        self.plugin.cleanup([])
        self.display_patch.stop()
        super().tearDown()

    def challenge(self, to: str = ALICE, token1: str = TOKEN1) -> bytes:
        return sign(self.keys, mail(headers(To=to, Subject=f"ACME: {token1}",
                                            Message_ID=f"<{token1[:8]}@example.org>")))

    def replies(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
                for _settings, raw, _sender, _to in self.boxes.sent]

    def test_mail_already_there_is_answered_before_perform_returns(self) -> None:
        challenge = self.challenge()
        self.boxes.deliver("alice", challenge)
        responses = self.plugin.perform([achall(ALICE)])
        assert [response.to_partial_json() for response in responses] == [{}]
        (reply,) = self.replies()
        expected = EmailReply00(token=TOKEN2, sender=CA).validation(
            ACCOUNT_KEY, token_part1=TOKEN1)
        assert expected in reply.get_content()
        assert (reply["From"], reply["To"]) == (ALICE, CA)
        assert self.boxes.flagged == [challenge]

    def test_a_mail_answered_in_one_run_is_not_answered_in_the_next(self) -> None:
        challenge = self.challenge()
        self.boxes.deliver("alice", challenge)
        self.plugin.perform([achall(ALICE)])
        self.plugin.cleanup([])
        self.config.email_reply_grace_seconds = 0
        self.boxes.deliver("alice", challenge)  # POP3-like: the mailbox shows it again
        self.plugin = Authenticator(self.config, "email-reply")
        with self._caplog.at_level(logging.INFO):
            self.plugin.perform([achall(ALICE)])
            self.boxes.deliver("alice", self.challenge(token1="C" * 43))
            self.plugin._responders[0].done.wait()
        assert "[ALREADY_ANSWERED]" in self._caplog.text
        assert [reply["Subject"] for reply in self.replies()] == \
            [f"Re: ACME: {TOKEN1}", f"Re: ACME: {'C' * 43}"]

    def test_of_two_different_passing_challenges_neither_is_answered(self) -> None:
        self.boxes.deliver("alice", self.challenge(token1="S" * 43))  # the CA's, or not?
        self.boxes.deliver("alice", self.challenge())
        with pytest.raises(errors.PluginError, match=f"{ALICE}: two challenge mails") as caught:
            self.plugin.perform([achall(ALICE)])
        assert "<SSSSSSSS@example.org>" in str(caught.value)
        assert f"<{TOKEN1[:8]}@example.org>" in str(caught.value)
        assert self.replies() == []

    def test_bytes_joining_changes_the_digest(self) -> None:
        self.config.email_reply_token_joining = "bytes"
        self.boxes.deliver("alice", self.challenge())
        self.plugin.perform([achall(ALICE)])
        expected = EmailReply00(token=TOKEN2, sender=CA).validation(
            ACCOUNT_KEY, token_part1=TOKEN1, joining=reply_mailflow.keyauth.TokenJoining.BYTES)
        assert expected in self.replies()[0].get_content()

    def test_two_addresses_two_mailboxes_each_answered_once(self) -> None:
        token_bob = "B" * 43
        self.boxes.deliver("alice", self.challenge())
        self.boxes.deliver("alice", self.challenge())  # the CA sent it twice
        self.boxes.deliver("bob", self.challenge(to=BOB, token1=token_bob))
        self.plugin.perform([achall(ALICE), achall(BOB, token2="x6I65YvEk6xC4KV0QMvdJw")])
        assert sorted(reply["From"] for reply in self.replies()) == [ALICE, BOB]
        bob_settings = next(s for s, _raw, sender, _to in self.boxes.sent if sender == BOB)
        assert (bob_settings.host, bob_settings.user) == ("smtp.example.com", "bob")

    def test_forged_mail_is_ignored_and_the_run_waits_for_the_real_one(self) -> None:
        self.config.email_reply_grace_seconds = 0
        self.boxes.deliver("alice", mail())  # unsigned: never answered
        self.plugin.perform([achall(ALICE)])
        assert self.boxes.sent == []
        self.boxes.deliver("alice", self.challenge())
        self.plugin._responders[0].done.wait()
        assert len(self.boxes.sent) == 1

    def test_late_mail_is_answered_in_the_background_until_cleanup(self) -> None:
        self.config.email_reply_grace_seconds = 0
        self.plugin.perform([achall(ALICE)])
        (responder,) = self.plugin._responders
        assert not responder.done.is_set()
        self.boxes.deliver("alice", self.challenge())
        responder.done.wait()
        assert ALICE in responder.answered
        self.plugin.cleanup([])
        assert self.plugin._responders == []

    def test_cleanup_stops_a_worker_still_waiting(self) -> None:
        self.config.email_reply_grace_seconds = 0
        self.plugin.perform([achall(ALICE)])
        (responder,) = self.plugin._responders
        self.plugin.cleanup([])
        assert responder.done.is_set() and responder.answered == {}

    def test_refused_login_fails_perform_with_the_reason(self) -> None:
        self.boxes.refuse_login.add("alice")
        with pytest.raises(errors.PluginError, match="login as 'alice' was refused"):
            self.plugin.perform([achall(ALICE)])

    def test_refused_submission_fails_perform_naming_the_address(self) -> None:
        self.boxes.refuse_submit = True
        self.boxes.deliver("alice", self.challenge())
        with pytest.raises(errors.PluginError, match=f"{ALICE}: SMTP submission"):
            self.plugin.perform([achall(ALICE)])

    def test_missing_credentials_option_says_what_to_do(self) -> None:
        self.config.email_reply_credentials = None
        with pytest.raises(errors.PluginError, match="--email-reply-credentials PATH"):
            self.plugin.perform([achall(ALICE)])

    def test_progress_names_the_address(self) -> None:
        self.config.email_reply_grace_seconds = 1
        self.plugin.perform([achall(ALICE)])
        shown = " ".join(str(call) for call in self.display.return_value.mock_calls)
        assert f"Waiting for the challenge mail for {ALICE}" in shown

    def test_no_secret_in_the_log(self) -> None:
        with self._caplog.at_level(logging.DEBUG):
            self.boxes.deliver("alice", self.challenge())
            self.plugin.perform([achall(ALICE)])
        assert PASSWORD not in self._caplog.text and "bob-secret" not in self._caplog.text
        assert "passed every check" in self._caplog.text

    @pytest.fixture(autouse=True)
    def _capture(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    def shown(self) -> str:
        return " ".join(str(call) for call in self.display.return_value.mock_calls)

    # ---- a stranger's mail never breaks the run -----------------------------------------------

    def test_mails_that_break_parsers_are_refused_and_the_genuine_one_is_answered(self) -> None:
        hostile = [
            mail().replace(b"<alice@", b"<al\xffice@"),  # a raw 8-bit byte in the To local part
            mail(extra=[("", "no name")]),  # dkimpy cannot parse this line
            mail(headers(From=",".join(["a@b"] * 130_000)))[:262_000],
            sign(self.keys, mail(headers(Subject="ACME: " + "Z" * 43)), algorithm=b"rsa-sha1"),
            b"\x00" * 1000,
        ]
        with self._caplog.at_level(logging.INFO):
            for raw in hostile:
                self.boxes.deliver("alice", raw)
            self.boxes.deliver("alice", self.challenge())
            self.plugin.perform([achall(ALICE)])
        (responder,) = self.plugin._responders
        assert responder.failed == {} and ALICE in responder.answered
        assert [reply["Subject"] for reply in self.replies()] == [f"Re: ACME: {TOKEN1}"]
        refused = [record.getMessage() for record in self._caplog.records
                   if record.getMessage().startswith("Not answering")]
        assert len(refused) == len(hostile)
        assert all("imap.example.com:993/INBOX UID" in line and "(Message-ID '" in line
                   for line in refused)

    def test_a_mail_refused_because_dns_failed_is_answered_once_dns_is_back(self) -> None:
        self.config.email_reply_grace_seconds = 0
        self.keys.failing.add(self.keys.name(b"example.org"))
        self.boxes.deliver("alice", self.challenge())
        self.plugin.perform([achall(ALICE)])
        (responder,) = self.plugin._responders
        while not responder.refused:
            responder.done.wait(0.05)
        assert "[DKIM_KEY_UNAVAILABLE]" in responder.last_refusal
        assert self.boxes.sent == []
        self.keys.failing.clear()  # the name server answers again
        responder.done.wait()
        assert ALICE in responder.answered and len(self.boxes.sent) == 1

    # ---- logs and progress a person can follow ------------------------------------------------

    def test_every_verdict_line_names_the_mail_and_escapes_what_it_quotes(self) -> None:
        injected = sign(self.keys, mail(headers(
            Subject="=?utf-8?q?ACME:_x=0D=0AFake:_line?=", Message_ID="<odd@example.org>")))
        with self._caplog.at_level(logging.INFO):
            self.boxes.deliver("alice", injected)
            self.boxes.deliver("alice", self.challenge())
            self.plugin.perform([achall(ALICE)])
        (line,) = [record.getMessage() for record in self._caplog.records
                   if record.getMessage().startswith("Not answering")]
        assert line.startswith("Not answering alice on imap.example.com:993/INBOX UID 1 "
                               "(Message-ID '<odd@example.org>', From 'ACME CA <acme-generator")
        assert "[SUBJECT_CONTROL]" in line and "\r" not in line and "\\r\\n" in line

    def test_after_the_answer_later_mails_are_no_longer_waited_for(self) -> None:
        carol = "carol@example.com"  # no section of her own: the same mailbox as alice
        self.config.email_reply_grace_seconds = 0
        with self._caplog.at_level(logging.INFO):
            self.boxes.deliver("alice", self.challenge())
            self.plugin.perform([achall(ALICE), achall(carol, token2="x6I65YvEk6xC4KV0QMvdJw")])
            (responder,) = self.plugin._responders
            while ALICE not in responder.answered:
                responder.done.wait(0.05)
            self.boxes.deliver("alice", self.challenge(token1="L" * 43))  # alice's, once more
            self.boxes.deliver("alice", self.challenge(to=carol, token1="C" * 43))
            responder.done.wait()
        assert "[NO_LONGER_WAITING]" in self._caplog.text
        assert f"no longer waiting ({ALICE}: its challenge mail" in self._caplog.text
        assert "To names no mailbox" not in self._caplog.text
        assert sorted(reply["From"] for reply in self.replies()) == [ALICE, carol]

    def test_where_the_reply_went_is_shown_on_the_console(self) -> None:
        self.boxes.deliver("alice", self.challenge())
        self.plugin.perform([achall(ALICE)])
        assert f"Replied to the challenge mail for {ALICE}" in self.shown()
        assert f"at {CA}" in self.shown()
        assert "waiting for the CA to check the replies" in self.shown()

    def test_progress_says_a_mail_came_and_why_it_was_refused(self) -> None:
        self.config.email_reply_grace_seconds = 1
        self.keys.failing.add(self.keys.name(b"example.org"))
        self.boxes.deliver("alice", self.challenge())
        self.plugin.perform([achall(ALICE)])
        shown = self.shown()
        assert f"No challenge mail answered yet for {ALICE}; 1 mail(s) refused so far" in shown
        assert "the DKIM key could not be looked up" in shown and "192.0.2.53" in shown
        assert "No challenge mail yet" not in shown

    def test_a_wait_that_ran_out_within_the_grace_period_is_not_called_answered(self) -> None:
        self.config.email_reply_timeout_seconds = 0
        self.boxes.deliver("alice", mail())  # refused: unsigned
        self.plugin.perform([achall(ALICE)])
        assert f"No challenge mail could be answered in time for {ALICE}" in self.shown()
        assert "Every challenge mail is answered" not in self.shown()

    def test_a_challenge_given_up_after_perform_is_reported_at_cleanup(self) -> None:
        self.config.email_reply_grace_seconds = 0
        self.plugin.perform([achall(ALICE)])
        (responder,) = self.plugin._responders
        with self._caplog.at_level(logging.ERROR):
            self.boxes.deliver("alice", self.challenge())
            self.boxes.deliver("alice", self.challenge(token1="S" * 43))
            responder.done.wait()
            self.plugin.cleanup([])
        assert f"could not answer the challenge for {ALICE}: two challenge mails" \
            in self._caplog.text
        assert self.boxes.sent == []

    def traced(self, verbosity: int) -> bool:
        """Whether a run at this many -v let dkimpy's lines into the log, and imapclient's."""
        self.config.verbose_count = verbosity
        with self._caplog.at_level(logging.DEBUG):
            self.boxes.deliver("alice", sign(self.keys, mail(), private=self.keys.impostor))
            self.boxes.deliver("alice", self.challenge(token1="T" * 43))
            self.plugin.perform([achall(ALICE)])
        dkimpy = bool([record for record in self._caplog.records if record.name == "dkimpy"])
        assert dkimpy is (logging.getLogger("imapclient").level == logging.DEBUG)
        return dkimpy

    def test_no_protocol_traces_by_default(self) -> None:
        assert not self.traced(0)

    def test_no_protocol_traces_at_vv(self) -> None:
        assert not self.traced(2)

    def test_protocol_traces_at_vvv(self) -> None:
        assert self.traced(3)


class TestManual(PluginCase):
    """--email-reply-manual: the user gives the mail and sends the reply shown."""

    keys: Keys

    @pytest.fixture(autouse=True)
    def _fakes(self, boxes: FakeMailboxes, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
        self.keys, self.caplog = keys, caplog

    def setUp(self) -> None:
        super().setUp()
        self.config.email_reply_manual = True
        self.config.email_reply_credentials = None
        self.config.email_reply_dkim_dns_server = "127.0.0.1"
        self.display_patch = certbot_test_util.patch_display_util()
        self.display = self.display_patch.start().return_value

    def tearDown(self) -> None:
        self.display_patch.stop()
        super().tearDown()

    def answers(self, *answers: str) -> None:
        self.display.input.side_effect = [(display_util.OK, answer) for answer in answers]

    def shown(self) -> str:
        return " ".join(str(call) for call in self.display.notification.mock_calls)

    def saved(self, raw: bytes) -> str:
        path = os.path.join(self.tempdir, f"challenge-{len(os.listdir(self.tempdir))}.eml")
        with open(path, "wb") as file:
            file.write(raw)
        return path

    def test_saved_mail_is_judged_and_the_reply_shown(self) -> None:
        self.answers(self.saved(sign(self.keys, mail())))
        assert [r.to_partial_json() for r in self.plugin.perform([achall(ALICE)])] == [{}]
        digest = EmailReply00(token=TOKEN2, sender=CA).validation(ACCOUNT_KEY, token_part1=TOKEN1)
        shown = self.shown()
        assert f"To: {CA}" in shown and f"Subject: Re: ACME: {TOKEN1}" in shown
        assert f"-----BEGIN ACME RESPONSE-----\\n{digest}\\n" in shown

    def test_rejected_mail_says_why_then_a_pasted_subject_is_taken(self) -> None:
        self.answers(self.saved(mail()), f"ACME: {TOKEN1}")
        with self.caplog.at_level(logging.WARNING):
            self.plugin.perform([achall(ALICE)])
        assert "[DKIM_MISSING]" in self.shown()
        assert "DKIM were not checked" in self.caplog.text
        assert f"Subject: Re: ACME: {TOKEN1}" in self.shown()

    def test_a_mistyped_path_is_said_not_to_exist_and_not_read_as_a_subject(self) -> None:
        typo = os.path.join(self.tempdir, "no-such-dir", "challenge.eml")
        self.answers(typo, "challenge-typo.eml", self.saved(sign(self.keys, mail())))
        with self.caplog.at_level(logging.WARNING):
            self.plugin.perform([achall(ALICE)])
        shown = self.shown()
        assert f"There is no file {typo!r}. Check the path" in shown
        assert "There is no file 'challenge-typo.eml'" in shown
        assert "SUBJECT_NOT_CHALLENGE" not in shown and "DKIM were not checked" not in \
            self.caplog.text
        assert f"Subject: Re: ACME: {TOKEN1}" in shown

    def test_the_same_file_again_after_a_dns_failure_is_judged_afresh(self) -> None:
        path = self.saved(sign(self.keys, mail()))
        self.keys.failing.add(self.keys.name(b"example.org"))
        asked: list[str] = []

        def answer(*_args: Any, **_kwargs: Any) -> tuple[str, str]:
            asked.append(path)
            if len(asked) == 2:
                self.keys.failing.clear()  # the name server answers again
            return display_util.OK, path
        self.display.input.side_effect = answer
        self.plugin.perform([achall(ALICE)])
        assert "[DKIM_KEY_UNAVAILABLE]" in self.shown()
        assert f"Subject: Re: ACME: {TOKEN1}" in self.shown() and len(asked) == 2

    def test_cancel_fails_naming_the_address(self) -> None:
        self.display.input.side_effect = [(display_util.CANCEL, "")]
        with pytest.raises(errors.PluginError, match=f"No challenge mail was given for {ALICE}"):
            self.plugin.perform([achall(ALICE)])

    def test_non_interactive_run_is_refused(self) -> None:
        self.config.noninteractive_mode = True
        with pytest.raises(errors.MisconfigurationError, match="needs a person"):
            self.plugin.prepare()
