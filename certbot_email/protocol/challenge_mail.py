"""Reading and judging an RFC 8823 challenge mail: it is rejected with a reason, or yields a value.

A challenge mail is untrusted input (spec §6). ``ChallengeMailJudge.judge`` applies every rule
in a fixed order and raises ``MailRejectedError`` naming the first rule that failed; only a
mail that passes all of them becomes a ``ChallengeMail``. Relaxations are named choices
(``Relaxation``), each logged as a warning every time it lets a mail through.
"""
import binascii
import dataclasses
import email
import email.message
import email.policy
import enum
import logging
import re
import threading
from typing import Callable, Iterable, Optional

import dkim
import josepy as jose

from certbot_email.protocol import identifiers, rfc8823

logger = logging.getLogger(__name__)

#: A challenge mail is a few kilobytes; anything larger is refused before parsing.
MAX_MAIL_BYTES = 256 * 1024
#: A CR not followed by LF: line ends on which the stdlib and dkimpy disagree.
_BARE_CR = re.compile(rb"\r(?!\n)")
#: Deeper MIME nesting than this is not a CA's challenge mail.
MAX_MIME_DEPTH = 5
#: token-part1 MUST carry at least 128 bits (RFC 8823 §3.1).
MIN_TOKEN_PART1_BYTES = 16

#: Headers that must not appear twice: a second copy is how a forger hides behind a signature.
SINGLETON_HEADERS = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
    "references", "auto-submitted", "content-type", "content-transfer-encoding", "mime-version",
)

_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+>", re.ASCII)

#: Headers an S/MIME header-protected copy must repeat exactly: the ones the reply relies on.
PROTECTED_HEADERS = ("from", "to", "cc", "reply-to", "subject", "message-id", "auto-submitted")

#: Looks up the TXT record of a DKIM key (``selector._domainkey.domain.``), as dkimpy calls it.
TxtLookup = Callable[..., Optional[bytes]]


@dataclasses.dataclass(frozen=True)
class SmimeSignature:
    """A verified S/MIME signature: the signer certificate's addresses and what it signed."""

    signer_addresses: tuple[str, ...]
    content: bytes


#: Verifies an S/MIME-signed mail (signature and chain); ``ValueError`` says why it does not.
SmimeVerifier = Callable[[bytes], SmimeSignature]


class Rule(enum.Enum):
    """The rule a challenge mail broke; its value is the message the log shows."""

    TOO_LARGE = "the mail is larger than a challenge mail can be"
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
    NOT_AUTO_SUBMITTED = "there is no 'Auto-Submitted: auto-generated' header"
    BAD_FROM = "From is not exactly one address"
    BAD_TO = "To holds no parseable address"
    NOT_FOR_US = "To names no mailbox we are waiting on"
    FROM_MISMATCH = "From is not the challenge's 'from' address"
    ALREADY_ANSWERED = "this challenge mail was answered already"
    DKIM_MISSING = "there is no DKIM signature"
    DKIM_INVALID = "no DKIM signature verifies"
    DKIM_DOMAIN = "the DKIM signature's d= is not the From domain"
    DKIM_HEADERS = "the DKIM signature's h= does not cover the headers RFC 8823 requires"
    DKIM_BODY_LENGTH = "the DKIM signature has an l= tag that can leave content unsigned"
    SMIME_INVALID = "the S/MIME signature does not verify"
    SMIME_SIGNER = "the S/MIME signer's certificate is not for the From address"
    SMIME_HEADER_PROTECTION = ("the S/MIME signature does not protect the headers "
                               "(no message/rfc822 copy that matches them)")


class Relaxation(enum.Enum):
    """A documented departure from the strict rules, for CAs that do not follow RFC 8823."""

    #: Accept a mail without a valid, aligned, covering DKIM signature (CA does not sign).
    UNSIGNED = "unsigned"
    #: Accept a mail without ``Auto-Submitted: auto-generated``.
    NO_AUTO_SUBMITTED = "no-auto-submitted"


