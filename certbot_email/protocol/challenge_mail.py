"""Reading one RFC 8823 challenge mail: its form is checked and what it says is taken out.

A challenge mail is untrusted input (spec §6). ``read_mail`` applies every rule about the form of
the mail, in a fixed order, and raises ``MailRejectedError`` naming the first rule it broke; what
passes becomes a ``ReadMail``. Whether the mail is authentic is ``mail_authenticity``'s question,
whether we wait for it the registry's (``certbot_email.reply_registry``). The header block is
capped and checked on the raw bytes before the stdlib parser sees it, each header is parsed once,
and the body is never parsed here (only its multipart boundaries are counted): judging costs
about the same whatever shape the mail has.
"""
import binascii
import dataclasses
import email
import email.errors
import email.headerregistry
import email.message
import email.parser
import email.policy
import enum
import logging
import re
from typing import Callable, Iterable, Optional, Sequence

import josepy as jose

from certbot_email.protocol import identifiers, rfc8823

logger = logging.getLogger(__name__)

#: A challenge mail is a few kilobytes; anything larger is refused before parsing.
MAX_MAIL_BYTES = 256 * 1024
#: The header block of a challenge mail, Received and ARC lines of many hops included.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_FIELDS = 256
#: One header field, folded lines included (a 4096-bit DKIM-Signature is about 1 KiB).
MAX_FIELD_BYTES = 16 * 1024
#: A field the stdlib's structured parsers read (From, To, Subject, ...): theirs is slow.
MAX_PARSED_FIELD_BYTES = 2 * 1024
#: Addresses (counted as ``@`` and ``,``) in one address field; a CA writes one or two.
MAX_ADDRESSES = 10
MAX_DKIM_SIGNATURES = 8
#: How much of a header block is read to name a mail in the log, whatever its verdict.
ABOUT_BYTES = 16 * 1024
#: Deeper MIME nesting (or more multipart containers) than this is not a CA's challenge mail.
MAX_MIME_DEPTH = 5
#: token-part1 MUST carry at least 128 bits (RFC 8823 §3.1).
MIN_TOKEN_PART1_BYTES = 16

#: A CR not followed by LF: line ends on which the stdlib and dkimpy disagree.
_BARE_CR = re.compile(rb"\r(?!\n)")
#: Where a header field starts: a line that is not a continuation.
_FIELD_START = re.compile(rb"^[^ \t\r\n]", re.MULTILINE)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
#: A multipart container's boundary parameter, wherever in the mail it is declared.
_MIME_BOUNDARY = re.compile(rb"boundary\s*=", re.IGNORECASE)
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+>", re.ASCII)

#: Headers that must not appear twice: a second copy is how a forger hides behind a signature.
SINGLETON_HEADERS = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
    "references", "auto-submitted", "content-type", "content-transfer-encoding", "mime-version",
)
ADDRESS_HEADERS = ("from", "sender", "reply-to", "to", "cc")
#: Headers that must parse without a defect: the ones the verdict and the reply rely on.
FORM_CHECKED_HEADERS = (*ADDRESS_HEADERS, "subject")
#: Every header read here through the stdlib's structured parsers.
PARSED_HEADERS = (*FORM_CHECKED_HEADERS, "message-id", "references", "auto-submitted",
                  "content-type")
#: RFC 6532 allows UTF-8 local parts; the stdlib records that as a defect of its own.
_ALLOWED_DEFECTS = (email.errors.NonASCIILocalPartDefect,)


