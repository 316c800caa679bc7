"""The test CA against the lab's real BIND, Postfix, Dovecot and OpenDKIM, driven by the ``acme``
library as a raw client (not our plugins): S/MIME via email-reply-00 in both mail orders, TLS
via dns-email-00 with an SRVName and via each capability challenge, and bad replies by mail.

Uses the session ``lab`` fixture of tests/integration/conftest.py."""
import email
import email.policy
import email.utils
import secrets
import smtplib
import socketserver
import ssl
import subprocess
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable, Iterator

import dkim
import pytest
from acme import messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email import reply_registry
from certbot_email.protocol import challenge_mail as challenge_mail_rules
from certbot_email.protocol import keyauth, rfc8823
from certbot_email.testing import mailcheck, mailer, rawclient, runtime
from certbot_email.testing.config import CAConfig, MailSettings
from tests.lab import testca as testca_lab
from tests.lab.lab import Lab
from tests.lab.ports import HOST

ALICE = "alice@example.test"
CA_MAILBOX = "ca@example.test"
MAIL_HOST = "mail.example.test"
PATIENCE = 30.0


#: Every TXT owner a test published; removed after it, since the session's BIND is shared.
PUBLISHED: set[str] = set()


def publish_txt(lab: Lab, name: str, value: str) -> None:
    """Publish through the lab, and remember the name for the clean-up."""
    PUBLISHED.add(name)
    testca_lab.publish_txt(lab, name, value)


@pytest.fixture(autouse=True)
def remove_published_txt(lab: Lab) -> Iterator[None]:
    yield
    while PUBLISHED:
        testca_lab.remove_txt(lab, PUBLISHED.pop())


def launch_ca(lab: Lab, tmp_path: Path, **mail_options: Any) -> runtime.LaunchedCA:
    """A test CA using the lab's DNS, port-25 injection and the ca mailbox over IMAPS."""
    password_user = lab.user("ca")
    selector = "testca" + secrets.token_hex(3)
    mail = MailSettings(sender=CA_MAILBOX, smtp_host=HOST, smtp_port=lab.ports.smtp,
                        dkim_selector=selector, imap_host=HOST, imap_port=lab.ports.imaps,
                        imap_tls=True, imap_user=password_user.address,
                        imap_password=password_user.password, poll_seconds=0.2,
                        **mail_options)
    config = CAConfig(state_dir=tmp_path / "ca", port=0, dns_server=HOST,
                      dns_port=lab.dns.port, mail=mail)
    lab.empty_mailbox("ca")
    lab.empty_mailbox("alice")
    launched = runtime.launch(config)
    publish_txt(lab, f"{selector}._domainkey.{lab.domain}", launched.dkim_record)
    return launched


def wait_for(what: str, check: Callable[[], Any]) -> Any:
    """Poll ``check`` until it returns something truthy; the test fails if it never does."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what}")


def decision(testca: runtime.LaunchedCA, text: str) -> str:
    return wait_for(f"a decision containing {text!r}: {testca.ca.decisions}", lambda: next(
        (d for d in testca.ca.decisions if text in d), None))


def challenge_mail(lab: Lab) -> bytes:
    return lab.wait_for_mail("alice", "ACME:", timeout=PATIENCE)


def response_for(lab: Lab, challenge_raw: bytes, client: rawclient.RawClient,
                 challb: messages.ChallengeBody, **headers: str) -> EmailMessage:
    """Alice's reply as an RFC 8823 client writes it (string joining; 24-byte token-part1)."""
    challenge = email.message_from_bytes(challenge_raw, policy=email.policy.default)
    token_part1 = mailcheck.subject_token_part1(str(challenge["Subject"]))
    assert token_part1 is not None
    digest = keyauth.key_authorization_digest(keyauth.key_authorization(
        keyauth.join_tokens(token_part1, challb.chall.token), client.key))
    body = f"{rfc8823.BEGIN_LINE}\r\n{digest}\r\n{rfc8823.END_LINE}\r\n"
    message = lab.message("alice", str(challenge.get("Reply-To") or challenge["From"]),
                          f"Re: ACME: {token_part1}", body,
                          In_Reply_To=str(challenge["Message-ID"]), **headers)
    return message


