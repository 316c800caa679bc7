"""Forged and malformed challenge mails through the real lab while the plugin waits.

Each is refused by its rule and gets no reply, and the genuine challenge is still answered in
the same run, over IMAP and POP3. The forgeries come two ways: injected unsigned on the MX
(port-25 role) listener, and submitted as bob, another user of the CA's domain, through the
authenticated submission port, where OpenDKIM signs them for example.test like any of bob's
mails. DKIM keys that break a rule (rsa-sha1, t=y, 768 bits) are published in the lab zone, as
a domain's forgotten test keys would be.
"""
import base64
import dataclasses
import datetime
import logging
import os
import re
import secrets
import smtplib
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import dkim
import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbot_email.protocol.challenge_mail import MAX_MAIL_BYTES
from certbot_email.protocol.rfc8823 import CHALLENGE_SIGNED_HEADERS
from certbot_email.reply_journal import JOURNAL_NAME
from certbot_email.reply_mailflow import FlowSettings, start_responders
from certbot_email.transport import MailboxSettings, MailProtocol, TlsMode
from certbot_email.transport.imap import ImapWatcher
from certbot_email.transport.pop3 import Pop3Watcher
from tests.integration.test_email_reply_mail import ALICE, CA, CERTBOT, achall_for, challenge
from tests.integration.test_email_reply_pkcs12 import email_reply_arguments
from tests.lab import clients
from tests.lab.lab import Lab
from tests.lab.ports import HOST, free_port
from tests.lab.testca import mailbox_credentials, publish_txt, remove_txt, running_test_ca
from tests.unit.challenge_mails import small_rsa_key

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_mailboxes")]

BOB = "bob@example.test"
DOMAIN = b"example.test"
#: Ample for a loopback round trip; the tests wait on log lines and events, not clocks.
SAFETY_TIMEOUT = 60
#: How long certbot waits before it POSTs; the forgeries must be judged within it.
GRACE_SECONDS = 25
CERTBOT_TIMEOUT = 240
TRANSPORTS = pytest.mark.parametrize("transport", ["imaps+submission", "pop3s+submission"])


def new_token() -> str:
    return jose.b64encode(secrets.token_bytes(24)).decode("ascii")


# ---- keys of example.test that break a rule --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ForgerKeys:
    """Private keys by selector, each published under example.test."""

    private: dict[bytes, bytes]


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


@pytest.fixture(name="forger_keys", scope="module")
def fixture_forger_keys(lab: Lab) -> Iterator[ForgerKeys]:
    """A usable key (for rsa-sha1), a key in test mode, and a 768-bit key, in the lab zone."""
    keys = {b"legacy": (rsa.generate_private_key(65537, 2048), ""),
            b"testing": (rsa.generate_private_key(65537, 2048), "t=y; "),
            b"small": (small_rsa_key(), "")}
    for selector, (key, flags) in keys.items():
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        publish_txt(lab, f"{selector.decode()}._domainkey.{lab.domain}",
                    f"v=DKIM1; k=rsa; {flags}p={base64.b64encode(public).decode()}")
    try:
        yield ForgerKeys({selector: _pem(key) for selector, (key, _flags) in keys.items()})
    finally:
        for selector in keys:
            remove_txt(lab, f"{selector.decode()}._domainkey.{lab.domain}")


# ---- the forgeries ---------------------------------------------------------------------------

def forged(lab: Lab, number: int, sender: str = CA, to: str = ALICE, subject: str = "",
           **headers: str) -> EmailMessage:
    """A challenge-looking mail with its own Message-ID whose reply would go to bob."""
    extra = {"Auto_Submitted": "auto-generated; type=acme", "Reply_To": BOB, **headers}
    message = lab.message(sender, to, subject or f"ACME: {new_token()}",
                          body="This is an automatic ACME challenge.\n",
                          **{name: value for name, value in extra.items() if value})
    message.replace_header("Message-ID", f"<forgery-{number}-{secrets.token_hex(4)}@example.test>")
    return message


