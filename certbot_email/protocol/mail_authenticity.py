"""Is a challenge mail really from the CA: DKIM or S/MIME, as RFC 8823 §3.1 item 6 requires.

Pure given its inputs: DKIM keys come from a ``TxtLookup`` and S/MIME signatures are checked
by a ``SmimeVerifier``, both supplied by the transport layer. Each check raises
``MailRejectedError`` with the rule that failed. DKIM follows RFC 6376 as tightened by RFC 8301
(rsa-sha256 or ed25519-sha256 only, RSA keys of 1024 bits or more) and RFC 8823 (``d=`` is the
From domain, ``h=`` covers the RFC's list, no ``l=``); a key record in test mode (``t=y``) makes
its signature count for nothing (RFC 6376 §3.6.1).
"""
import base64
import binascii
import dataclasses
import email
import email.message
import email.policy
import logging
import re
from typing import Callable, Optional

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email.protocol import rfc8823
from certbot_email.protocol.challenge_mail import (
    MAX_MIME_DEPTH,
    MailRejectedError,
    ReadMail,
    Rule,
    check_mime_containers,
    printable,
    same_mailbox,
)

#: dkimpy's own logger name: its lines are protocol traces, shown only when asked for.
DKIMPY_LOGGER = "dkimpy"
#: RFC 8301 §3.1 and RFC 8463: what a verifier may accept.
DKIM_ALGORITHMS = frozenset({"rsa-sha256", "ed25519-sha256"})
#: RFC 8301 §3.2: verifiers MUST NOT consider signatures with shorter RSA keys valid.
MIN_RSA_KEY_BITS = 1024
#: Signatures of the From domain that get as far as a verification (each hashes the whole
#: body): the CA's own, and a second one during a key rollover.
MAX_VERIFIED_SIGNATURES = 2
#: Names in one ``h=``: a signer lists a few dozen, oversigning included (OpenDKIM: 33).
MAX_SIGNED_HEADERS = 64
#: A selector: dot-separated labels (RFC 6376 §3.1), each a DNS label.
_SELECTOR = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*", re.ASCII)
_MAX_DNS_NAME = 253

#: Looks up the TXT record of a DKIM key (``selector._domainkey.domain.``): the record's bytes,
#: None when the name provably has none, ``LookupError`` (naming the server) when DNS fails.
#: An ``absent_hint`` attribute, if it has one, is added to the message about a missing key.
TxtLookup = Callable[..., Optional[bytes]]

#: When several signatures fail, the one that got furthest is reported; a key that could not
#: be looked up comes last because the mail may still be genuine (it is judged again).
_DKIM_RULE_ORDER = [Rule.DKIM_ALGORITHM, Rule.DKIM_DOMAIN, Rule.DKIM_HEADERS,
                    Rule.DKIM_BODY_LENGTH, Rule.DKIM_NO_KEY, Rule.DKIM_TEST_KEY,
                    Rule.DKIM_KEY_TOO_SMALL, Rule.DKIM_INVALID, Rule.DKIM_KEY_UNAVAILABLE]

#: Headers an S/MIME header-protected copy must repeat exactly: the ones the reply relies on.
PROTECTED_HEADERS = ("from", "to", "cc", "reply-to", "subject", "message-id", "auto-submitted")


@dataclasses.dataclass(frozen=True)
class SmimeSignature:
    """A verified S/MIME signature: the signer certificate's addresses and what it signed."""

    signer_addresses: tuple[str, ...]
    content: bytes


#: Verifies an S/MIME-signed mail (signature and chain); ``ValueError`` says why it does not.
SmimeVerifier = Callable[[bytes], SmimeSignature]


def check_authentic(raw: bytes, mail: ReadMail, txt_lookup: TxtLookup,
                    smime_verifier: Optional[SmimeVerifier] = None) -> None:
    """DKIM, or for an S/MIME-signed mail when trust anchors are set, S/MIME."""
    if smime_verifier is not None and mail.smime_signed:
        try:
            check_dkim(raw, mail.sender_domain, txt_lookup)
        except MailRejectedError:
            check_smime(smime_verifier, raw, mail)
        return
    check_dkim(raw, mail.sender_domain, txt_lookup)


# ---- DKIM ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DkimKey:
    """What a DKIM key record (RFC 6376 §3.6.1) says that the rules care about."""

    record: bytes
    kind: str
    testing: bool
    revoked: bool
    rsa_bits: Optional[int]
    #: ``h=`` of the key: the hash algorithms it may be used with; None for any.
    hashes: Optional[frozenset[str]]

    @classmethod
    def parse(cls, record: bytes) -> "DkimKey":
        """The key's tags; ``ValueError`` when the record is no DKIM key record."""
        try:
            tags = dkim.util.parse_tag_value(record)
        except dkim.util.InvalidTagValueList as error:
            raise ValueError(f"unreadable key record: {error}") from None
        if tags.get(b"v", b"DKIM1") != b"DKIM1":
            raise ValueError("the key record's v= is not DKIM1")
        if b"p" not in tags:
            raise ValueError("the key record has no p=")
        key_data = re.sub(rb"\s+", b"", tags[b"p"])
        kind = tags.get(b"k", b"rsa").decode("ascii", "replace").lower()
        flags = {flag.strip().lower() for flag in tags.get(b"t", b"").split(b":")}
        hashes = {name.strip().decode("ascii", "replace").lower()
                  for name in tags[b"h"].split(b":")} if b"h" in tags else None
        rsa_bits = _rsa_bits(key_data) if kind == "rsa" and key_data else None
        return cls(record=record, kind=kind, testing=b"y" in flags, revoked=not key_data,
                   rsa_bits=rsa_bits, hashes=frozenset(hashes) if hashes is not None else None)