#: Each relaxation waives exactly these rules.
_WAIVED_RULES: dict[Relaxation, frozenset[Rule]] = {
    Relaxation.UNSIGNED: frozenset({Rule.DKIM_MISSING, Rule.DKIM_INVALID, Rule.DKIM_DOMAIN,
                                    Rule.DKIM_HEADERS, Rule.DKIM_BODY_LENGTH, Rule.SMIME_INVALID,
                                    Rule.SMIME_SIGNER, Rule.SMIME_HEADER_PROTECTION}),
    Relaxation.NO_AUTO_SUBMITTED: frozenset({Rule.NOT_AUTO_SUBMITTED}),
}

STRICT: frozenset[Relaxation] = frozenset()

#: What a pasted Subject cannot show, so a human checked it instead (manual mode).
UNCHECKED_IN_A_SUBJECT = frozenset({Rule.NOT_AUTO_SUBMITTED, Rule.FROM_MISMATCH, Rule.NOT_FOR_US,
                                    Rule.DKIM_MISSING})


class MailRejectedError(Exception):
    """The challenge mail broke ``rule``; it must not be answered."""

    def __init__(self, rule: Rule, detail: str = "") -> None:
        self.rule = rule
        self.detail = detail
        super().__init__(f"{rule.value}" + (f" ({detail})" if detail else ""))


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


def _same_mailbox(left: str, right: str) -> bool:
    """Local parts compare exactly, domains case-insensitively as A-labels (spec A9)."""
    try:
        return identifiers.normalize_mailbox(left) == identifiers.normalize_mailbox(right)
    except identifiers.MailboxError:
        return False


def _domain_of(address: str) -> str:
    """The A-label, lower-case domain of an address."""
    return identifiers.normalize_mailbox(address).rpartition("@")[2]


def _parse(raw: bytes) -> email.message.EmailMessage:
    """Parse with the modern policy, which decodes encoded words and unfolds headers."""
    if len(raw) > MAX_MAIL_BYTES:
        raise MailRejectedError(Rule.TOO_LARGE, f"{len(raw)} bytes, limit {MAX_MAIL_BYTES}")
    header_block = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    if _BARE_CR.search(header_block):
        # The stdlib ends a header line there and dkimpy does not: a header hidden behind a bare
        # CR would be unsigned to DKIM yet real to us (a smuggled Reply-To, say).
        raise MailRejectedError(Rule.MALFORMED, "bare CR in the header block")
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception as error:  # noqa: BLE001 - the stdlib parser raises many types on junk
        raise MailRejectedError(Rule.MALFORMED, type(error).__name__) from None
    assert isinstance(message, email.message.EmailMessage)
    return message


def _check_structure(message: email.message.EmailMessage) -> None:
    """No repeated singleton headers, no mailing-list headers, no deep MIME nesting."""
    names = [name.lower() for name in message.keys()]
    for name in SINGLETON_HEADERS:
        if names.count(name) > 1:
            raise MailRejectedError(Rule.DUPLICATE_HEADER, name)
    listed = sorted({name for name in names if name.startswith("list-")})
    if listed:
        raise MailRejectedError(Rule.LIST_HEADER, ", ".join(listed))
    if _mime_depth(message) > MAX_MIME_DEPTH:
        raise MailRejectedError(Rule.NESTED_TOO_DEEP, f"limit {MAX_MIME_DEPTH}")


def _mime_depth(part: email.message.Message, depth: int = 0) -> int:
    """How deep multiparts nest, stopping as soon as the limit is passed."""
    if depth > MAX_MIME_DEPTH or not part.is_multipart():
        return depth
    payload = part.get_payload()
    children = [child for child in (payload if isinstance(payload, list) else [payload])
                if isinstance(child, email.message.Message)]
    return max([_mime_depth(child, depth + 1) for child in children] or [depth + 1])


def _header(message: email.message.EmailMessage, name: str) -> Optional[str]:
    """A decoded header value, or None; parse errors count as a malformed mail."""
    try:
        value = message.get(name)
    except Exception as error:  # noqa: BLE001 - header parsing raises many types on junk
        raise MailRejectedError(Rule.MALFORMED, f"{name}: {type(error).__name__}") from None
    return None if value is None else str(value)


def _raw_header(message: email.message.EmailMessage, name: str) -> str:
    """The header as it was on the wire, before encoded words are decoded."""
    for key, value in message.raw_items():
        if key.lower() == name:
            return str(value)
    return ""


