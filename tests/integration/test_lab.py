"""The lab works: mail loop, DKIM on submission only, no relay, TSIG updates, Pebble + certbot."""

from __future__ import annotations

import email
import poplib
import smtplib
import subprocess
import sys
import uuid
from email.message import Message
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rcode
import dns.tsig
import dns.update
import pytest
from cryptography import x509
from imapclient import IMAPClient

from tests.lab import HOST, MAIL_HOST, RFC8823_SIGNED_HEADERS, Lab
from tests.lab.clients import CLIENT_HOSTNAME

CHALLENGE_NAME = "_993._imaps._acme-challenge.mail.example.test."


def unique(prefix: str) -> str:
    """A subject no other test of the session uses (they share one lab and its mailboxes)."""
    return f"{prefix} {uuid.uuid4().hex[:12]}"


def dkim_tags(message: Message) -> dict[str, str]:
    """The tags of the message's single DKIM-Signature, whitespace removed."""
    signatures = message.get_all("DKIM-Signature") or []
    assert len(signatures) == 1, f"expected one DKIM-Signature, got {signatures}"
    folded = "".join(str(signatures[0]).split())
    return dict(tag.split("=", 1) for tag in folded.split(";") if tag)


# -- mail ------------------------------------------------------------------------------------------

def test_mail_on_port_25_reaches_alice_over_imaps(lab: Lab) -> None:
    subject = unique("mail loop")
    lab.send_mail(lab.message("tester@example.net", "alice", subject), starttls=True)

    received = email.message_from_bytes(lab.wait_for_mail("alice", subject))

    assert received["Subject"] == subject
    hops = " ".join(received.get_all("Received") or [])
    assert f"by {MAIL_HOST} (Postfix)" in hops
    assert "with LMTP" in hops
    assert received["Delivered-To"] == "alice@example.test"


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["submission", "submissions"])
def test_submitted_mail_is_dkim_signed_over_rfc8823_headers(lab: Lab, implicit_tls: bool) -> None:
    subject = unique("dkim")
    message = lab.message(
        "alice", "ca", subject, In_Reply_To="<challenge@ca.example.test>",
        References="<challenge@ca.example.test>", Auto_Submitted="auto-replied",
    )
    lab.submit_mail("alice", message, implicit_tls=implicit_tls)

    raw = lab.wait_for_mail("ca", subject)
    tags = dkim_tags(email.message_from_bytes(raw))

    assert tags["d"] == "example.test"
    assert tags["s"] == lab.opendkim.selector
    signed = {name.lower() for name in tags["h"].split(":")}
    assert {name.lower() for name in RFC8823_SIGNED_HEADERS} <= signed
    assert dkim.verify(raw, dnsfunc=lab.dns.dkimpy_dnsfunc)
    tampered = raw.replace(subject.encode(), b"forged subject")
    assert not dkim.verify(tampered, dnsfunc=lab.dns.dkimpy_dnsfunc)


def test_mail_injected_on_port_25_is_not_signed(lab: Lab) -> None:
    subject = unique("unsigned")
    lab.send_mail(lab.message("alice", "ca", subject))

    received = email.message_from_bytes(lab.wait_for_mail("ca", subject))

    assert received["From"] == "alice@example.test"
    assert received.get_all("DKIM-Signature") is None


def test_dkim_public_key_is_published(lab: Lab) -> None:
    expected = f"v=DKIM1; k=rsa; p={lab.opendkim.public_key_b64}"
    assert lab.dns.txt(lab.opendkim.record_name) == [expected]


