"""email-reply-00 in the test CA without sockets: the challenge mail it writes and how it judges
replies (RFC 8823 §3.1-3.2), with DKIM keys served from a dict instead of DNS."""
import base64
import dataclasses
import email
import email.policy
import email.utils
import subprocess
from concurrent.futures import Future
from email.message import EmailMessage
from typing import Any, Callable, Optional

import dkim
import josepy as jose
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email.protocol import keyauth, rfc8823
from certbot_email.testing import issuance, mailcheck, mailer, validators
from certbot_email.testing.authority import TestCA
from certbot_email.testing.config import CAConfig, MailSettings, ReplyJoining
from certbot_email.testing.jws import SignedRequest
from certbot_email.testing.model import Challenge, Store

CA_ADDRESS = "ca@example.test"
ALICE = "alice@example.test"
ACCOUNT_KEY = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
SIGNED = [name.encode() for name in mailcheck.RESPONSE_SIGNED_HEADERS + ("mime-version",)]


def _rsa_pem() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(65537, 2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    return pem, mailer.dkim_txt_record(pem).encode()


MAIL_KEY, MAIL_RECORD = _rsa_pem()
OTHER_KEY, OTHER_RECORD = _rsa_pem()
DNS = {"lab._domainkey.example.test": MAIL_RECORD, "lab._domainkey.other.test": OTHER_RECORD}


def dns_lookup(name: bytes, timeout: float = 5) -> Optional[bytes]:
    return DNS.get(name.decode().rstrip("."))


class ImmediateExecutor:
    """Runs submitted work at once, so tests see its effect without waiting."""

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future

    def shutdown(self, **unused: Any) -> None:
        """Nothing to stop."""


@dataclasses.dataclass
class Setup:
    ca: TestCA
    sent: list[tuple[str, str]]
    challenge: Challenge
    account_request: SignedRequest
    authz_id: str


def make_ca(tmp_path, **mail_options: Any) -> Setup:
    """A CA with an order for alice whose authorization has been fetched once."""
    settings = MailSettings(sender=CA_ADDRESS, **mail_options)
    config = CAConfig(state_dir=tmp_path, mail=settings)
    sent: list[tuple[str, str]] = []
    ca = TestCA(config, Store(), issuance.Authority(tmp_path, 1),
                validators.Network(None, 53, {}, 80, "testca.localhost"),
                lambda to, token_part1: sent.append((to, token_part1)))
    ca.workers = ImmediateExecutor()  # type: ignore[assignment]
    ca.dkim_lookup = dns_lookup
    account, _ = ca.store.add_account(ACCOUNT_KEY.public_key(), ())
    request = SignedRequest(b'{"identifiers": [{"type": "email", "value": "alice@example.test"}]}',
                            ACCOUNT_KEY.public_key(), account)
    order = ca.new_order(request)
    authz_id = order.authz_ids[0]
    as_get = SignedRequest(b"", ACCOUNT_KEY.public_key(), account)
    authz = ca.authorization(as_get, authz_id)
    challenge = ca.store.challenges[authz.challenge_ids[0]]
    return Setup(ca, sent, challenge, as_get, authz_id)


def post_challenge(setup: Setup) -> Challenge:
    request = dataclasses.replace(setup.account_request, payload=b"{}")
    return setup.ca.challenge(request, setup.challenge.ident)


def digest_for(challenge: Challenge,
               joining: keyauth.TokenJoining = keyauth.TokenJoining.STRING) -> str:
    token = keyauth.join_tokens(challenge.token_part1 or "", challenge.token, joining)
    return keyauth.key_authorization_digest(keyauth.key_authorization(token, ACCOUNT_KEY))


def reply(token_part1: str, digest: str, sender: str = ALICE, body: Optional[str] = None,
          html_only: bool = False, alternative: bool = False, **headers: str) -> EmailMessage:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = CA_ADDRESS
    message["Subject"] = f"Re: ACME: {token_part1}"
    message["Date"] = email.utils.formatdate()
    message["Message-ID"] = email.utils.make_msgid(domain="example.test")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    text = body if body is not None else (
        f"Hello\r\n{rfc8823.BEGIN_LINE}\r\n{digest}\r\n{rfc8823.END_LINE}\r\n")
    if html_only:
        message.set_content(f"<pre>{text}</pre>", subtype="html")
    else:
        message.set_content(text, cte="7bit")
        if alternative:
            message.add_alternative("<p>see text part</p>", subtype="html")
    return message


def signed(message: EmailMessage, domain: str = "example.test", key: bytes = MAIL_KEY,
           headers: Optional[list[bytes]] = None, length: bool = False) -> bytes:
    raw = message.as_bytes()
    return dkim.sign(raw, b"lab", domain.encode(), key, include_headers=headers or SIGNED,
                     length=length) + raw


def last_decision(setup: Setup) -> str:
    return setup.ca.decisions[-1]


def test_first_fetch_sends_one_challenge_mail(tmp_path):
    setup = make_ca(tmp_path)
    assert setup.sent == [(ALICE, setup.challenge.token_part1)]
    assert len(jose.b64decode(setup.challenge.token_part1)) == 24
    setup.ca.authorization(setup.account_request, setup.authz_id)
    assert len(setup.sent) == 1
    assert setup.challenge.to_json("https://ca")["from"] == CA_ADDRESS


def test_challenge_mail_has_the_rfc_headers_and_a_covering_dkim_signature(tmp_path):
    settings = MailSettings(sender=CA_ADDRESS, reply_to="replies@example.test",
                            dkim_selector="lab")
    raw = mailer.Mailer(settings, MAIL_KEY).challenge_bytes(ALICE, "AAECAwQF")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "ACME: AAECAwQF"
    assert message["Auto-Submitted"] == "auto-generated; type=acme"
    assert message["To"] == ALICE and message["From"] == CA_ADDRESS
    assert message["Reply-To"] == "replies@example.test"
    assert message["Message-ID"] and message["Date"]
    assert b"\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")
    assert "d=example.test" in mailcheck.dkim_findings(
        raw, "example.test", rfc8823.CHALLENGE_SIGNED_HEADERS, dns_lookup)


