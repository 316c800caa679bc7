"""Building the RFC 8823 response mail (§3.2): a plain-text reply carrying the digest block."""
import datetime
import email.message
import email.policy
import email.utils
from typing import Optional

from certbot_email.protocol.challenge_mail import ChallengeMail
from certbot_email.protocol.rfc8823 import BASE64URL, BEGIN_LINE, END_LINE, SUBJECT_LABEL


def response_body(digest: str) -> str:
    """The BEGIN/END block around the digest, every line ending in CRLF."""
    if not BASE64URL.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a base64url digest")
    return f"{BEGIN_LINE}\r\n{digest}\r\n{END_LINE}\r\n"


def build_reply(challenge: ChallengeMail, digest: str, *,
                message_id: Optional[str] = None,
                date: Optional[datetime.datetime] = None) -> bytes:
    """The reply to ``challenge`` as wire bytes (CRLF, 7bit), ready for SMTP submission.

    ``message_id`` and ``date`` default to fresh values; tests pin them.
    """
    identifier_domain = challenge.recipient.rpartition("@")[2]
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    message["From"] = challenge.recipient
    message["To"] = challenge.reply_address
    message["Subject"] = f"Re: {SUBJECT_LABEL} {challenge.token_part1}"
    message["Date"] = email.utils.format_datetime(
        date or datetime.datetime.now(datetime.timezone.utc))
    message["Message-ID"] = message_id or email.utils.make_msgid(domain=identifier_domain)
    if challenge.message_id:
        message["In-Reply-To"] = challenge.message_id
        message["References"] = " ".join(challenge.references + (challenge.message_id,))
    message["Auto-Submitted"] = "auto-replied"
    message.set_content(response_body(digest).replace("\r\n", "\n"),
                        charset="us-ascii", cte="7bit")
    return message.as_bytes(policy=email.policy.SMTP)


def reply_instructions(challenge: ChallengeMail, digest: str) -> str:
    """What to send by hand (manual mode): the headers that matter, then the body verbatim."""
    lines = [f"From: {challenge.recipient}", f"To: {challenge.reply_address}",
             f"Subject: Re: {SUBJECT_LABEL} {challenge.token_part1}"]
    if challenge.message_id:
        lines.append(f"In-Reply-To: {challenge.message_id}")
    return "\n".join(lines) + "\n\n" + response_body(digest).replace("\r\n", "\n")