def inject(lab: Lab, raw: bytes, recipient: str = ALICE) -> None:
    """Raw bytes through the MX listener: no AUTH, never signed, 8-bit kept."""
    with smtplib.SMTP(HOST, lab.ports.smtp, local_hostname=clients.CLIENT_HOSTNAME,
                      timeout=10) as smtp:
        smtp.sendmail(CA, [recipient], raw)


def signed_with(keys: ForgerKeys, selector: bytes, message: EmailMessage,
                algorithm: bytes = b"rsa-sha256") -> bytes:
    """``message`` DKIM-signed for example.test with one of the forger's keys."""
    raw = message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return dkim.sign(raw, selector, DOMAIN, keys.private[selector],
                     include_headers=[name.encode() for name in CHALLENGE_SIGNED_HEADERS],
                     signature_algorithm=algorithm) + raw


def _last_header(message: EmailMessage, replacement: bytes) -> bytes:
    """``message`` with its From moved to the end of the header block, as ``replacement``."""
    head, body = message.as_bytes().split(b"\n\n", 1)
    lines = [line for line in head.split(b"\n") if not line.startswith(b"From:")]
    return b"\r\n".join([*lines, replacement]) + b"\r\n\r\n" + body


@dataclasses.dataclass(frozen=True)
class Forgery:
    """One forged mail: the rule it must be refused by, and how it is sent."""

    name: str
    rule: str
    message: EmailMessage
    send: Callable[[], None]

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


def forgeries(lab: Lab, keys: ForgerKeys) -> list[Forgery]:
    """Every class of mail the plugin must refuse, as a stranger or bob would send it."""
    made: list[Forgery] = []

    def mx(name: str, rule: str, message: EmailMessage,
           raw: Callable[[EmailMessage], bytes] = lambda m: m.as_bytes()) -> None:
        made.append(Forgery(name, rule, message, lambda: inject(lab, raw(message))))

    def as_bob(name: str, rule: str, message: EmailMessage) -> None:
        made.append(Forgery(name, rule, message, lambda: lab.submit_mail("bob", message)))

    count = iter(range(1, 100))
    mx("unsigned, on the MX", "DKIM_MISSING", forged(lab, next(count)))
    mx("a=rsa-sha1 with a published key", "DKIM_ALGORITHM", forged(lab, next(count)),
       lambda m: signed_with(keys, b"legacy", m, b"rsa-sha1"))
    mx("a key in test mode (t=y)", "DKIM_TEST_KEY", forged(lab, next(count)),
       lambda m: signed_with(keys, b"testing", m))
    mx("a 768-bit key", "DKIM_KEY_TOO_SMALL", forged(lab, next(count)),
       lambda m: signed_with(keys, b"small", m))
    mx("a raw 8-bit byte in the To local part", "MALFORMED", forged(lab, next(count)),
       lambda m: m.as_bytes().replace(b"To: alice@", b"To: al\xffice@"))
    mx("22,000 addresses in From (Postfix keeps headers under 100 KiB)", "HEADER_LIMIT",
       forged(lab, next(count)), lambda m: _last_header(
           m, b"From: " + b",".join([b"a@b"] * 22_000)))
    as_bob("an address-looking display name before bob's own address", "HEADER_DEFECT",
           forged(lab, next(count), sender=f"{CA} <{BOB}>"))
    as_bob("Sender: bob", "SENDER_MISMATCH", forged(lab, next(count), Sender=BOB))
    as_bob("Auto-Submitted: no", "NOT_AUTO_SUBMITTED",
           forged(lab, next(count), Auto_Submitted="no"))
    as_bob("Auto-Submitted: auto-replied", "NOT_AUTO_SUBMITTED",
           forged(lab, next(count), Auto_Submitted="auto-replied"))
    as_bob("a List-Id", "LIST_HEADER", forged(lab, next(count), List_Id="<acme.example.test>"))
    as_bob("a reply's Subject", "SUBJECT_IS_REPLY",
           forged(lab, next(count), subject=f"Re: ACME: {new_token()}"))
    as_bob("From bob, not the CA", "FROM_MISMATCH", forged(lab, next(count), sender=BOB))
    return made


