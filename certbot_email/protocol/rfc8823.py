"""RFC 8823 rules that the client and the test CA both apply, as pure functions.

The signed-header lists, the Subject's ``ACME:`` label and token-part1, the DKIM tags the RFC
rules on (``a=``, ``d=``, ``h=``, ``l=``) and the response block. Each side decides how strict
to be: the client refuses a Subject with a reply prefix and any ``l=``, the CA skips the prefix
and refuses only an ``l=`` that leaves part of the body unsigned.
"""
import dataclasses
import re
from typing import Iterable, Mapping, NamedTuple, Optional

from certbot_email.protocol import keyauth

#: Headers a challenge's DKIM-Signature ``h=`` must list (§3.1 item 6), in the RFC's order.
CHALLENGE_SIGNED_HEADERS = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "in-reply-to", "references",
    "message-id", "auto-submitted", "content-type", "content-transfer-encoding",
)
#: A response's list is the same without Auto-Submitted (§3.2 item 9).
RESPONSE_SIGNED_HEADERS = tuple(name for name in CHALLENGE_SIGNED_HEADERS
                                if name != "auto-submitted")
#: Headers both lists SHOULD cover; the test CA signs them on its challenges.
RECOMMENDED_SIGNED_HEADERS = ("resent-date", "resent-from", "resent-to", "resent-cc",
                              "list-id", "list-help", "list-unsubscribe", "list-subscribe",
                              "list-post", "list-owner", "list-archive",
                              "list-unsubscribe-post")

SUBJECT_LABEL = "ACME:"
#: The label as the RFC writes it, for the client's strict reading.
LABEL = re.compile(re.escape(SUBJECT_LABEL))
#: The label in any case, for the CA's lenient reading of what MUAs send back.
LABEL_ANY_CASE = re.compile(re.escape(SUBJECT_LABEL), re.IGNORECASE)
#: Charsets §3.1 item 1 allows in an encoded Subject.
ALLOWED_SUBJECT_CHARSETS = frozenset({"utf-8", "us-ascii"})
_ENCODED_WORD = re.compile(r"=\?([^?*]*)(\*[^?]*)?\?([qQbB])\?", re.ASCII)

#: base64url text, padded or not: the syntax of token-part1 and of the digest.
BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}", re.ASCII)

BEGIN_LINE = "-----BEGIN ACME RESPONSE-----"
END_LINE = "-----END ACME RESPONSE-----"


class SubjectParts(NamedTuple):
    """A decoded Subject cut at its first ``ACME:`` label."""

    #: What stands before the label: nothing in a challenge, ``Re:`` and the like in a reply.
    prefix: str
    #: What follows the label, every white-space character (FWS, folding) removed.
    token_part1: str


def encoded_word_charsets(raw_subject: str) -> list[str]:
    """The charsets of the RFC 2047 encoded words in a Subject as it was on the wire."""
    return [charset for charset, _language, _encoding in _ENCODED_WORD.findall(raw_subject)]


def split_subject(subject: str, label: re.Pattern[str] = LABEL) -> Optional[SubjectParts]:
    """The decoded Subject around its first ``label``; None when it has none (A4)."""
    match = label.search(subject)
    if match is None:
        return None
    return SubjectParts(subject[:match.start()], keyauth.strip_whitespace(subject[match.end():]))


def a_label(domain: str) -> str:
    """A domain as lower-case A-labels without a trailing dot; '' when it is not one (A7)."""
    try:
        return domain.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ""


def dkim_signatures(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The DKIM-Signature values among a mail's headers, in the order dkimpy's ``idx`` counts."""
    return [value for name, value in headers if name.lower() == b"dkim-signature"]


@dataclasses.dataclass(frozen=True)
class DkimTags:
    """The tags of one DKIM-Signature that RFC 8823 rules on, as the signature writes them."""

    domain: str
    selector: str
    #: ``a=``, e.g. ``rsa-sha256``.
    algorithm: str
    signed_headers: frozenset[str]
    body_length: Optional[str]

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> "DkimTags":
        """From dkimpy's parsed tag list (``dkim.util.parse_tag_value``)."""
        def text(tag: bytes) -> str:
            return fields.get(tag, b"").decode("ascii", "replace")
        return cls(domain=text(b"d"), selector=text(b"s"), algorithm=text(b"a"),
                   signed_headers=frozenset(name.strip().lower() for name in text(b"h").split(":")),
                   body_length=text(b"l") if b"l" in fields else None)

    def aligned_with(self, from_domain: str) -> bool:
        """``d=`` is exactly the From domain, given as lower-case A-labels (§3.1 item 6, A7)."""
        return a_label(self.domain) == from_domain

    def missing_headers(self, required: Iterable[str]) -> list[str]:
        """The ``required`` headers that ``h=`` does not list, in their order."""
        return [name for name in required if name not in self.signed_headers]

    def leaves_body_unsigned(self, body_bytes: int) -> bool:
        """``l=`` signs fewer bytes than the body has, so text can be appended unsigned."""
        return self.body_length is not None and int(self.body_length) < body_bytes


def find_response_block(text: str) -> Optional[str]:
    """The digest between the BEGIN/END lines, line breaks, white space and ``=`` dropped (§3.2).

    Text around the block is ignored; None when there is no complete, non-empty block.
    """
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    try:
        start = lines.index(BEGIN_LINE)
        end = lines.index(END_LINE, start + 1)
    except ValueError:
        return None
    digest = keyauth.strip_whitespace("".join(lines[start + 1:end])).rstrip("=")
    return digest or None