def new_order(testca: runtime.LaunchedCA, identifier_type: str, value: str, challenge: str
              ) -> tuple[rawclient.RawClient, messages.OrderResource, messages.ChallengeBody]:
    """A fresh account's order for one identifier, and the chosen challenge of it."""
    client = rawclient.RawClient(testca.directory_url, testca.root_path)
    client.register()
    order = client.new_order(identifier_type, (value,))
    return client, order, client.challenge(order.authorizations[0], challenge)


def smime_order(testca: runtime.LaunchedCA) -> tuple[rawclient.RawClient, messages.OrderResource,
                                                     messages.ChallengeBody]:
    return new_order(testca, "email", ALICE, "email-reply-00")


def finalize_smime_and_sign(tmp_path: Path, testca: runtime.LaunchedCA,
                            client: rawclient.RawClient, order: messages.OrderResource) -> None:
    """Get the certificate, sign a message with it, and have openssl verify it to the root."""
    key = rawclient.new_key("rsa")
    done = client.finalize(order, rawclient.make_csr(key, mailboxes=(ALICE,)))
    end = "-----END CERTIFICATE-----\n"
    leaf_pem, intermediate_pem = done.fullchain_pem.split(end, 1)
    leaf, intermediate = tmp_path / "leaf.pem", tmp_path / "intermediate.pem"
    leaf.write_text(leaf_pem + end)
    intermediate.write_text(intermediate_pem)
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    (tmp_path / "message.txt").write_text("Signed by alice's test certificate.\n")
    signing = subprocess.run(["openssl", "cms", "-sign", "-in", tmp_path / "message.txt",
                              "-signer", leaf, "-inkey", key_path, "-certfile", intermediate,
                              "-out",
                              tmp_path / "signed.eml"], capture_output=True, text=True)
    assert signing.returncode == 0, signing.stderr
    verified = subprocess.run(["openssl", "cms", "-verify", "-in", tmp_path / "signed.eml",
                               "-CAfile", testca.root_path], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert "Signed by alice's test certificate." in verified.stdout


def verify_challenge_signature(lab: Lab, testca: runtime.LaunchedCA, raw: bytes,
                               smime: bool, tmp_path: Path) -> None:
    """The challenge as delivered is signed: DKIM checked via BIND, or S/MIME via openssl."""
    if not smime:
        assert "d=example.test" in mailcheck.dkim_findings(
            raw, "example.test", rfc8823.CHALLENGE_SIGNED_HEADERS, lab.dns.dkimpy_dnsfunc)
        client_judge = reply_registry.ChallengeMailJudge(
            txt_lookup=lab.dns.dkimpy_dnsfunc)
        client_judge.expect(challenge_mail_rules.ExpectedChallenge(ALICE, CA_MAILBOX))
        judged = client_judge.judge(raw)
        assert judged.sender == CA_MAILBOX and not judged.waived
        return
    (tmp_path / "challenge.eml").write_bytes(raw)
    verified = subprocess.run(["openssl", "cms", "-verify", "-in", tmp_path / "challenge.eml",
                               "-CAfile", testca.root_path], capture_output=True)
    assert verified.returncode == 0, verified.stderr
    assert b"message/rfc822" in verified.stdout and b"Subject: ACME: " in verified.stdout


@pytest.mark.parametrize("smime", [False, True], ids=["dkim-challenge", "smime-challenge"])
def test_smime_reply_then_post(lab, tmp_path, smime):
    testca = launch_ca(lab, tmp_path, smime=smime)
    try:
        client, order, challb = smime_order(testca)
        raw = challenge_mail(lab)
        verify_challenge_signature(lab, testca, raw, smime, tmp_path)
        challenge = email.message_from_bytes(raw, policy=email.policy.default)
        assert challenge["Auto-Submitted"] == "auto-generated; type=acme"
        assert challenge["To"] == ALICE
        lab.submit_mail("alice", response_for(lab, raw, client, challb))
        decision(testca, "waiting for the client's POST")
        client.answer(challb, challb.chall.response(client.key))
        assert client.wait_authz(order.authorizations[0]).body.status == messages.STATUS_VALID
        finalize_smime_and_sign(tmp_path, testca, client, order)
    finally:
        testca.stop()


def test_smime_post_then_mail_then_reply_and_bad_replies(lab, tmp_path):
    testca = launch_ca(lab, tmp_path, send_on_post=True)
    try:
        client, order, challb = smime_order(testca)
        client.answer(challb, challb.chall.response(client.key))
        raw = challenge_mail(lab)
        listed = response_for(lab, raw, client, challb, List_Id="<alice.example.test>")
        lab.submit_mail("alice", listed)
        decision(testca, "mailing-list headers are present")
        lab.send_mail(response_for(lab, raw, client, challb))
        decision(testca, "no DKIM-Signature")
        good = response_for(lab, raw, client, challb)
        lab.submit_mail("alice", good)
        assert client.wait_authz(order.authorizations[0]).body.status == messages.STATUS_VALID
        lab.submit_mail("alice", good)
        decision(testca, "already used (replay)")
        finalize_smime_and_sign(tmp_path, testca, client, order)
    finally:
        testca.stop()


def test_tls_certificate_via_dns_email_with_srv_name(lab, tmp_path):
    testca = launch_ca(lab, tmp_path)
    try:
        client, order, challb = new_order(testca, "dns", MAIL_HOST, "dns-email-00")
        publish_txt(lab, f"_993._imaps._acme-challenge.{MAIL_HOST}",
                    challb.chall.validation(client.key))
        client.answer(challb, challb.chall.scoped_response(client.key, "imaps"))
        assert client.wait_authz(order.authorizations[0]).body.status == messages.STATUS_VALID
        csr = rawclient.make_csr(rawclient.new_key(), (MAIL_HOST,), srv=(("imaps", MAIL_HOST),))
        done = client.finalize(order, csr)
        chain = tmp_path / "chain.pem"
        chain.write_text(done.fullchain_pem)
        text = subprocess.run(["openssl", "x509", "-in", chain, "-noout", "-text"],
                              capture_output=True, text=True, check=True).stdout
        assert f"DNS:{MAIL_HOST}" in text and "TLS Web Server Authentication" in text
        assert "1.3.6.1.5.5.7.8.7" in text or "SRVName" in text
    finally:
        testca.stop()


class Responder(socketserver.ThreadingTCPServer):
    """A tiny SMTP, IMAP or POP3 server that advertises one ACME value, optionally over TLS."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, protocol: str, value: str, context: ssl.SSLContext | None) -> None:
        self.protocol, self.value, self.context = protocol, value, context
        super().__init__((HOST, 0), ResponderHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class ResponderHandler(socketserver.StreamRequestHandler):
    """Speaks just enough of each protocol for the CA's capability check."""

    server: Responder

    def setup(self) -> None:
        if self.server.context is not None:
            self.request = self.server.context.wrap_socket(self.request, server_side=True)
        super().setup()

    def say(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        value = self.server.value
        if self.server.protocol == "smtp":
            self.say("220 mail.example.test ESMTP")
            self.rfile.readline()
            for line in ["250-mail.example.test", "250-PIPELINING", "250-STARTTLS",
                         f"250-ACME {value}", "250 8BITMIME"]:
                self.say(line)
        elif self.server.protocol == "imap":
            self.say("* OK IMAP4rev1 ready")
            tag = self.rfile.readline().split()[0].decode()
            self.say(f"* CAPABILITY IMAP4rev1 STARTTLS ACME={value}")
            self.say(f"{tag} OK CAPABILITY completed")
        else:
            self.say("+OK POP3 ready")
            self.rfile.readline()
            for line in ["+OK Capability list follows", "TOP", "STLS", f"ACME {value}", "."]:
                self.say(line)
        self.rfile.readline()


@pytest.mark.parametrize("typ, service, protocol", [
    ("capability-smtp-00", "submission", "smtp"),
    ("capability-smtp-00", "submissions", "smtp"),
    ("capability-imap-00", "imap", "imap"),
    ("capability-imap-00", "imaps", "imap"),
    ("capability-pop-00", "pop3", "pop3"),
    ("capability-pop-00", "pop3s", "pop3"),
])
def test_tls_certificate_via_capability(lab, tmp_path, typ, service, protocol):
    testca = launch_ca(lab, tmp_path)
    try:
        client, order, challb = new_order(testca, "dns", MAIL_HOST, typ)
        context = None
        if service in ("submissions", "imaps", "pop3s"):
            chain, key = testca.ca.authority.server_certificate(MAIL_HOST)
            (tmp_path / "responder.pem").write_bytes(chain + key)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tmp_path / "responder.pem")
        responder = Responder(protocol, challb.chall.validation(client.key), context)
        try:
            testca.ca.network.port_overrides[service] = responder.port
            client.answer(challb, challb.chall.scoped_response(client.key, service))
            authz = client.wait_authz(order.authorizations[0])
        finally:
            responder.shutdown()
            responder.server_close()
        assert authz.body.status == messages.STATUS_VALID, testca.ca.decisions
        csr = rawclient.make_csr(rawclient.new_key(), (MAIL_HOST,), srv=((service, MAIL_HOST),))
        assert "BEGIN CERTIFICATE" in client.finalize(order, csr).fullchain_pem
    finally:
        testca.stop()


def test_capability_with_the_wrong_value_is_invalid(lab, tmp_path):
    testca = launch_ca(lab, tmp_path)
    try:
        client, order, challb = new_order(testca, "dns", MAIL_HOST, "capability-smtp-00")
        responder = Responder("smtp", "not-the-digest", None)
        try:
            testca.ca.network.port_overrides["submission"] = responder.port
            client.answer(challb, challb.chall.scoped_response(client.key, "submission"))
            authz = client.wait_authz(order.authorizations[0])
        finally:
            responder.shutdown()
            responder.server_close()
        assert authz.body.status == messages.STATUS_INVALID
        assert "advertises ACME values ['not-the-digest']" in " ".join(testca.ca.decisions)
    finally:
        testca.stop()


def test_misaligned_then_wrong_digest_replies(lab, tmp_path):
    """A reply signed for a sub-domain is ignored; a wrong digest from alice fails the challenge."""
    testca = launch_ca(lab, tmp_path)
    try:
        client, order, challb = smime_order(testca)
        raw = challenge_mail(lab)
        foreign_key = rsa.generate_private_key(65537, 2048)
        foreign_pem = foreign_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.TraditionalOpenSSL,
                                                serialization.NoEncryption())
        publish_txt(lab, f"sub._domainkey.sub.{lab.domain}", mailer.dkim_txt_record(foreign_pem))
        misaligned = response_for(lab, raw, client, challb).as_bytes(policy=email.policy.SMTP)
        signature = dkim.sign(misaligned, b"sub", f"sub.{lab.domain}".encode(), foreign_pem,
                              include_headers=[name.encode() for name in
                                               mailcheck.RESPONSE_SIGNED_HEADERS])
        with smtplib.SMTP(HOST, lab.ports.smtp, local_hostname="client.example.test") as smtp:
            smtp.sendmail(ALICE, [CA_MAILBOX], signature + misaligned)
        decision(testca, "is not the From domain example.test")
        wrong = response_for(lab, raw, client, challb)
        wrong.set_content(f"{rfc8823.BEGIN_LINE}\r\n{'A' * 43}\r\n{rfc8823.END_LINE}\r\n")
        lab.submit_mail("alice", wrong)
        decision(testca, "the response digest does not match")
        client.answer(challb, challb.chall.response(client.key))
        assert client.wait_authz(order.authorizations[0]).body.status == \
            messages.STATUS_INVALID
    finally:
        testca.stop()