class Rule(enum.Enum):
    """The rule a challenge mail broke; its value is the message the log shows.

    In the order the rules are applied; README.rst lists them one to one.
    """

    TOO_LARGE = "the mail is larger than a challenge mail can be"
    HEADER_LIMIT = ("the header block is larger, or has more fields, addresses or DKIM "
                    "signatures, than a challenge mail has")
    MALFORMED = "the mail cannot be parsed as RFC 5322"
    NESTED_TOO_DEEP = "the MIME structure is nested too deeply"
    DUPLICATE_HEADER = "a header that may appear once appears more than once"
    LIST_HEADER = "a List-* header shows it came through a mailing list"
    SUBJECT_CHARSET = "an encoded word in the Subject uses a charset other than UTF-8/US-ASCII"
    SUBJECT_CONTROL = "the decoded Subject contains control characters"
    SUBJECT_IS_REPLY = "the Subject is a reply, not a challenge"
    SUBJECT_NOT_CHALLENGE = "the Subject does not start with 'ACME:'"
    TOKEN_SYNTAX = "token-part1 is not base64url"
    TOKEN_TOO_SHORT = "token-part1 carries fewer than 128 bits"
    BAD_FROM = "From is not exactly one address"
    BAD_TO = "To holds no parseable address"
    HEADER_DEFECT = ("an address or Subject header is not well-formed (the parser had to "
                     "repair it, so it is not the header the signer meant)")
    SENDER_MISMATCH = "Sender names another mailbox than From"
    ALREADY_ANSWERED = "this challenge mail was answered already"
    ALREADY_SEEN = "a mail with this token-part1 or Message-ID was judged already"
    NO_LONGER_WAITING = "the challenge for this mailbox is settled; no longer waiting"
    NOT_FOR_US = "To names no mailbox we are waiting on"
    FROM_MISMATCH = "From is not the challenge's 'from' address"
    NOT_AUTO_SUBMITTED = "Auto-Submitted is missing or does not say 'auto-generated'"
    DKIM_MISSING = "there is no DKIM signature"
    DKIM_ALGORITHM = "the DKIM signature uses neither rsa-sha256 nor ed25519-sha256 (RFC 8301)"
    DKIM_DOMAIN = "the DKIM signature's d= is not the From domain"
    DKIM_HEADERS = "the DKIM signature's h= does not cover the headers RFC 8823 requires"
    DKIM_BODY_LENGTH = "the DKIM signature has an l= tag that can leave content unsigned"
    DKIM_KEY_UNAVAILABLE = ("the DKIM key could not be looked up (a DNS failure, not a bad "
                            "signature; the mail is judged again at the next poll)")
    DKIM_NO_KEY = "no DKIM key is published for the signature (or it is revoked)"
    DKIM_TEST_KEY = "the DKIM key is in test mode (t=y), so the mail counts as unsigned"
    DKIM_KEY_TOO_SMALL = "the DKIM key is an RSA key shorter than 1024 bits (RFC 8301)"
    DKIM_INVALID = "no DKIM signature verifies"
    SMIME_INVALID = "the S/MIME signature does not verify"
    SMIME_SIGNER = "the S/MIME signer's certificate is not for the From address"
    SMIME_HEADER_PROTECTION = ("the S/MIME signature does not protect the headers "
                               "(no message/rfc822 copy that matches them)")
    AMBIGUOUS = ("two challenge mails with different token-part1 passed for one mailbox; "
                 "neither is answered")


#: Rules that say nothing against the mail: not a challenge, or one already dealt with.
#: Their verdicts are logged at INFO; every other refusal is a warning.
ROUTINE_RULES = frozenset({Rule.SUBJECT_NOT_CHALLENGE, Rule.NOT_FOR_US, Rule.NO_LONGER_WAITING,
                           Rule.ALREADY_ANSWERED, Rule.ALREADY_SEEN})
#: A mail refused by these may still be genuine: it is judged again at the next poll.
RETRY_RULES = frozenset({Rule.DKIM_KEY_UNAVAILABLE})


class Relaxation(enum.Enum):
    """A documented departure from the strict rules, for CAs that do not follow RFC 8823."""

    #: Accept a mail without a valid, aligned, covering DKIM signature (CA does not sign).
    UNSIGNED = "unsigned"
    #: Accept a mail without an Auto-Submitted header (one that says otherwise is still refused).
    NO_AUTO_SUBMITTED = "no-auto-submitted"


#: What proves a mail authentic; all of it is waived by ``Relaxation.UNSIGNED``.
AUTHENTICITY_RULES = frozenset({
    Rule.DKIM_MISSING, Rule.DKIM_ALGORITHM, Rule.DKIM_DOMAIN, Rule.DKIM_HEADERS,
    Rule.DKIM_BODY_LENGTH, Rule.DKIM_KEY_UNAVAILABLE, Rule.DKIM_NO_KEY, Rule.DKIM_TEST_KEY,
    Rule.DKIM_KEY_TOO_SMALL, Rule.DKIM_INVALID, Rule.SMIME_INVALID, Rule.SMIME_SIGNER,
    Rule.SMIME_HEADER_PROTECTION})

#: Each relaxation waives exactly these rules.
_WAIVED_RULES: dict[Relaxation, frozenset[Rule]] = {
    Relaxation.UNSIGNED: AUTHENTICITY_RULES,
    Relaxation.NO_AUTO_SUBMITTED: frozenset({Rule.NOT_AUTO_SUBMITTED}),
}