def test_imitation_switches_drop_the_signature_and_auto_submitted():
    settings = MailSettings(sender=CA_ADDRESS, unsigned=True, omit_auto_submitted=True)
    raw = mailer.Mailer(settings, MAIL_KEY).challenge_bytes(ALICE, "AAECAwQF")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert "DKIM-Signature" not in message and "Auto-Submitted" not in message


def test_reply_then_post_validates(tmp_path):
    setup = make_ca(tmp_path)
    assert setup.ca.handle_reply(signed(reply(setup.challenge.token_part1,
                                              digest_for(setup.challenge))))
    assert setup.challenge.status == "pending"
    assert post_challenge(setup).status == "valid"
    assert setup.ca.store.authzs[setup.authz_id].status == "valid"


def test_post_then_reply_validates(tmp_path):
    setup = make_ca(tmp_path)
    assert post_challenge(setup).status == "processing"
    assert setup.ca.handle_reply(signed(reply(setup.challenge.token_part1,
                                              digest_for(setup.challenge))))
    assert setup.challenge.status == "valid"


def test_replayed_reply_is_rejected(tmp_path):
    setup = make_ca(tmp_path)
    raw = signed(reply(setup.challenge.token_part1, digest_for(setup.challenge)))
    assert setup.ca.handle_reply(raw)
    assert not setup.ca.handle_reply(raw)
    assert "already used (replay)" in last_decision(setup)


def test_digest_folded_over_lines_in_multipart_alternative_is_accepted(tmp_path):
    setup = make_ca(tmp_path)
    digest = digest_for(setup.challenge)
    body = (f"{rfc8823.BEGIN_LINE}\r\n{digest[:20]}\r\n{digest[20:]}\r\n"
            f"{rfc8823.END_LINE}\r\n")
    assert setup.ca.handle_reply(signed(reply(setup.challenge.token_part1, digest, body=body,
                                              alternative=True)))


@pytest.mark.parametrize("mutation, reason", [
    (lambda tp1, d: signed(reply(tp1, d, List_Id="<list.example.test>")), "mailing-list"),
    (lambda tp1, d: reply(tp1, d).as_bytes(), "no DKIM-Signature"),
    (lambda tp1, d: signed(reply(tp1, d), domain="other.test", key=OTHER_KEY),
     "is not the From domain"),
    (lambda tp1, d: signed(reply(tp1, d), headers=[b"from", b"subject", b"date"]),
     "does not cover"),
    (lambda tp1, d: signed(reply(tp1, d, body="x\r\n"))
     + f"{rfc8823.BEGIN_LINE}\r\n{d}\r\n{rfc8823.END_LINE}\r\n".encode(),
     "body hash mismatch"),
    (lambda tp1, d: signed(reply(tp1, d, html_only=True)), "not text/plain"),
    (lambda tp1, d: signed(reply(tp1, d, body="no block here\r\n")), "no BEGIN/END"),
    (lambda tp1, d: signed(reply("bm90LWEtdG9rZW4tcGFydDE", d)), "no pending challenge"),
])
def test_bad_replies_are_rejected_and_the_challenge_stays_pending(tmp_path, mutation, reason):
    setup = make_ca(tmp_path)
    raw = mutation(setup.challenge.token_part1, digest_for(setup.challenge))
    assert not setup.ca.handle_reply(raw)
    assert "REJECTED" in last_decision(setup) and reason in last_decision(setup)
    assert setup.challenge.status == "pending"


def test_length_tag_that_leaves_body_unsigned_is_rejected(tmp_path):
    setup = make_ca(tmp_path)
    message = reply(setup.challenge.token_part1, "", body="Hello\r\n")
    raw = signed(message, length=True)
    digest = digest_for(setup.challenge)
    raw += f"{rfc8823.BEGIN_LINE}\r\n{digest}\r\n{rfc8823.END_LINE}\r\n".encode()
    assert not setup.ca.handle_reply(raw)
    assert "leaves part of the" in last_decision(setup)