# ---- reading what certbot logged ----------------------------------------------------------

def verdicts(log: Path) -> list[str]:
    """The plugin's per-mail verdict lines so far."""
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines()
            if "Not answering " in line]


def verdict_for(lines: list[str], message_id: str) -> str:
    found = [line for line in lines if f"Message-ID '{message_id}'" in line]
    assert len(found) == 1, f"{message_id}: {found or 'no verdict'}"
    return found[0]


class Output:
    """certbot's stdout, read line by line as it comes, in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"{text!r} never shown:\n{''.join(self.lines)}"
            time.sleep(0.1)

    @property
    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


def replies_in(lab: Lab, user: str) -> list[str]:
    """Subjects of the ``Re: ACME:`` mails in user's INBOX."""
    box = lab.imap(user)
    try:
        box.select_folder("INBOX", readonly=True)
        found = box.search(["SUBJECT", "Re: ACME:"])
        fetched = box.fetch(found, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]) if found else {}
        return [data[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().strip()
                for data in fetched.values()]
    finally:
        box.logout()


# ---- the certbot CLI, forgeries arriving while it waits ---------------------------------------

@TRANSPORTS
def test_forgeries_while_certbot_waits_get_no_reply_and_the_certificate_is_issued(
        lab: Lab, tmp_path: Path, forger_keys: ForgerKeys, transport: str) -> None:
    made = forgeries(lab, forger_keys)
    before, during = made[:3], made[3:]
    for forgery in before:  # already in the mailbox when certbot starts: the first batch
        forgery.send()
    log = tmp_path / "logs" / "letsencrypt.log"
    with running_test_ca(lab, tmp_path / "testca", "--send-on-post") as test_ca:
        credentials = mailbox_credentials(lab, "alice", tmp_path / "email-reply.ini", transport)
        command = [CERTBOT, *email_reply_arguments(lab, credentials, test_ca.directory_url),
                   "--email-reply-allow-no-auto-submitted",
                   "--email-reply-grace-seconds", str(GRACE_SECONDS),
                   "--email-reply-poll-seconds", "1", "--non-interactive",
                   "--config-dir", str(tmp_path / "config"), "--work-dir", str(tmp_path / "work"),
                   "--logs-dir", str(tmp_path / "logs")]
        environment = {**os.environ, "REQUESTS_CA_BUNDLE": str(test_ca.root)}
        certbot = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            output = Output(certbot)
            output.wait_for("Waiting for the challenge mail for", SAFETY_TIMEOUT)
            for forgery in during:
                forgery.send()
            deadline = time.monotonic() + GRACE_SECONDS - 5
            while len(verdicts(log)) < len(made) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert certbot.wait(timeout=CERTBOT_TIMEOUT) == 0, output.text
        finally:
            certbot.kill()
    lines = verdicts(log)
    for forgery in made:
        line = verdict_for(lines, forgery.message_id)
        assert f"[{forgery.rule}]" in line, f"{forgery.name}: {line}"
        assert ("UID " in line) if transport.startswith("imap") else (" message " in line)
    assert replies_in(lab, "bob") == []  # every forgery's Reply-To: no reply went there
    assert output.text.count("Replied to the challenge mail") == 1
    assert f"Replied to the challenge mail for {ALICE}" in output.text
    assert f"at {CA}" in output.text
    certificate = x509.load_pem_x509_certificate(
        (tmp_path / "config" / "live" / ALICE / "cert.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.RFC822Name) == [ALICE]


# ---- memory and ambiguity, with challenges the test writes ------------------------------------

@pytest.fixture(name="account_key")
def fixture_account_key() -> jose.JWK:
    return jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def settings_for(lab: Lab, tmp_path: Path, transport: str = "imaps+submission",
                 lookback: float = 30) -> FlowSettings:
    return FlowSettings(
        credentials=str(mailbox_credentials(lab, "alice", tmp_path / "email-reply.ini",
                                            transport)),
        token_joining="string", allow_unsigned=False, allow_no_auto_submitted=False,
        dkim_dns_server=f"{HOST}:{lab.dns.port}", smime_ca_file=None,
        timeout_seconds=SAFETY_TIMEOUT, poll_seconds=1,
        since=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=lookback),
        journal=str(tmp_path / JOURNAL_NAME))


def signed_copy(lab: Lab, message: EmailMessage) -> bytes:
    """``message`` submitted as ca, so that OpenDKIM signs it, and fetched back as delivered
    (to bob's mailbox: the header still says To: alice)."""
    account = lab.user("ca")
    with smtplib.SMTP(HOST, lab.ports.submission, local_hostname=clients.CLIENT_HOSTNAME,
                      timeout=10) as smtp:
        smtp.starttls(context=lab.client_tls())
        smtp.login(account.address, account.password)
        smtp.send_message(message, to_addrs=[BOB])
    raw = lab.wait_for_mail("bob", str(message["Subject"]))
    return raw[raw.index(b"DKIM-Signature:"):]  # without bob's delivery headers


@TRANSPORTS
def test_a_copy_of_a_refused_genuine_challenge_is_refused_and_the_next_one_answered(
        lab: Lab, tmp_path: Path, account_key: jose.JWK, transport: str,
        caplog: pytest.LogCaptureFixture) -> None:
    token = new_token()
    genuine = signed_copy(lab, challenge(lab, token))
    inject(lab, b"List-Id: <relay.example.test>\r\n" + genuine)  # refused: a list relayed it
    lab.wait_for_mail("alice", f"ACME: {token}")
    with caplog.at_level(logging.INFO):
        (responder,) = start_responders(settings_for(lab, tmp_path, transport),
                                        [achall_for(new_token(), account_key)])
        try:
            inject(lab, genuine)  # the same mail again, without the list's header
            while len([r for r in caplog.records if "Not answering" in r.getMessage()]) < 2:
                assert not responder.done.wait(0.1)
            fresh = new_token()
            lab.submit_mail("ca", challenge(lab, fresh))
            assert responder.done.wait(SAFETY_TIMEOUT)
        finally:
            responder.stop()
    assert "[LIST_HEADER]" in caplog.text and "[ALREADY_SEEN]" in caplog.text
    assert responder.answered[ALICE].token_part1 == fresh
    lab.wait_for_mail("ca", f"Re: ACME: {fresh}")
    assert replies_in(lab, "ca") == [f"Subject: Re: ACME: {fresh}"]  # and none to the copy


@TRANSPORTS
def test_a_forgery_with_the_cas_next_message_id_does_not_pre_empt_the_genuine_mail(
        lab: Lab, tmp_path: Path, account_key: jose.JWK, transport: str,
        caplog: pytest.LogCaptureFixture) -> None:
    token = new_token()
    genuine = challenge(lab, token)
    forgery = forged(lab, 1)
    forgery.replace_header("Message-ID", str(genuine["Message-ID"]))  # predicted
    with caplog.at_level(logging.INFO):
        (responder,) = start_responders(settings_for(lab, tmp_path, transport),
                                        [achall_for(new_token(), account_key)])
        try:
            inject(lab, forgery.as_bytes())
            while "[DKIM_MISSING]" not in caplog.text:
                assert not responder.done.wait(0.1)
            lab.submit_mail("ca", genuine)
            assert responder.done.wait(SAFETY_TIMEOUT)
        finally:
            responder.stop()
    assert responder.failed == {} and responder.answered[ALICE].token_part1 == token
    assert replies_in(lab, "bob") == []


@TRANSPORTS
def test_two_passing_challenges_for_one_address_are_both_refused(
        lab: Lab, tmp_path: Path, account_key: jose.JWK, transport: str) -> None:
    insider = forged(lab, 1, Reply_To="")  # bob: From the CA, signed by his own domain's DKIM
    lab.submit_mail("bob", insider)
    genuine = challenge(lab, new_token())
    lab.submit_mail("ca", genuine)
    for message in (insider, genuine):
        lab.wait_for_mail("alice", str(message["Subject"]))
    (responder,) = start_responders(settings_for(lab, tmp_path, transport),
                                    [achall_for(new_token(), account_key)])
    try:
        assert responder.done.wait(SAFETY_TIMEOUT)
    finally:
        responder.stop()
    why = responder.failed[ALICE]
    assert "neither is answered" in why
    assert str(insider["Message-ID"]) in why and str(genuine["Message-ID"]) in why
    assert re.search(r"arrived \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", why)
    assert responder.answered == {} and replies_in(lab, "ca") == []


def test_a_mail_pop3_cannot_read_does_not_hide_the_genuine_challenge(
        lab: Lab, tmp_path: Path, account_key: jose.JWK,
        caplog: pytest.LogCaptureFixture) -> None:
    head = forged(lab, 1).as_bytes().split(b"\n\n", 1)[0].replace(b"\n", b"\r\n")
    box = lab.imap("alice")  # APPEND: Postfix would have broken the line at 998 bytes
    try:  # one line poplib refuses (over 2048 bytes)
        box.append("INBOX", head + b"\r\n\r\n" + b"x" * 3000 + b"\r\n")
    finally:
        box.logout()
    token = new_token()
    lab.submit_mail("ca", challenge(lab, token))
    lab.wait_for_mail("alice", f"ACME: {token}")
    with caplog.at_level(logging.WARNING):
        (responder,) = start_responders(settings_for(lab, tmp_path, "pop3s+submission"),
                                        [achall_for(new_token(), account_key)])
        try:
            assert responder.done.wait(SAFETY_TIMEOUT)
        finally:
            responder.stop()
    assert "cannot be read, so it is not judged: line too long" in caplog.text
    assert responder.answered[ALICE].token_part1 == token


# ---- a DNS failure is not a bad signature -------------------------------------------------------

class DnsRelay(socketserver.ThreadingUDPServer):
    """Relays DNS over UDP to the lab's BIND: a name server that comes up while the plugin waits."""

    def __init__(self, port: int, upstream: int) -> None:
        super().__init__((HOST, port), RelayHandler)
        self.upstream = upstream


class RelayHandler(socketserver.BaseRequestHandler):
    server: DnsRelay

    def handle(self) -> None:
        query, reply_socket = self.request
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
            upstream.settimeout(5)
            upstream.sendto(query, (HOST, self.server.upstream))
            reply_socket.sendto(upstream.recv(65535), self.client_address)


def test_a_dns_failure_is_not_a_bad_signature_and_the_mail_is_answered_once_dns_is_back(
        lab: Lab, tmp_path: Path, account_key: jose.JWK) -> None:
    port = free_port()  # nothing listens there yet: every query is refused
    settings = dataclasses.replace(settings_for(lab, tmp_path), dkim_dns_server=f"{HOST}:{port}")
    token = new_token()
    (responder,) = start_responders(settings, [achall_for(new_token(), account_key)])
    try:
        lab.submit_mail("ca", challenge(lab, token))
        while not responder.refused:
            assert not responder.done.wait(0.1)
        assert "[DKIM_KEY_UNAVAILABLE]" in responder.last_refusal
        assert f"at {HOST} port {port} failed" in responder.last_refusal
        assert f"--email-reply-dkim-dns-server ({HOST}:{port})" in responder.last_refusal
        assert responder.answered == {}
        with DnsRelay(port, lab.dns.port) as relay:
            threading.Thread(target=relay.serve_forever, daemon=True).start()
            try:
                assert responder.done.wait(SAFETY_TIMEOUT)
            finally:
                relay.shutdown()
    finally:
        responder.stop()
    assert responder.failed == {} and responder.answered[ALICE].token_part1 == token
    lab.wait_for_mail("ca", f"Re: ACME: {token}")


# ---- no mail in the window goes unjudged ------------------------------------------------------

def mailbox(lab: Lab, protocol: MailProtocol) -> MailboxSettings:
    account = lab.user("alice")
    port = lab.ports.imaps if protocol is MailProtocol.IMAP else lab.ports.pop3s
    return MailboxSettings(protocol, HOST, port, TlsMode.IMPLICIT, account.address,
                           account.password, ca_file=str(lab.ca_file), timeout=10)


def kick(lab: Lab) -> None:
    """Drop alice's IMAP session, as a server restart or a network cut would."""
    subprocess.run(["doveadm", "-c", str(lab.dovecot.config_file), "kick", ALICE],
                   check=True, capture_output=True)


def delivered(lab: Lab, number: int, behind: bool = False) -> str:
    """Deliver a mail marked ``number`` to alice and wait for it; ``behind``: its Date, and its
    INTERNALDATE too (IMAP APPEND sets it), a day before now, as from a clock that is behind."""
    message = forged(lab, number, subject=f"window {number} {secrets.token_hex(4)}")
    if behind:
        yesterday = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
        message.replace_header("Date", yesterday.strftime("%a, %d %b %Y %H:%M:%S +0000"))
        box = lab.imap("alice")
        try:
            box.append("INBOX", message.as_bytes(), msg_time=yesterday)
        finally:
            box.logout()
    else:
        lab.send_mail(message)
    lab.wait_for_mail("alice", str(message["Subject"]))
    return str(message["Subject"])


@pytest.mark.parametrize("protocol", [MailProtocol.IMAP, MailProtocol.POP3])
def test_with_no_lookback_every_mail_that_lands_while_watching_is_handed_out(
        lab: Lab, protocol: MailProtocol) -> None:
    since = datetime.datetime.now(datetime.timezone.utc)  # --email-reply-lookback-seconds 0
    watcher_class = ImapWatcher if protocol is MailProtocol.IMAP else Pop3Watcher
    watcher = watcher_class(mailbox(lab, protocol), since, MAX_MAIL_BYTES, poll_seconds=1)
    expected = [delivered(lab, 1)]  # in the same second as since, before the login
    watcher.connect()
    try:
        expected.append(delivered(lab, 2, behind=True))  # between the login and the first poll
        handed_out = [mail.raw for mail in watcher.next_mails(0)]
        if protocol is MailProtocol.IMAP:
            kick(lab)  # a POP3 watcher logs in afresh for every poll anyway
        expected.append(delivered(lab, 3))  # while the connection is down
        for _attempt in range(10):
            handed_out += [mail.raw for mail in watcher.next_mails(1)]
            if len(handed_out) >= len(expected):
                break
    finally:
        watcher.close()
    subjects = [re.search(rb"Subject: (window \d+ \w+)", raw).group(1).decode()  # type: ignore
                for raw in handed_out]
    assert subjects == expected


def test_with_no_lookback_a_run_judges_the_mail_that_landed_before_its_first_poll(
        lab: Lab, tmp_path: Path, account_key: jose.JWK,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(lab, tmp_path, lookback=0)
    first = forged(lab, 1)
    lab.send_mail(first)  # lands as the run starts: after since, in the same second
    lab.wait_for_mail("alice", str(first["Subject"]))
    token = new_token()
    with caplog.at_level(logging.INFO):
        (responder,) = start_responders(settings, [achall_for(new_token(), account_key)])
        try:
            lab.submit_mail("ca", challenge(lab, token))
            assert responder.done.wait(SAFETY_TIMEOUT)
        finally:
            responder.stop()
    assert f"Message-ID '{first['Message-ID']}'" in caplog.text and "[DKIM_MISSING]" in caplog.text
    assert responder.answered[ALICE].token_part1 == token