def token_part1_from_subject(message: email.message.EmailMessage) -> str:
    """token-part1 from ``ACME: <token-part1>``, after encoded words and folding are undone."""
    for charset in rfc8823.encoded_word_charsets(_raw_header(message, "subject")):
        if charset.lower() not in rfc8823.ALLOWED_SUBJECT_CHARSETS:
            raise MailRejectedError(Rule.SUBJECT_CHARSET, repr(charset))
    subject = _header(message, "subject") or ""
    if any(ord(char) < 0x20 and char != "\t" or ord(char) == 0x7F for char in subject):
        raise MailRejectedError(Rule.SUBJECT_CONTROL, repr(subject[:80]))
    subject = subject.lstrip()
    parts = rfc8823.split_subject(subject)
    if parts is None or parts.prefix:
        rule = Rule.SUBJECT_NOT_CHALLENGE if parts is None else Rule.SUBJECT_IS_REPLY
        raise MailRejectedError(rule, repr(subject[:80]))
    token = parts.token_part1
    if not rfc8823.BASE64URL.fullmatch(token):
        raise MailRejectedError(Rule.TOKEN_SYNTAX, repr(token[:80]))
    try:
        size = len(jose.b64decode(token.rstrip("=")))
    except (binascii.Error, ValueError):
        raise MailRejectedError(Rule.TOKEN_SYNTAX, repr(token[:80])) from None
    if size < MIN_TOKEN_PART1_BYTES:
        raise MailRejectedError(Rule.TOKEN_TOO_SHORT, f"{size} bytes")
    return token


def _message_id(message: email.message.EmailMessage) -> Optional[str]:
    """The Message-ID if it is a plain ``<id>``; anything else is not echoed into the reply."""
    value = (_header(message, "message-id") or "").strip()
    return value if _MESSAGE_ID.fullmatch(value) else None


def challenge_from_subject(subject: str, expected: ExpectedChallenge) -> ChallengeMail:
    """Manual mode: the challenge a pasted Subject names; a human vouches for everything else."""
    if "\r" in subject or "\n" in subject:
        raise MailRejectedError(Rule.SUBJECT_CONTROL, repr(subject[:80]))
    message = _parse(f"Subject: {subject.strip()}\r\n\r\n".encode())
    return ChallengeMail(sender=expected.sender, recipient=expected.identifier,
                         token_part1=token_part1_from_subject(message), message_id=None,
                         reply_to=None, references=(), waived=UNCHECKED_IN_A_SUBJECT)


def _is_smime_signed(message: email.message.EmailMessage) -> bool:
    """multipart/signed with a PKCS #7 signature, or signed-data application/pkcs7-mime."""
    if message.get_content_type() == "multipart/signed":
        return message.get_param("protocol", "") in ("application/pkcs7-signature",
                                                     "application/x-pkcs7-signature")
    return message.get_content_type() in ("application/pkcs7-mime", "application/x-pkcs7-mime")


def _is_auto_generated(message: email.message.EmailMessage) -> bool:
    """``Auto-Submitted: auto-generated`` with any parameters (RFC 3834 §5)."""
    value = _header(message, "auto-submitted") or ""
    return value.split(";", 1)[0].strip().lower() == "auto-generated"


def _addresses(message: email.message.EmailMessage, name: str) -> list[str]:
    """The addr-specs of an address header; malformed entries are left out."""
    try:
        header = message.get(name)
        found = list(header.addresses) if header is not None else []
    except Exception as error:  # noqa: BLE001 - header parsing raises many types on junk
        raise MailRejectedError(Rule.MALFORMED, f"{name}: {type(error).__name__}") from None
    return [address.addr_spec for address in found if address.username and address.domain]


def _single_from(message: email.message.EmailMessage) -> str:
    """The one mailbox in From; several, or an unparsable one, is a rejection."""
    senders = _addresses(message, "from")
    if len(senders) != 1 or len(message["from"].addresses) != 1:
        raise MailRejectedError(Rule.BAD_FROM, repr(_header(message, "from")))
    return senders[0]