def test_reply_from_another_mailbox_is_rejected(tmp_path):
    setup = make_ca(tmp_path)
    raw = signed(reply(setup.challenge.token_part1, digest_for(setup.challenge),
                       sender="bob@example.test"))
    assert not setup.ca.handle_reply(raw)
    assert "From is not the identifier" in last_decision(setup)
    assert setup.ca.handle_reply(signed(reply(setup.challenge.token_part1,
                                              digest_for(setup.challenge))))


def test_wrong_digest_invalidates_the_challenge(tmp_path):
    setup = make_ca(tmp_path)
    wrong = base64.urlsafe_b64encode(b"\x00" * 32).decode().rstrip("=")
    assert not setup.ca.handle_reply(signed(reply(setup.challenge.token_part1, wrong)))
    assert setup.challenge.status == "invalid"
    assert setup.challenge.error["type"].endswith("incorrectResponse")


def test_expired_token_part1_invalidates(tmp_path):
    setup = make_ca(tmp_path, token_lifetime_seconds=-1)
    assert not setup.ca.handle_reply(signed(reply(setup.challenge.token_part1,
                                                  digest_for(setup.challenge))))
    assert setup.challenge.status == "invalid"
    assert "expired" in " ".join(setup.ca.decisions)


@pytest.mark.parametrize("mode, good, bad", [
    (ReplyJoining.BYTES, keyauth.TokenJoining.BYTES, keyauth.TokenJoining.STRING),
    (ReplyJoining.STRING, keyauth.TokenJoining.STRING, keyauth.TokenJoining.BYTES),
])
def test_single_joining_modes_accept_only_their_reading(tmp_path, mode, good, bad):
    first = make_ca(tmp_path / "a", joining=mode)
    assert len(jose.b64decode(first.challenge.token_part1)) == 32
    assert digest_for(first.challenge, good) != digest_for(first.challenge, bad)
    assert not first.ca.handle_reply(signed(reply(first.challenge.token_part1,
                                                  digest_for(first.challenge, bad))))
    second = make_ca(tmp_path / "b", joining=mode)
    assert second.ca.handle_reply(signed(reply(second.challenge.token_part1,
                                               digest_for(second.challenge, good))))


def test_send_on_post_waits_for_the_client(tmp_path):
    setup = make_ca(tmp_path, send_on_post=True)
    assert setup.sent == [] and setup.challenge.token_part1 is None
    post_challenge(setup)
    assert setup.sent == [(ALICE, setup.challenge.token_part1)]
    assert setup.ca.handle_reply(signed(reply(setup.challenge.token_part1,
                                              digest_for(setup.challenge))))
    assert setup.challenge.status == "valid"


def test_subject_and_block_parsing():
    assert mailcheck.subject_token_part1("RE: Fwd: ACME: abc def\tghi") == "abcdefghi"
    assert mailcheck.subject_token_part1("Hello") is None
    assert mailcheck.find_response_block(
        f"pre\n{rfc8823.BEGIN_LINE}\nAjXW0h9_4YMP6Sv-9tKQ\nNUrapI0us7ayBn0nCGOkUsk=\n"
        f"{rfc8823.END_LINE}\npost") == "AjXW0h9_4YMP6Sv-9tKQNUrapI0us7ayBn0nCGOkUsk"
    assert mailcheck.find_response_block(f"{rfc8823.BEGIN_LINE}\nabc") is None


def test_smime_signed_challenge_verifies_and_protects_the_headers(tmp_path):
    authority = issuance.Authority(tmp_path, 1)
    cert, key = authority.mailbox_identity(CA_ADDRESS)
    signer = mailer.SmimeSigner(tmp_path / "c.pem", tmp_path / "k.pem",
                                tmp_path / issuance.INTERMEDIATE_FILE)
    signer.certificate.write_bytes(cert)
    signer.key.write_bytes(key)
    settings = MailSettings(sender=CA_ADDRESS, smime=True)
    raw = mailer.Mailer(settings, MAIL_KEY, signer).challenge_bytes(ALICE, "AAECAwQF")
    outer = email.message_from_bytes(raw, policy=email.policy.default)
    assert outer.get_content_type() == "multipart/signed"
    assert outer["Subject"] == "ACME: AAECAwQF" and "DKIM-Signature" not in outer
    (tmp_path / "mail.eml").write_bytes(raw)
    verified = subprocess.run(["openssl", "cms", "-verify", "-in", tmp_path / "mail.eml",
                               "-CAfile", authority.root_path], capture_output=True)
    assert verified.returncode == 0, verified.stderr
    inner = email.message_from_bytes(verified.stdout, policy=email.policy.default)
    assert inner.get_content_type() == "message/rfc822"
    protected = inner.get_payload(0)
    assert protected["Subject"] == outer["Subject"] and protected["From"] == CA_ADDRESS
    assert protected["Auto-Submitted"] == "auto-generated; type=acme"
