"""Key authorizations and their digests (RFC 8555 §8.1), and RFC 8823 token joining."""
import enum
import hashlib

import josepy as jose


class TokenJoining(enum.Enum):
    """How token-part1 (from the mail Subject) and token-part2 (from the challenge) are joined.

    RFC 8823 is ambiguous (spec/rfc8823-email-reply.md, A1): ``STRING`` concatenates the
    received text, ``BYTES`` concatenates the decoded bytes and re-encodes them. Both give the
    same token when token-part1 decodes to a multiple of 3 bytes and carries no padding.
    """

    STRING = "string"
    BYTES = "bytes"


def _b64url(data: bytes) -> str:
    return jose.b64encode(data).decode("ascii")


def strip_whitespace(text: str) -> str:
    """Drop every white-space character (folded Subjects put FWS inside token-part1)."""
    return "".join(text.split())


def join_tokens(token_part1: str, token_part2: str,
                joining: TokenJoining = TokenJoining.STRING) -> str:
    """The ACME token of an email-reply-00 challenge: token-part1 first, then token-part2."""
    part1 = strip_whitespace(token_part1)
    if joining is TokenJoining.STRING:
        return part1 + token_part2
    return _b64url(jose.b64decode(part1) + jose.b64decode(token_part2))


def thumbprint(account_key: jose.JWK) -> str:
    """base64url of the RFC 7638 SHA-256 thumbprint of the account key."""
    return _b64url(account_key.thumbprint())


def key_authorization(token: str, account_key: jose.JWK) -> str:
    """``token "." thumbprint`` (RFC 8555 §8.1)."""
    return f"{token}.{thumbprint(account_key)}"


def key_authorization_digest(key_auth: str) -> str:
    """base64url (unpadded) SHA-256 of a key authorization.

    This one value is the dns-01 and dns-email-00 TXT value, the capability challenges'
    advertised value, and the content of the RFC 8823 response block.
    """
    return _b64url(hashlib.sha256(key_auth.encode("ascii")).digest())
