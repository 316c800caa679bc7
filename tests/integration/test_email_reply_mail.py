"""The email-reply mail round trip against real servers: Postfix, Dovecot, OpenDKIM and BIND.

A challenge submitted as ca@example.test (so OpenDKIM signs it) reaches alice; our code, given
alice's mailbox in a credentials file, finds it (IMAP IDLE, or POP3 polling), checks DKIM
against the lab's BIND, and replies through submission; the reply must reach ca signed and
with the right digest. A forged challenge injected unsigned on the port-25 listener must get
no reply.
"""
import argparse
import datetime
import email
import email.policy
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path
from unittest import mock

import dkim
import josepy as jose
import pytest
from acme import messages
from certbot import achallenges, configuration, errors
from certbot.display import util as display_util
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from certbot_email import certbot_compat
from certbot_email.protocol import identifiers
from certbot_email.protocol.challenges import EmailReply00
from certbot_email.reply_journal import JOURNAL_NAME
from certbot_email.reply_mailflow import FlowSettings, start_responders
from certbot_email.reply_plugin import Authenticator
from certbot_email.transport import dkim_dns
from certbot_email.transport.responder import Responder
from tests.integration.smime import assert_signs_verifiable_mail
from tests.lab.lab import Lab
from tests.lab.ports import HOST
from tests.lab.testca import mailbox_credentials, running_test_ca
from tests.unit.certbot_versions import annotated_challenge
from tests.unit.test_reply_plugin import option_defaults

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_mailboxes")]

ALICE = "alice@example.test"
CA = "ca@example.test"
#: Ample for a loopback round trip; only a safety net, the tests wait on events, not clocks.
SAFETY_TIMEOUT = 60
#: The session's lab is shared: mails older than this, from other tests, are not ours to answer.
LOOKBACK = datetime.timedelta(seconds=10)


def new_token() -> str:
    """A fresh token-part1 of 24 random bytes, as our test CA makes them."""
    return jose.b64encode(secrets.token_bytes(24)).decode("ascii")


def achall_for(token2: str, account_key: jose.JWK) -> achallenges.AnnotatedChallenge:
    """Alice's challenge from ca, as certbot hands it to perform()."""
    challb = messages.ChallengeBody(chall=EmailReply00(token=token2, sender=CA),
                                    uri="https://ca.example.test/chall/1",
                                    status=messages.STATUS_PENDING)
    return annotated_challenge(challb, account_key, identifiers.IDENTIFIER_EMAIL, ALICE)


def start(lab: Lab, tmp_path: Path, work_dir: Path, token2: str, account_key: jose.JWK,
          transport: str = "imaps+submission", ca_file: bool = True) -> Responder:
    """Watch alice's mailbox for a challenge from ca, as perform() does.

    Earlier tests' challenges are still in the mailbox; the shared journal, as on a real host,
    is what keeps POP3 (no flags) from answering them again.
    """
    settings = FlowSettings(
        credentials=str(mailbox_credentials(lab, "alice", tmp_path / "email-reply.ini",
                                            transport, ca_file)),
        token_joining="string", allow_unsigned=False, allow_no_auto_submitted=False,
        dkim_dns_server=f"{HOST}:{lab.dns.port}", smime_ca_file=None,
        timeout_seconds=SAFETY_TIMEOUT,
        poll_seconds=1,
        since=datetime.datetime.now(datetime.timezone.utc) - LOOKBACK,
        journal=str(work_dir / JOURNAL_NAME))
    (responder,) = start_responders(settings, [achall_for(token2, account_key)])
    return responder


def challenge(lab: Lab, token1: str) -> email.message.EmailMessage:
    """A challenge mail from ca to alice as RFC 8823 §3.1 describes it."""
    return lab.message("ca", "alice", f"ACME: {token1}",
                       body="This is an automatic ACME challenge.\n",
                       Auto_Submitted="auto-generated; type=acme")


@pytest.fixture(name="work_dir", scope="module")
def fixture_work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """certbot's work directory for every run in this module: one host, one journal."""
    return tmp_path_factory.mktemp("certbot-work")


@pytest.fixture(name="account_key")
def fixture_account_key() -> jose.JWK:
    return jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize("transport", ["imaps+submission", "imap-starttls+submissions",
                                       "pop3s+submission", "pop3-stls+submissions"])
def test_signed_challenge_is_answered_with_a_signed_reply(
        lab: Lab, tmp_path: Path, work_dir: Path, account_key: jose.JWK,
        transport: str) -> None:
    token1, token2 = new_token(), new_token()
    responder = start(lab, tmp_path, work_dir, token2, account_key, transport)
    try:
        assert responder.watcher.uses_idle is transport.startswith("imap")
        sent = challenge(lab, token1)
        lab.submit_mail("ca", sent)
        assert responder.done.wait(SAFETY_TIMEOUT)
        assert responder.failed == {}
        assert responder.answered[ALICE].token_part1 == token1
    finally:
        responder.stop()
    raw = lab.wait_for_mail("ca", f"Re: ACME: {token1}")
    assert dkim.verify(raw, dnsfunc=dkim_dns.txt_lookup(f"{HOST}:{lab.dns.port}"))
    reply = email.message_from_bytes(raw, policy=email.policy.default)
    assert b"d=example.test" in raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"")
    expected = EmailReply00(token=token2, sender=CA).validation(account_key, token_part1=token1)
    block = f"-----BEGIN ACME RESPONSE-----\r\n{expected}\r\n-----END ACME RESPONSE-----\r\n"
    assert raw.split(b"\r\n\r\n", 1)[1] == block.encode("ascii")
    assert (reply["From"], reply["To"]) == (ALICE, CA)
    assert reply["In-Reply-To"] == sent["Message-ID"]