STRICT: frozenset[Relaxation] = frozenset()

#: What a pasted Subject cannot show, so a human checked it instead (manual mode).
UNCHECKED_IN_A_SUBJECT = frozenset({Rule.NOT_AUTO_SUBMITTED, Rule.FROM_MISMATCH, Rule.NOT_FOR_US,
                                    Rule.DKIM_MISSING})


def printable(value: object, limit: int = 160) -> str:
    """``value`` quoted for a log line: control characters and undecodable bytes escaped."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _escape(text: str) -> str:
    """Text with every non-printable character (CR, LF, NUL, surrogates) written as an escape."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class MailRejectedError(Exception):
    """The challenge mail broke ``rule``; it must not be answered.

    ``about`` names the mail (its Message-ID and From, as far as they could be read);
    ``token_part1`` and ``sender`` are what its Subject and From say, when they could be read,
    so that even a refused mail can be remembered; ``identifier`` is set once the mail is known
    to be for one of the challenges we wait on.
    """

    def __init__(self, rule: Rule, detail: str = "", identifier: Optional[str] = None) -> None:
        self.rule = rule
        self.detail = _escape(detail)
        self.about = ""
        self.token_part1: Optional[str] = None
        self.sender: Optional[str] = None
        self.identifier = identifier
        super().__init__(f"{rule.value}" + (f" ({self.detail})" if self.detail else ""))


def waive(relaxations: Iterable[Relaxation], rule: Rule, detail: str) -> Rule:
    """Let a broken rule pass if a relaxation covers it, loudly; otherwise reject."""
    for relaxation in relaxations:
        if rule in _WAIVED_RULES[relaxation]:
            logger.warning("Relaxation %r lets a challenge mail through although %s%s",
                           relaxation.value, rule.value, f" ({_escape(detail)})" if detail else "")
            return rule
    raise MailRejectedError(rule, detail)


@dataclasses.dataclass(frozen=True)
class ExpectedChallenge:
    """A challenge we wait on: the mailbox being certified and the CA's ``from`` address."""

    identifier: str
    sender: str


@dataclasses.dataclass(frozen=True)
class ChallengeMail:
    """What a challenge mail that passed every rule says, enough to build the reply."""

    sender: str
    recipient: str
    token_part1: str
    message_id: Optional[str]
    reply_to: Optional[str]
    references: tuple[str, ...]
    waived: frozenset[Rule] = frozenset()

    @property
    def reply_address(self) -> str:
        """The reply goes to Reply-To if the CA set one, else to From (RFC 8823 §3.2 item 3)."""
        return self.reply_to or self.sender


@dataclasses.dataclass(frozen=True)
class ReadMail:
    """A mail whose form passed every rule, with what its headers say (authenticity unknown)."""

    #: The header block, parsed (no body): what an S/MIME protected copy is compared with.
    headers: email.message.EmailMessage
    sender: str
    recipients: tuple[str, ...]
    token_part1: str
    message_id: Optional[str]
    reply_to: Optional[str]
    references: tuple[str, ...]
    #: The Auto-Submitted keyword in lower case; None when the header is absent.
    auto_submitted: Optional[str]
    smime_signed: bool
    #: The mail's Message-ID and From for log lines, quoted.
    about: str

    @property
    def sender_domain(self) -> str:
        """The A-label, lower-case domain of From."""
        return identifiers.normalize_mailbox(self.sender).rpartition("@")[2]


def same_mailbox(left: str, right: str) -> bool:
    """Local parts compare exactly, domains case-insensitively as A-labels (spec A9)."""
    try:
        return identifiers.normalize_mailbox(left) == identifiers.normalize_mailbox(right)
    except ValueError:
        return False


def read_mail(raw: bytes) -> ReadMail:
    """The form rules, in order; the first one broken raises ``MailRejectedError``."""
    about = _about(raw)
    try:
        block = _header_block(raw)
        _check_field_limits(block)
        _check_bytes(block)
        check_mime_containers(raw)
        return _read(_parse_header_block(block.decode("utf-8")), about)
    except MailRejectedError as rejection:
        rejection.about = about
        raise


def _header_block(raw: bytes) -> bytes:
    """The header block, up to the first empty line, within the size caps."""
    if len(raw) > MAX_MAIL_BYTES:
        raise MailRejectedError(Rule.TOO_LARGE, f"{len(raw)} bytes, limit {MAX_MAIL_BYTES}")
    blank = _BLANK_LINE.search(raw, 0, MAX_HEADER_BYTES + 4)
    block = raw[:blank.start()] if blank else raw
    if len(block) > MAX_HEADER_BYTES:
        raise MailRejectedError(Rule.HEADER_LIMIT, f"header block over {MAX_HEADER_BYTES} bytes")
    return block


