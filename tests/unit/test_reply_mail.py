"""The RFC 8823 response mail: acme4j's vector V2, headers, and wire format."""
import datetime
import email
import email.policy

import pytest

from certbot_email.protocol.challenge_mail import ChallengeMail
from certbot_email.protocol.challenges import EmailReply00
from certbot_email.protocol.reply_mail import build_reply, reply_instructions, response_body
from tests.unit.vectors import ACME4J_KEY

# Vector V2 (spec/rfc8823-email-reply.md), with acme4j's test key (tests/unit/vectors.py).
V2_TOKEN1 = "LgYemJLy3F1LDkiJrdIGbEzyFJyOyf6vBdyZ1TG3sME="
V2_TOKEN2 = "DGyRejmCefe7v4NfDGDKfA"
V2_DIGEST = "AjXW0h9_4YMP6Sv-9tKQNUrapI0us7ayBn0nCGOkUsk"
V2_BODY = ("-----BEGIN ACME RESPONSE-----\r\nAjXW0h9_4YMP6Sv-9tKQNUrapI0us7ayBn0nCGOkUsk\r\n"
           "-----END ACME RESPONSE-----\r\n")
CHALLENGE = ChallengeMail(
    sender="acme-generator@example.org", recipient="alexey@example.com", token_part1=V2_TOKEN1,
    message_id="<A2299BB.FF7788@example.org>", reply_to=None,
    references=("<earlier@example.org>",))
DATE = datetime.datetime(2020, 12, 5, 12, 1, 45, tzinfo=datetime.timezone.utc)


def reply(challenge: ChallengeMail = CHALLENGE, digest: str = V2_DIGEST) -> bytes:
    return build_reply(challenge, digest, message_id="<111-22222-3333333@example.com>",
                       date=DATE)


def parsed(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_v2_digest_from_the_challenge_object() -> None:
    challenge = EmailReply00(token=V2_TOKEN2, sender="acme-generator@example.org")
    assert challenge.validation(ACME4J_KEY, token_part1=V2_TOKEN1) == V2_DIGEST


def test_v2_body_is_acme4j_byte_for_byte() -> None:
    assert response_body(V2_DIGEST) == V2_BODY
    assert reply().split(b"\r\n\r\n", 1)[1] == V2_BODY.encode("ascii")


def test_headers_follow_rfc8823_section_3_2() -> None:
    message = parsed(reply())
    assert message["From"] == "alexey@example.com"
    assert message["To"] == "acme-generator@example.org"
    assert message["Subject"] == f"Re: ACME: {V2_TOKEN1}"
    assert message["In-Reply-To"] == "<A2299BB.FF7788@example.org>"
    assert message["References"] == "<earlier@example.org> <A2299BB.FF7788@example.org>"
    assert message["Message-ID"] == "<111-22222-3333333@example.com>"
    assert message["Date"].datetime == DATE
    assert message["Auto-Submitted"] == "auto-replied"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "us-ascii"
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert not [name for name in message.keys() if name.lower().startswith("list-")]


def test_reply_goes_to_reply_to_when_the_challenge_has_one() -> None:
    challenge = ChallengeMail(**{**CHALLENGE.__dict__, "reply_to": "acme-validator@example.org"})
    assert parsed(reply(challenge))["To"] == "acme-validator@example.org"


def test_without_message_id_there_is_no_in_reply_to() -> None:
    challenge = ChallengeMail(**{**CHALLENGE.__dict__, "message_id": None, "references": ()})
    message = parsed(reply(challenge))
    assert message["In-Reply-To"] is None and message["References"] is None


def test_wire_format_is_crlf_7bit_ascii() -> None:
    raw = reply()
    raw.decode("ascii")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_fresh_message_id_uses_the_identifier_domain() -> None:
    message = parsed(build_reply(CHALLENGE, V2_DIGEST))
    assert message["Message-ID"].endswith("@example.com>")
    assert message["Date"] is not None


@pytest.mark.parametrize("digest", ["abc\r\nBcc: x@evil.example", "\u00e9"])
def test_a_digest_that_is_not_base64url_cannot_reach_the_wire(digest: str) -> None:
    with pytest.raises(ValueError, match="not a base64url digest"):
        build_reply(CHALLENGE, digest)


def test_manual_instructions_carry_the_headers_and_the_block() -> None:
    text = reply_instructions(CHALLENGE, V2_DIGEST)
    assert text.splitlines() == [
        "From: alexey@example.com", "To: acme-generator@example.org",
        f"Subject: Re: ACME: {V2_TOKEN1}", "In-Reply-To: <A2299BB.FF7788@example.org>", "",
        "-----BEGIN ACME RESPONSE-----", V2_DIGEST, "-----END ACME RESPONSE-----"]
