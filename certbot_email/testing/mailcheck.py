"""Judging an RFC 8823 response mail (§3.2) without I/O: it either yields what the CA needs to
look up the challenge, or names the rule it broke. DKIM keys come through an injected lookup.

The RFC's own rules (header lists, Subject label, DKIM tags, response block) come from
``certbot_email.protocol.rfc8823``, shared with the client; this module holds the CA's policy.
"""
import dataclasses
import email
import email.message
import email.policy
import email.utils
from typing import Callable, Optional

import dkim

from certbot_email.protocol import identifiers, rfc8823
from certbot_email.protocol.rfc8823 import RESPONSE_SIGNED_HEADERS, find_response_block

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
    """token-part1 from a decoded Subject: any prefix before ``ACME:`` (any case) skipped (A4)."""
    parts = rfc8823.split_subject(subject, rfc8823.LABEL_ANY_CASE)
    return (parts.token_part1 or None) if parts else None


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


def dkim_findings(raw: bytes, from_domain: str, required: tuple[str, ...],
                  dnsfunc: DnsTxtLookup) -> str:
    """Accept if one DKIM signature verifies, is aligned, covers ``required`` and the whole body.

    Returns a description of the accepted signature; raises ``MailRejectedError`` with every
    signature's reason otherwise.
    """
    verifier = dkim.DKIM(raw)
    count = len(rfc8823.dkim_signatures(verifier.headers))
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
        tags = rfc8823.DkimTags.from_fields(verifier.signature_fields)
        missing = tags.missing_headers(required)
        if not verified:
            reasons.append(f"signature {index} (d={tags.domain}) does not verify")
        elif not tags.aligned_with(from_domain):
            reasons.append(f"signature {index}: d={tags.domain} is not the From domain "
                           f"{from_domain}")
        elif missing:
            reasons.append(f"signature {index}: h= does not cover {', '.join(missing)}")
        elif tags.leaves_body_unsigned(body_length):
            reasons.append(f"signature {index}: l={tags.body_length} leaves part of the "
                           f"{body_length}-byte body unsigned")
        else:
            return f"DKIM d={tags.domain} s={tags.selector}"
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