def _check_bytes(block: bytes) -> None:
    """No bare CR, and UTF-8 throughout (RFC 6532 allows nothing else 8-bit)."""
    if _BARE_CR.search(block):
        # The stdlib ends a header line there and dkimpy does not: a header hidden behind a bare
        # CR would be unsigned to DKIM yet real to us (a smuggled Reply-To, say).
        raise MailRejectedError(Rule.MALFORMED, "bare CR in the header block")
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MailRejectedError(Rule.MALFORMED, f"8-bit bytes in the header block are not "
                                                f"UTF-8 (at byte {error.start})") from None


def _check_field_limits(block: bytes) -> None:
    """Field count, sizes, addresses and signatures on the raw bytes, so that no parser ever
    reads a monster."""
    starts: list[int] = []
    for match in _FIELD_START.finditer(block):
        starts.append(match.start())
        if len(starts) > MAX_HEADER_FIELDS:
            raise MailRejectedError(Rule.HEADER_LIMIT, f"over {MAX_HEADER_FIELDS} header fields")
    signatures = 0
    for start, end in zip(starts, [*starts[1:], len(block)], strict=False):
        field = block[start:end]
        name = field.split(b":", 1)[0].strip().lower().decode("utf-8", "replace")
        if name == "dkim-signature":
            signatures += 1
            if signatures > MAX_DKIM_SIGNATURES:
                raise MailRejectedError(Rule.HEADER_LIMIT,
                                        f"over {MAX_DKIM_SIGNATURES} DKIM-Signature headers")
        limit = MAX_PARSED_FIELD_BYTES if name in PARSED_HEADERS else MAX_FIELD_BYTES
        if len(field) > limit:
            raise MailRejectedError(Rule.HEADER_LIMIT, f"{name} is {len(field)} bytes, "
                                                       f"limit {limit}")
        if name in ADDRESS_HEADERS and max(field.count(b"@"), field.count(b",")) > MAX_ADDRESSES:
            raise MailRejectedError(Rule.HEADER_LIMIT,
                                    f"{name} lists over {MAX_ADDRESSES} addresses")


def check_mime_containers(raw: bytes) -> None:
    """At most ``MAX_MIME_DEPTH`` multipart containers, counted on the bytes: the body is never
    parsed for DKIM, and where it is (S/MIME) the parser's cost grows with the nesting."""
    for count, _match in enumerate(_MIME_BOUNDARY.finditer(raw), 1):
        if count > MAX_MIME_DEPTH:
            raise MailRejectedError(Rule.NESTED_TOO_DEEP,
                                    f"over {MAX_MIME_DEPTH} multipart boundaries")


def _parse_header_block(text: str) -> email.message.EmailMessage:
    """The header block parsed by the modern policy (encoded words decoded, lines unfolded)."""
    try:
        message = email.parser.Parser(policy=email.policy.default).parsestr(
            text + "\r\n\r\n", headersonly=True)
    except Exception as error:  # noqa: BLE001 - the stdlib parser raises many types on junk
        raise MailRejectedError(Rule.MALFORMED, type(error).__name__) from None
    assert isinstance(message, email.message.EmailMessage)
    if message.defects or message.get_unixfrom() or message.get_payload():
        # A line that is no header (dkimpy would refuse it), a leading continuation line, or
        # an mbox "From " line: the header block is not what a signer would have signed.
        found = [type(defect).__name__ for defect in message.defects]
        raise MailRejectedError(Rule.MALFORMED, ", ".join(found) or "not a header line")
    return message


def _about(raw: bytes) -> str:
    """``Message-ID '<…>', From '…'`` as written, for the log lines about this mail: read from
    the header block's first ``ABOUT_BYTES`` without judging (the old policy keeps values as
    plain text), so that even a refused monster is named cheaply."""
    blank = _BLANK_LINE.search(raw, 0, ABOUT_BYTES)
    head = raw[:blank.start()] if blank else raw[:ABOUT_BYTES]
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        found = {name.lower(): str(value) for name, value in reversed(headers.items())}
    except Exception:  # noqa: BLE001 - only a log line is at stake
        found = {}
    return (f"Message-ID {printable(found.get('message-id', '').strip() or '(none)')}, "
            f"From {printable(found.get('from', '').strip() or '(none)')}")