def test_forged_challenge_on_port_25_gets_no_reply(
        lab: Lab, tmp_path: Path, work_dir: Path, account_key: jose.JWK,
        caplog: pytest.LogCaptureFixture) -> None:
    forged_token, real_token = new_token(), new_token()
    lab.send_mail(challenge(lab, forged_token))
    lab.wait_for_mail("alice", f"ACME: {forged_token}")  # it is in the mailbox first
    with caplog.at_level(logging.INFO):
        responder = start(lab, tmp_path, work_dir, new_token(), account_key)
        try:
            lab.submit_mail("ca", challenge(lab, real_token))
            assert responder.done.wait(SAFETY_TIMEOUT)
        finally:
            responder.stop()
    assert responder.answered[ALICE].token_part1 == real_token
    assert "[DKIM_MISSING]" in caplog.text
    lab.wait_for_mail("ca", f"Re: ACME: {real_token}")
    ca_box = lab.imap("ca")
    try:
        ca_box.select_folder("INBOX", readonly=True)
        assert ca_box.search(["SUBJECT", forged_token]) == []
    finally:
        ca_box.logout()


def test_tls_is_verified_by_default(lab: Lab, tmp_path: Path, work_dir: Path,
                                    account_key: jose.JWK) -> None:
    with pytest.raises(errors.PluginError, match="CERTIFICATE_VERIFY_FAILED"):
        start(lab, tmp_path, work_dir, new_token(), account_key, ca_file=False)


def test_plugin_perform_answers_a_mail_that_came_before_it(
        lab: Lab, tmp_path: Path, work_dir: Path, account_key: jose.JWK) -> None:
    token1, token2 = new_token(), new_token()
    lab.submit_mail("ca", challenge(lab, token1))
    lab.wait_for_mail("alice", f"ACME: {token1}")
    options = {dest: default for dest, default in option_defaults().items()}
    credentials = mailbox_credentials(lab, "alice", tmp_path / "c.ini")
    options.update(email_reply_credentials=str(credentials),
                   email_reply_dkim_dns_server=f"{HOST}:{lab.dns.port}",
                   email_reply_lookback_seconds=int(LOOKBACK.total_seconds()),
                   allow_subset_of_names=False, noninteractive_mode=True,
                   config_dir=str(tmp_path / "config"), work_dir=str(work_dir),
                   logs_dir=str(tmp_path / "logs"), http01_port=80, https_port=443,
                   domains=None)
    plugin = Authenticator(configuration.NamespaceConfig(argparse.Namespace(**options)),
                           "email-reply")
    plugin.prepare()
    try:
        with mock.patch.object(display_util, "notify"):
            responses = plugin.perform([achall_for(token2, account_key)])
    finally:
        plugin.cleanup([])
        certbot_compat.csr_profile.mailbox_key_usage = None
    assert [response.to_partial_json() for response in responses] == [{}]
    raw = lab.wait_for_mail("ca", f"Re: ACME: {token1}")
    expected = EmailReply00(token=token2, sender=CA).validation(account_key, token_part1=token1)
    assert expected.encode("ascii") in raw


# ---- the certbot CLI against the project's test CA ----------------------------------------

CERTBOT = str(Path(sys.executable).with_name("certbot"))


@pytest.mark.parametrize("ca_options", [(), ("--send-on-post",), ("--smime-challenge",)],
                         ids=["mail-before-post", "mail-after-post", "smime-signed-mail"])
def test_certbot_certonly_and_renew_against_the_test_ca(
        lab: Lab, tmp_path: Path, work_dir: Path, ca_options: tuple[str, ...]) -> None:
    with running_test_ca(lab, tmp_path / "testca", *ca_options) as test_ca:
        ca_root = test_ca.root
        smime = ["--email-reply-smime-ca-file", str(ca_root)] \
            if "--smime-challenge" in ca_options else []
        credentials = mailbox_credentials(lab, "alice", tmp_path / "email-reply.ini")
        environment = {**os.environ, "REQUESTS_CA_BUNDLE": str(ca_root)}
        common = ["--non-interactive", "--config-dir", str(tmp_path / "config"),
                  "--work-dir", str(work_dir), "--logs-dir", str(tmp_path / "logs")]
        certonly = subprocess.run(
            [CERTBOT, "certonly", "-a", "email-reply", "-d", ALICE,
             "--server", test_ca.directory_url, "--agree-tos", "--register-unsafely-without-email",
             "--email-reply-credentials", str(credentials), "--email-reply-key-usage", "sign",
             "--email-reply-dkim-dns-server", f"{HOST}:{lab.dns.port}",
             "--email-reply-grace-seconds", "5",
             "--email-reply-lookback-seconds", str(int(LOOKBACK.total_seconds())), *smime,
             *common],
            env=environment, capture_output=True, text=True, timeout=180, check=False)
        assert certonly.returncode == 0, certonly.stderr
        renew = subprocess.run(
            [CERTBOT, "renew", "--force-renewal", "--no-random-sleep-on-renew", *common],
            env=environment, capture_output=True, text=True, timeout=180, check=False)
        assert renew.returncode == 0, renew.stderr
    lineage = tmp_path / "config" / "live" / ALICE
    certificate = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.RFC822Name) == [ALICE]
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_agreement
    assert certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION])
    assert_signs_verifiable_mail(lineage, ca_root)
    renewal_conf = (tmp_path / "config" / "renewal" / f"{ALICE}.conf").read_text()
    assert "authenticator = email-reply" in renewal_conf
    assert lab.user("alice").password not in renewal_conf