def answer_keys(token_part1: str, message_id: Optional[str]) -> list[str]:
    """What identifies an answered challenge mail: its token-part1, and its Message-ID."""
    return [f"token-part1:{token_part1}"] + ([f"message-id:{message_id}"] if message_id else [])


class ChallengeMailJudge:
    """Decides which mails are challenges we wait on, and remembers which were answered.

    Thread-safe: a background worker judges while the plugin asks what is still pending.
    """

    def __init__(self, relaxations: Iterable[Relaxation] = STRICT, *, txt_lookup: TxtLookup,
                 answered: Iterable[str] = (),
                 smime_verifier: Optional[SmimeVerifier] = None) -> None:
        """``txt_lookup`` fetches DKIM keys (the transport layer's, so no DNS happens here);
        ``answered``: earlier runs' ``answer_keys``; ``smime_verifier`` admits S/MIME proof."""
        self.relaxations = frozenset(relaxations)
        self._txt_lookup = txt_lookup
        self._smime_verifier = smime_verifier
        self._expected: list[ExpectedChallenge] = []
        self._answered: set[str] = set(answered)
        self._lock = threading.Lock()

    def expect(self, challenge: ExpectedChallenge) -> None:
        """Start waiting for a challenge mail to ``challenge.identifier``."""
        with self._lock:
            self._expected.append(challenge)

    def pending(self) -> list[ExpectedChallenge]:
        """Challenges still waiting for their mail."""
        with self._lock:
            return list(self._expected)

    def judge(self, raw: bytes) -> ChallengeMail:
        """The challenge a mail carries, or ``MailRejectedError`` naming the rule it broke."""
        message = _parse(raw)
        _check_structure(message)
        token_part1 = token_part1_from_subject(message)
        waived: set[Rule] = set()
        if not _is_auto_generated(message):
            waived.add(self._waive(Rule.NOT_AUTO_SUBMITTED, ""))
        sender = _single_from(message)
        recipients = _addresses(message, "to")
        if not recipients:
            raise MailRejectedError(Rule.BAD_TO, repr(_header(message, "to")))
        message_id = _message_id(message)
        with self._lock:
            if self._answered.intersection(answer_keys(token_part1, message_id)):
                raise MailRejectedError(Rule.ALREADY_ANSWERED, message_id or token_part1)
            expected = self._match(sender, recipients)
        try:
            self._check_authentic(raw, message, sender)
        except MailRejectedError as rejection:
            waived.add(self._waive(rejection.rule, rejection.detail))
        reply_to = _addresses(message, "reply-to")
        references = [ref for ref in (_header(message, "references") or "").split()
                      if _MESSAGE_ID.fullmatch(ref)]
        return ChallengeMail(
            sender=sender, recipient=expected.identifier, token_part1=token_part1,
            message_id=message_id, reply_to=reply_to[0] if reply_to else None,
            references=tuple(references), waived=frozenset(waived))

    def mark_answered(self, mail: ChallengeMail) -> None:
        """Never answer this mail, its token-part1 or its mailbox's challenge again."""
        with self._lock:
            self._answered.update(answer_keys(mail.token_part1, mail.message_id))
            self._expected = [challenge for challenge in self._expected
                              if not _same_mailbox(challenge.identifier, mail.recipient)]

    def _match(self, sender: str, recipients: list[str]) -> ExpectedChallenge:
        """The pending challenge this mail is for; the caller holds the lock."""
        addressed = [challenge for challenge in self._expected
                     if any(_same_mailbox(challenge.identifier, to) for to in recipients)]
        if not addressed:
            raise MailRejectedError(Rule.NOT_FOR_US, ", ".join(recipients))
        for challenge in addressed:
            if _same_mailbox(challenge.sender, sender):
                return challenge
        raise MailRejectedError(Rule.FROM_MISMATCH,
                                f"{sender!r}, expected {addressed[0].sender!r}")

    def _waive(self, rule: Rule, detail: str) -> Rule:
        """Let a broken rule pass if a relaxation covers it, loudly; otherwise reject."""
        for relaxation in self.relaxations:
            if rule in _WAIVED_RULES[relaxation]:
                logger.warning("Relaxation %r lets a challenge mail through although %s%s",
                               relaxation.value, rule.value, f" ({detail})" if detail else "")
                return rule
        raise MailRejectedError(rule, detail)

    def _check_authentic(self, raw: bytes, message: email.message.EmailMessage,
                         sender: str) -> None:
        """DKIM, or for an S/MIME-signed mail when trust anchors are set, S/MIME (§3.1 item 6)."""
        if self._smime_verifier is not None and _is_smime_signed(message):
            try:
                self._check_dkim(raw, sender)
            except MailRejectedError:
                self._check_smime(self._smime_verifier, raw, message, sender)
            return
        self._check_dkim(raw, sender)

    @staticmethod
    def _check_smime(verifier: SmimeVerifier, raw: bytes, message: email.message.EmailMessage,
                     sender: str) -> None:
        """Signature and chain verify, the signer is From, and a signed copy repeats the headers."""
        try:
            signature = verifier(raw)
        except ValueError as error:
            raise MailRejectedError(Rule.SMIME_INVALID, str(error)) from None
        if not any(_same_mailbox(address, sender) for address in signature.signer_addresses):
            raise MailRejectedError(Rule.SMIME_SIGNER,
                                    ", ".join(signature.signer_addresses) or "none")
        signed = _parse(signature.content)
        inner = signed.get_payload()
        if signed.get_content_type() != "message/rfc822" or not isinstance(inner, list) \
                or not isinstance(inner[0], email.message.Message):
            raise MailRejectedError(Rule.SMIME_HEADER_PROTECTION,
                                    f"signed content is {signed.get_content_type()}")
        for name in PROTECTED_HEADERS:
            outer_values = [str(value) for value in message.get_all(name, [])]
            inner_values = [str(value) for value in inner[0].get_all(name, [])]
            if outer_values != inner_values:
                raise MailRejectedError(Rule.SMIME_HEADER_PROTECTION, f"{name} differs")

    def _check_dkim(self, raw: bytes, sender: str) -> None:
        """Some DKIM signature verifies, is aligned with From, covers the RFC's headers, no l=."""
        verifier = dkim.DKIM(raw, logger=logging.getLogger("dkim"))
        signatures = rfc8823.dkim_signatures(verifier.headers)
        if not signatures:
            raise MailRejectedError(Rule.DKIM_MISSING)
        from_domain = _domain_of(sender)
        failures: list[MailRejectedError] = []
        for index, signature in enumerate(signatures):
            try:
                self._check_signature(verifier, index, signature, from_domain)
                return
            except MailRejectedError as failure:
                failures.append(failure)
        raise max(failures, key=lambda failure: _DKIM_RULE_ORDER.index(failure.rule))

    def _check_signature(self, verifier: dkim.DKIM, index: int, signature: bytes,
                         from_domain: str) -> None:
        """One DKIM-Signature header against every rule; raises the first it breaks."""
        try:
            tags = rfc8823.DkimTags.from_fields(dkim.util.parse_tag_value(signature))
        except dkim.util.InvalidTagValueList as error:
            raise MailRejectedError(Rule.DKIM_INVALID, str(error)) from None
        if not tags.aligned_with(from_domain):
            raise MailRejectedError(Rule.DKIM_DOMAIN,
                                    f"d={tags.domain}, From domain {from_domain}")
        missing = tags.missing_headers(rfc8823.CHALLENGE_SIGNED_HEADERS)
        if missing:
            raise MailRejectedError(Rule.DKIM_HEADERS, "missing " + ", ".join(missing))
        if tags.body_length is not None:
            raise MailRejectedError(Rule.DKIM_BODY_LENGTH, f"l={tags.body_length}")
        try:
            valid = verifier.verify(idx=index, dnsfunc=self._txt_lookup)
        except Exception as error:  # noqa: BLE001 - dkimpy and DNS lookups raise many types
            raise MailRejectedError(Rule.DKIM_INVALID, f"d={tags.domain}: {error}") from None
        if not valid:
            raise MailRejectedError(Rule.DKIM_INVALID,
                                    f"d={tags.domain}: signature does not verify")


#: When several signatures fail, report the one that got furthest.
_DKIM_RULE_ORDER = [Rule.DKIM_DOMAIN, Rule.DKIM_HEADERS,
                    Rule.DKIM_BODY_LENGTH, Rule.DKIM_INVALID]