def _read(message: email.message.EmailMessage, about: str) -> ReadMail:
    """Structure, Subject, addresses; what token-part1 the Subject holds goes onto any
    rejection, so that a copy of a refused mail is known for one."""
    parsed = _ParsedHeaders(message)
    token_seen, sender_seen = _try(token_part1_from_subject, parsed), _try(_single_from, parsed)
    try:
        _check_structure(message)
        token_part1 = token_part1_from_subject(parsed)
        sender = _single_from(parsed)
        recipients = parsed.addresses("to")
        if not recipients:
            raise MailRejectedError(Rule.BAD_TO, printable(parsed.text("to")))
        parsed.check_defects()
        _check_sender(parsed, sender)
        reply_to = parsed.addresses("reply-to")
        auto_submitted = parsed.text("auto-submitted")
        return ReadMail(
            headers=message, sender=sender, recipients=tuple(recipients),
            token_part1=token_part1, message_id=_message_id(parsed),
            reply_to=reply_to[0] if reply_to else None,
            references=tuple(ref for ref in (parsed.text("references") or "").split()
                             if _MESSAGE_ID.fullmatch(ref)),
            auto_submitted=None if auto_submitted is None
            else auto_submitted.split(";", 1)[0].strip().lower(),
            smime_signed=parsed.smime_signed(), about=about)
    except MailRejectedError as rejection:
        rejection.token_part1, rejection.sender = token_seen, sender_seen
        raise


def _try(read: Callable[["_ParsedHeaders"], str], parsed: "_ParsedHeaders") -> Optional[str]:
    """What ``read`` finds, or None where it would refuse the mail."""
    try:
        return read(parsed)
    except MailRejectedError:
        return None


def _check_structure(message: email.message.EmailMessage) -> None:
    """No repeated singleton headers, no mailing-list headers."""
    names = [name.lower() for name in message.keys()]
    for name in SINGLETON_HEADERS:
        if names.count(name) > 1:
            raise MailRejectedError(Rule.DUPLICATE_HEADER, name)
    listed = sorted({name for name in names if name.startswith("list-")})
    if listed:
        raise MailRejectedError(Rule.LIST_HEADER, ", ".join(listed))


class _ParsedHeaders:
    """The headers the rules read, each parsed by the stdlib once, on first use."""

    def __init__(self, message: email.message.EmailMessage) -> None:
        self.message = message
        self._parsed: dict[str, Optional[email.headerregistry.BaseHeader]] = {}

    def get(self, name: str) -> Optional[email.headerregistry.BaseHeader]:
        """The parsed header, or None; a parser failure counts as a malformed mail."""
        if name not in self._parsed:
            try:
                self._parsed[name] = self.message.get(name)
            except Exception as error:  # noqa: BLE001 - header parsing raises many types
                raise MailRejectedError(Rule.MALFORMED,
                                        f"{name}: {type(error).__name__}") from None
        return self._parsed[name]

    def text(self, name: str) -> Optional[str]:
        """The decoded value, or None when the header is absent."""
        header = self.get(name)
        return None if header is None else str(header)

    def raw(self, name: str) -> str:
        """The value as it was on the wire, before encoded words are decoded."""
        for key, value in self.message.raw_items():
            if key.lower() == name:
                return str(value)
        return ""

    def addresses(self, name: str) -> list[str]:
        """The addr-specs of an address header; malformed entries are left out."""
        header = self.get(name)
        found = getattr(header, "addresses", ()) if header is not None else ()
        return [address.addr_spec for address in found if address.username and address.domain]

    def check_defects(self) -> None:
        """An address or Subject header the parser had to repair is refused (HEADER_DEFECT)."""
        for name in FORM_CHECKED_HEADERS:
            header = self.get(name)
            defects = [defect for defect in getattr(header, "defects", ())
                       if not isinstance(defect, _ALLOWED_DEFECTS)]
            if defects:
                raise MailRejectedError(Rule.HEADER_DEFECT, f"{name}: {defects[0]}; "
                                                            f"{printable(self.raw(name))}")

    def smime_signed(self) -> bool:
        """multipart/signed with a PKCS #7 signature, or signed-data application/pkcs7-mime."""
        header = self.get("content-type")
        content_type = getattr(header, "content_type", "text/plain")
        if content_type == "multipart/signed":
            protocol = getattr(header, "params", {}).get("protocol", "")
            return protocol in ("application/pkcs7-signature", "application/x-pkcs7-signature")
        return content_type in ("application/pkcs7-mime", "application/x-pkcs7-mime")


