"""Judging an RFC 8823 response mail (§3.2) without I/O: it either yields what the CA needs to
look up the challenge, or names the rule it broke. DKIM keys come through an injected lookup.

Candidates for sharing with the client side: ``find_response_block``, ``subject_token_part1``,
the ``*_SIGNED_HEADERS`` lists and ``dkim_findings``.
"""
import dataclasses
import email
import email.message
import email.policy
import email.utils
import re
from typing import Callable, Optional

import dkim

from certbot_email.protocol import identifiers

#: Headers every response's DKIM h= must list (RFC 8823 §3.2 item 9).
RESPONSE_SIGNED_HEADERS = ("from", "sender", "reply-to", "to", "cc", "subject", "date",
                           "in-reply-to", "references", "message-id", "content-type",
                           "content-transfer-encoding")
#: The challenge's list adds Auto-Submitted (§3.1 item 6).
CHALLENGE_SIGNED_HEADERS = RESPONSE_SIGNED_HEADERS + ("auto-submitted",)
#: SHOULD-sign headers of both lists; the CA signs them on its challenges.
RECOMMENDED_SIGNED_HEADERS = ("resent-date", "resent-from", "resent-to", "resent-cc",
                              "list-id", "list-help", "list-unsubscribe", "list-subscribe",
                              "list-post", "list-owner", "list-archive",
                              "list-unsubscribe-post")
BEGIN_MARKER = "-----BEGIN ACME RESPONSE-----"
END_MARKER = "-----END ACME RESPONSE-----"
_SUBJECT_LABEL = re.compile(r"ACME:", re.IGNORECASE)

DnsTxtLookup = Callable[..., Optional[bytes]]


class MailRejectedError(Exception):
    """A response mail broke a rule; the message names the rule."""


@dataclasses.dataclass(frozen=True)
class ReplyFindings:
    """What a response mail that passed every mail-level rule says."""

    sender: str
    token_part1: str
    digest: str
    message_id: str


def subject_token_part1(subject: str) -> Optional[str]:
    """token-part1 from a decoded Subject: text after ``ACME:``, white space removed (A4)."""
    match = _SUBJECT_LABEL.search(subject)
    if match is None:
        return None
    token = "".join(subject[match.end():].split())
    return token or None


def find_response_block(text: str) -> Optional[str]:
    """The digest between the BEGIN/END lines, line breaks and white space dropped (§3.2 item 7)."""
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    try:
        start = lines.index(BEGIN_MARKER)
        end = lines.index(END_MARKER, start + 1)
    except ValueError:
        return None
    digest = "".join("".join(lines[start + 1:end]).split()).rstrip("=")
    return digest or None


def _plain_text(message: email.message.EmailMessage) -> str:
    """The text/plain body, top level or inside multipart/alternative, CTE undone (A12)."""
    content_type = message.get_content_type()
    if content_type == "text/plain":
        part: Optional[email.message.MIMEPart] = message
    elif content_type == "multipart/alternative":
        part = next((sub for sub in message.iter_parts()
                     if sub.get_content_type() == "text/plain"), None)
    else:
        raise MailRejectedError(f"the body is {content_type}, not text/plain or "
                                "multipart/alternative")
    if part is None:
        raise MailRejectedError("multipart/alternative without a text/plain part")
    try:
        return str(part.get_content())
    except (LookupError, ValueError) as error:
        raise MailRejectedError(f"the text/plain part cannot be decoded: {error}") from None


def _domain(value: str) -> str:
    """A domain in lower-case A-labels, for the d= comparison (A7)."""
    return value.strip().rstrip(".").encode("idna").decode("ascii").lower()


def dkim_findings(raw: bytes, from_domain: str, required: tuple[str, ...],
                  dnsfunc: DnsTxtLookup) -> str:
    """Accept if one DKIM signature verifies, is aligned, covers ``required`` and the whole body.

    Returns a description of the accepted signature; raises ``MailRejectedError`` with every
    signature's reason otherwise.
    """
    verifier = dkim.DKIM(raw)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    if count == 0:
        raise MailRejectedError("no DKIM-Signature")
    body_length = len(raw.split(b"\r\n\r\n", 1)[-1]) if b"\r\n\r\n" in raw else \
        len(raw.split(b"\n\n", 1)[-1])
    reasons = []
    for index in range(count):
        try:
            verified = verifier.verify(idx=index, dnsfunc=dnsfunc)
        except dkim.DKIMException as error:
            reasons.append(f"signature {index}: {error}")
            continue
        tags = verifier.signature_fields
        domain = tags.get(b"d", b"").decode("ascii", "replace")
        signed = {name.strip().lower() for name in
                  tags.get(b"h", b"").decode("ascii", "replace").split(":")}
        missing = [name for name in required if name not in signed]
        if not verified:
            reasons.append(f"signature {index} (d={domain}) does not verify")
        elif _domain(domain) != from_domain:
            reasons.append(f"signature {index}: d={domain} is not the From domain {from_domain}")
        elif missing:
            reasons.append(f"signature {index}: h= does not cover {', '.join(missing)}")
        elif b"l" in tags and int(tags[b"l"]) < body_length:
            reasons.append(f"signature {index}: l={int(tags[b'l'])} leaves part of the "
                           f"{body_length}-byte body unsigned")
        else:
            return f"DKIM d={domain} s={tags.get(b's', b'').decode('ascii', 'replace')}"
    raise MailRejectedError("DKIM: " + "; ".join(reasons))


def inspect_reply(raw: bytes, dnsfunc: DnsTxtLookup) -> ReplyFindings:
    """Check a response mail's own rules (§3.2, spec §9); the caller matches the challenge."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    lists = sorted({name for name in message.keys() if name.lower().startswith("list-")})
    if lists:
        raise MailRejectedError(f"mailing-list headers are present: {', '.join(lists)}")
    senders = email.utils.getaddresses(message.get_all("From", []))
    if len(senders) != 1 or not senders[0][1]:
        raise MailRejectedError("the response must have exactly one From address")
    try:
        sender = identifiers.normalize_mailbox(senders[0][1])
    except identifiers.MailboxError as error:
        raise MailRejectedError(f"From is not a usable mailbox: {error}") from None
    from_domain = sender.rpartition("@")[2]
    subject = str(message.get("Subject", ""))
    token_part1 = subject_token_part1(subject)
    if token_part1 is None:
        raise MailRejectedError(f"the Subject {subject!r} carries no 'ACME: <token-part1>'")
    dkim_findings(raw, from_domain, RESPONSE_SIGNED_HEADERS, dnsfunc)
    digest = find_response_block(_plain_text(message))
    if digest is None:
        raise MailRejectedError("no BEGIN/END ACME RESPONSE block in the text/plain part")
    return ReplyFindings(sender, token_part1, digest, str(message.get("Message-ID", "")))