def _rsa_bits(key_data: bytes) -> int:
    """The modulus size of a base64 SubjectPublicKeyInfo RSA key."""
    try:
        key = serialization.load_der_public_key(base64.b64decode(key_data, validate=True))
    except (binascii.Error, ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(f"the key record's p= is no public key ({error})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the key record says k=rsa but holds another kind of key")
    return key.key_size


def check_dkim(raw: bytes, from_domain: str, txt_lookup: TxtLookup) -> None:
    """Some DKIM signature passes every rule and verifies; else the furthest failure is raised."""
    try:
        verifier = dkim.DKIM(raw, logger=logging.getLogger(DKIMPY_LOGGER))
    except dkim.DKIMException as error:
        raise MailRejectedError(Rule.MALFORMED, f"dkimpy: {error}") from None
    signatures = rfc8823.dkim_signatures(verifier.headers)
    if not signatures:
        raise MailRejectedError(Rule.DKIM_MISSING)
    failures: list[MailRejectedError] = []
    keys: dict[bytes, DkimKey] = {}  # a forger may repeat one signature: one lookup each
    verified: list[int] = []
    for index, signature in enumerate(signatures):
        try:
            _check_signature(verifier, index, signature, from_domain, txt_lookup, keys, verified)
            return
        except MailRejectedError as failure:
            failures.append(failure)
    raise max(failures, key=lambda failure: _DKIM_RULE_ORDER.index(failure.rule))


def _check_signature(verifier: dkim.DKIM, index: int, signature: bytes, from_domain: str,
                     txt_lookup: TxtLookup, keys: dict[bytes, DkimKey],
                     verified: list[int]) -> None:
    """One DKIM-Signature header against every rule; raises the first it breaks.

    ``verified`` lists the signatures verified so far: past ``MAX_VERIFIED_SIGNATURES`` a
    signature is refused unverified, so that copies of a signature cannot multiply the cost.
    """
    try:
        fields = dkim.util.parse_tag_value(signature)
    except dkim.util.InvalidTagValueList as error:
        raise MailRejectedError(Rule.DKIM_INVALID, f"unreadable tags: {error}") from None
    listed = fields.get(b"h", b"").count(b":") + 1
    if listed > MAX_SIGNED_HEADERS:  # verifying costs names x header fields
        raise MailRejectedError(Rule.DKIM_INVALID, f"h= lists {listed} headers, over "
                                                   f"{MAX_SIGNED_HEADERS}")
    tags = rfc8823.DkimTags.from_fields(fields)
    if tags.algorithm not in DKIM_ALGORITHMS:
        raise MailRejectedError(Rule.DKIM_ALGORITHM, f"a={printable(tags.algorithm)}")
    if not tags.aligned_with(from_domain):
        raise MailRejectedError(Rule.DKIM_DOMAIN,
                                f"d={printable(tags.domain)}, From domain {from_domain}")
    missing = tags.missing_headers(rfc8823.CHALLENGE_SIGNED_HEADERS)
    if missing:
        raise MailRejectedError(Rule.DKIM_HEADERS, "missing " + ", ".join(missing))
    if tags.body_length is not None:
        raise MailRejectedError(Rule.DKIM_BODY_LENGTH, f"l={printable(tags.body_length)}")
    name = _key_name(tags)
    if name not in keys:
        keys[name] = _fetch_key(name, txt_lookup)
    key = keys[name]
    _check_key(key, tags, name)
    if len(verified) >= MAX_VERIFIED_SIGNATURES:
        raise MailRejectedError(Rule.DKIM_INVALID, f"only the first {MAX_VERIFIED_SIGNATURES} "
                                                   f"signatures of {from_domain} are verified")
    verified.append(index)
    try:
        valid = verifier.verify(idx=index, dnsfunc=lambda _name, timeout=5: key.record)
    except Exception as error:  # noqa: BLE001 - dkimpy raises many types on hostile input
        raise MailRejectedError(Rule.DKIM_INVALID,
                                f"d={tags.domain} s={tags.selector}: {error}") from None
    if not valid:
        raise MailRejectedError(Rule.DKIM_INVALID,
                                f"d={tags.domain} s={tags.selector}: signature does not verify")


def _key_name(tags: rfc8823.DkimTags) -> bytes:
    """``selector._domainkey.domain.`` as the lookup takes it; a name DNS cannot hold is
    refused here, so that a DNS error always means DNS failed."""
    domain = rfc8823.a_label(tags.domain)
    name = f"{tags.selector}._domainkey.{domain}."
    if not _SELECTOR.fullmatch(tags.selector) or not domain or len(name) > _MAX_DNS_NAME:
        raise MailRejectedError(Rule.DKIM_INVALID,
                                f"s={printable(tags.selector)} d={printable(tags.domain)} "
                                f"is not a DNS name")
    return name.encode("ascii")


def _fetch_key(name: bytes, txt_lookup: TxtLookup) -> DkimKey:
    """The key record at ``name``: unavailable (DNS failed), absent, or parsed."""
    shown = name.decode("ascii")
    try:
        record = txt_lookup(name, timeout=5)
    except LookupError as error:
        raise MailRejectedError(Rule.DKIM_KEY_UNAVAILABLE, str(error)) from None
    if record is None:
        hint = getattr(txt_lookup, "absent_hint", "")
        raise MailRejectedError(Rule.DKIM_NO_KEY,
                                f"no TXT record at {shown}" + (f", {hint}" if hint else ""))
    try:
        return DkimKey.parse(record)
    except ValueError as error:
        raise MailRejectedError(Rule.DKIM_INVALID, f"{shown}: {error}") from None


def _check_key(key: DkimKey, tags: rfc8823.DkimTags, name: bytes) -> None:
    """Revoked, test mode, of the wrong kind or hash, or too small: the signature is refused."""
    shown = name.decode("ascii")
    if key.revoked:
        raise MailRejectedError(Rule.DKIM_NO_KEY, f"the key at {shown} is revoked (empty p=)")
    if key.testing:
        raise MailRejectedError(Rule.DKIM_TEST_KEY, f"{shown} has t=y")
    kind, _, hash_name = tags.algorithm.partition("-")
    if key.kind != kind or (key.hashes is not None and hash_name not in key.hashes):
        raise MailRejectedError(Rule.DKIM_INVALID, f"a={tags.algorithm} does not fit the key at "
                                                   f"{shown} (k={key.kind})")
    if key.rsa_bits is not None and key.rsa_bits < MIN_RSA_KEY_BITS:
        raise MailRejectedError(Rule.DKIM_KEY_TOO_SMALL, f"{shown}: {key.rsa_bits} bits")


# ---- S/MIME -------------------------------------------------------------------------------

def check_smime(verifier: SmimeVerifier, raw: bytes, mail: ReadMail) -> None:
    """Signature and chain verify, the signer is From, and a signed copy repeats the headers."""
    try:
        signature = verifier(raw)
    except ValueError as error:
        raise MailRejectedError(Rule.SMIME_INVALID, str(error)) from None
    if not any(same_mailbox(address, mail.sender) for address in signature.signer_addresses):
        raise MailRejectedError(Rule.SMIME_SIGNER,
                                ", ".join(signature.signer_addresses) or "none")
    inner = _protected_copy(signature.content)
    for name in PROTECTED_HEADERS:
        try:
            outer_values = [str(value) for value in mail.headers.get_all(name, [])]
            inner_values = [str(value) for value in inner.get_all(name, [])]
        except Exception as error:  # noqa: BLE001 - header parsing raises many types
            raise MailRejectedError(Rule.SMIME_HEADER_PROTECTION,
                                    f"{name}: {type(error).__name__}") from None
        if outer_values != inner_values:
            raise MailRejectedError(Rule.SMIME_HEADER_PROTECTION, f"{name} differs")


def _protected_copy(content: bytes) -> email.message.Message:
    """The message/rfc822 copy inside the signed content (A8), its MIME depth bounded."""
    check_mime_containers(content)
    try:
        signed = email.message_from_bytes(content, policy=email.policy.default)
        depth = _mime_depth(signed)
    except Exception as error:  # noqa: BLE001 - the stdlib parser raises many types on junk
        raise MailRejectedError(Rule.MALFORMED, f"signed content: {type(error).__name__}") \
            from None
    if depth > MAX_MIME_DEPTH:
        raise MailRejectedError(Rule.NESTED_TOO_DEEP, f"limit {MAX_MIME_DEPTH}")
    inner = signed.get_payload()
    if signed.get_content_type() != "message/rfc822" or not isinstance(inner, list) \
            or not inner or not isinstance(inner[0], email.message.Message):
        raise MailRejectedError(Rule.SMIME_HEADER_PROTECTION,
                                f"signed content is {signed.get_content_type()}")
    return inner[0]


def _mime_depth(part: email.message.Message, depth: int = 0) -> int:
    """How deep multiparts (and message/rfc822 wrappers) nest, stopping past the limit."""
    if depth > MAX_MIME_DEPTH or not part.is_multipart():
        return depth
    payload = part.get_payload()
    children = [child for child in (payload if isinstance(payload, list) else [payload])
                if isinstance(child, email.message.Message)]
    return max([_mime_depth(child, depth + 1) for child in children] or [depth + 1])