def token_part1_from_subject(parsed: "_ParsedHeaders") -> str:
    """token-part1 from ``ACME: <token-part1>``, after encoded words and folding are undone."""
    for charset in rfc8823.encoded_word_charsets(parsed.raw("subject")):
        if charset.lower() not in rfc8823.ALLOWED_SUBJECT_CHARSETS:
            raise MailRejectedError(Rule.SUBJECT_CHARSET, printable(charset))
    subject = parsed.text("subject") or ""
    if any(ord(char) < 0x20 and char != "\t" or ord(char) == 0x7F for char in subject):
        raise MailRejectedError(Rule.SUBJECT_CONTROL, printable(subject, 80))
    subject = subject.lstrip()
    parts = rfc8823.split_subject(subject)
    if parts is None or parts.prefix:
        rule = Rule.SUBJECT_NOT_CHALLENGE if parts is None else Rule.SUBJECT_IS_REPLY
        raise MailRejectedError(rule, printable(subject, 80))
    token = parts.token_part1
    if not rfc8823.BASE64URL.fullmatch(token):
        raise MailRejectedError(Rule.TOKEN_SYNTAX, printable(token, 80))
    try:
        size = len(jose.b64decode(token.rstrip("=")))
    except (binascii.Error, ValueError):
        raise MailRejectedError(Rule.TOKEN_SYNTAX, printable(token, 80)) from None
    if size < MIN_TOKEN_PART1_BYTES:
        raise MailRejectedError(Rule.TOKEN_TOO_SHORT, f"{size} bytes")
    return token


def _single_from(parsed: "_ParsedHeaders") -> str:
    """The one mailbox in From; several, or an unparsable one, is a rejection."""
    senders = parsed.addresses("from")
    if len(senders) != 1 or len(getattr(parsed.get("from"), "addresses", ())) != 1:
        raise MailRejectedError(Rule.BAD_FROM, printable(parsed.text("from")))
    return senders[0]


def _check_sender(parsed: "_ParsedHeaders", sender: str) -> None:
    """A Sender header, if any, names the From mailbox: nobody else sent it on the CA's behalf."""
    if parsed.get("sender") is None:
        return
    named = parsed.addresses("sender")
    if len(named) != 1 or not same_mailbox(named[0], sender):
        raise MailRejectedError(Rule.SENDER_MISMATCH,
                                f"Sender {printable(parsed.text('sender'))}, From {sender!r}")


def _message_id(parsed: "_ParsedHeaders") -> Optional[str]:
    """The Message-ID if it is a plain ``<id>``; anything else is not echoed into the reply."""
    value = (parsed.text("message-id") or "").strip()
    return value if _MESSAGE_ID.fullmatch(value) else None


def challenge_from_subject(subject: str, expected: ExpectedChallenge) -> ChallengeMail:
    """Manual mode: the challenge a pasted Subject names; a human vouches for everything else."""
    if "\r" in subject or "\n" in subject:
        raise MailRejectedError(Rule.SUBJECT_CONTROL, printable(subject, 80))
    message = _parse_header_block(f"Subject: {subject.strip()}")
    return ChallengeMail(sender=expected.sender, recipient=expected.identifier,
                         token_part1=token_part1_from_subject(_ParsedHeaders(message)),
                         message_id=None, reply_to=None, references=(),
                         waived=UNCHECKED_IN_A_SUBJECT)


def answer_keys(token_part1: str, message_id: Optional[str]) -> list[str]:
    """What identifies an answered challenge mail: its token-part1, and its Message-ID."""
    return [f"token-part1:{token_part1}"] + ([f"message-id:{message_id}"] if message_id else [])


def clashes(passed: Sequence[ChallengeMail]) -> dict[str, list[ChallengeMail]]:
    """Recipients for which mails with different token-part1 passed: none of them is answered.

    The same token-part1 twice is one challenge; two different ones for one mailbox mean that
    someone besides the CA got a mail through, and nothing tells which one the CA waits on.
    """
    by_recipient: dict[str, dict[str, ChallengeMail]] = {}
    for mail in passed:
        by_recipient.setdefault(mail.recipient, {}).setdefault(mail.token_part1, mail)
    return {recipient: list(tokens.values()) for recipient, tokens in by_recipient.items()
            if len(tokens) > 1}