def test_opendkim_resolves_its_key_through_the_lab_dns(lab: Lab) -> None:
    # the key check uses OpenDKIM's own resolver configuration (libunbound -> lab BIND)
    done = subprocess.run(
        ["opendkim-testkey", "-x", str(lab.opendkim.config_file), "-vvv"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert f"checking key '{lab.opendkim.record_name}'" in done.stderr
    assert "key OK" in done.stdout + done.stderr


def smtp(port: int) -> smtplib.SMTP:
    return smtplib.SMTP(HOST, port, local_hostname=CLIENT_HOSTNAME, timeout=10)


def test_port_25_refuses_to_relay(lab: Lab) -> None:
    with smtp(lab.ports.smtp) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("alice@example.test", ["someone@example.net"], b"Subject: x\r\n\r\n")
    code, text = refused.value.recipients["someone@example.net"]
    assert code == 554 and b"Relay access denied" in text


def test_submission_refuses_mail_without_auth(lab: Lab) -> None:
    with smtp(lab.ports.submission) as client:
        client.ehlo()
        assert not client.has_extn("auth"), "AUTH must not be offered before STARTTLS"
        client.starttls(context=lab.client_tls())
        client.ehlo()
        assert client.has_extn("auth")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("alice@example.test", ["ca@example.test"], b"Subject: x\r\n\r\n")
    assert refused.value.recipients["ca@example.test"][0] == 554


def test_submission_rejects_a_wrong_password(lab: Lab) -> None:
    with smtp(lab.ports.submission) as client:
        client.starttls(context=lab.client_tls())
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("alice@example.test", "wrong")
    assert failed.value.smtp_code == 535


def test_imap_starttls_login(lab: Lab) -> None:
    alice = lab.user("alice")
    with IMAPClient(HOST, port=lab.ports.imap, ssl=False, timeout=10) as client:
        client.starttls(lab.client_tls())
        client.login(alice.address, alice.password)
        assert client.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]
        assert b"IDLE" in client.capabilities()


def test_imap_idle_reports_new_mail(lab: Lab) -> None:
    subject = unique("idle")
    client = lab.imap("bob")
    try:
        client.select_folder("INBOX")
        client.idle()
        lab.send_mail(lab.message("tester@example.net", "bob", subject))
        responses = client.idle_check(timeout=10)
        client.idle_done()
    finally:
        client.logout()
    assert any(response[1] == b"EXISTS" for response in responses), responses


def test_pop3s_login(lab: Lab) -> None:
    subject = unique("pop3")
    lab.send_mail(lab.message("tester@example.net", "bob", subject))
    lab.wait_for_mail("bob", subject)

    bob = lab.user("bob")
    pop = poplib.POP3_SSL(HOST, lab.ports.pop3s, context=lab.client_tls(), timeout=10)
    try:
        pop.user(bob.address)
        pop.pass_(bob.password)
        count, _size = pop.stat()
    finally:
        pop.quit()
    assert count >= 1

    pop = poplib.POP3_SSL(HOST, lab.ports.pop3s, context=lab.client_tls(), timeout=10)
    try:
        pop.user(bob.address)
        with pytest.raises(poplib.error_proto):
            pop.pass_("wrong")
    finally:
        pop.close()


# -- DNS -------------------------------------------------------------------------------------------

def _update(lab: Lab, *, signed: bool) -> dns.update.UpdateMessage:
    if signed:
        return dns.update.UpdateMessage(
            lab.dns.zone, keyring=lab.dns.keyring(), keyalgorithm=dns.tsig.HMAC_SHA256
        )
    return dns.update.UpdateMessage(lab.dns.zone)


def test_tsig_signed_txt_update_is_visible_and_deletable(lab: Lab) -> None:
    token = uuid.uuid4().hex
    add = _update(lab, signed=True)
    add.add(CHALLENGE_NAME, 60, "TXT", f'"{token}"')
    assert dns.query.tcp(add, HOST, port=lab.dns.port, timeout=5).rcode() == dns.rcode.NOERROR
    assert token in lab.dns.txt(CHALLENGE_NAME)

    delete = _update(lab, signed=True)
    delete.delete(CHALLENGE_NAME, "TXT", f'"{token}"')
    assert dns.query.tcp(delete, HOST, port=lab.dns.port, timeout=5).rcode() == dns.rcode.NOERROR
    assert token not in lab.dns.txt(CHALLENGE_NAME)


def test_unsigned_update_is_refused(lab: Lab) -> None:
    name = f"_acme-challenge.unsigned-{uuid.uuid4().hex[:8]}.example.test."
    update = _update(lab, signed=False)
    update.add(name, 60, "TXT", '"nope"')
    assert dns.query.tcp(update, HOST, port=lab.dns.port, timeout=5).rcode() == dns.rcode.REFUSED
    assert lab.dns.txt(name) == []


def test_signed_update_of_a_non_txt_record_is_refused(lab: Lab) -> None:
    update = _update(lab, signed=True)
    update.add("evil.example.test.", 60, "A", "192.0.2.1")
    assert dns.query.tcp(update, HOST, port=lab.dns.port, timeout=5).rcode() == dns.rcode.REFUSED


def test_nsupdate_accepts_the_key_file(lab: Lab) -> None:
    token = uuid.uuid4().hex
    script = (
        f"server {HOST} {lab.dns.port}\nzone {lab.dns.zone}\n"
        f'update add {CHALLENGE_NAME} 60 TXT "{token}"\nsend\n'
        f'update delete {CHALLENGE_NAME} TXT "{token}"\nsend\n'
    )
    done = subprocess.run(
        ["nsupdate", "-k", str(lab.dns.key_file)],
        input=script, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert token not in lab.dns.txt(CHALLENGE_NAME)


# -- ACME ------------------------------------------------------------------------------------------

def test_pebble_serves_its_directory_and_root(lab: Lab) -> None:
    directory = lab.pebble.directory()
    assert {"newAccount", "newNonce", "newOrder"} <= directory.keys()
    root = x509.load_pem_x509_certificate(lab.pebble.root_pem().encode())
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_certbot_gets_a_certificate_over_http01(lab: Lab, tmp_path: Path) -> None:
    certbot = Path(sys.executable).parent / "certbot"
    # no --http-01-address: mail.example.test has AAAA ::1, which Pebble prefers, so certbot
    # must listen dual-stack (with --http-01-address 127.0.0.1 the validation fails)
    done = subprocess.run(
        [
            str(certbot), "certonly", *lab.pebble.certbot_options(tmp_path), "--standalone",
            "--preferred-challenges", "http-01", "--http-01-port", str(lab.ports.http01),
            "-d", MAIL_HOST,
        ],
        env=lab.pebble.certbot_environment(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    live = tmp_path / "config" / "live" / MAIL_HOST
    leaf = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [MAIL_HOST]
    chain = x509.load_pem_x509_certificates((live / "chain.pem").read_bytes())
    root = x509.load_pem_x509_certificate(lab.pebble.root_pem().encode())
    leaf.verify_directly_issued_by(chain[0])
    chain[-1].verify_directly_issued_by(root)


# -- the lab's own plumbing ------------------------------------------------------------------------

def test_every_server_has_a_log(lab: Lab) -> None:
    logs = lab.logs(lines=100_000)
    assert logs.keys() == {"bind", "opendkim", "dovecot", "postfix", "pebble"}
    assert "running as: named -g" in logs["bind"]
    assert "starting up for imap, pop3, lmtp" in logs["dovecot"]
    assert "postfix/master" in logs["postfix"]
    assert f"DNS resolver for ACME challenges: {HOST}:{lab.ports.dns}" in logs["pebble"]
