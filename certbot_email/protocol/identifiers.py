"""The RFC 8823 ``email`` identifier type and how mailbox addresses are normalised.

Inside certbot a mailbox travels as a name containing ``@``: no DNS name can contain one, so
``is_mailbox`` is the single test that separates our names from everybody else's.
"""
from acme import messages

#: Creating an ``IdentifierType`` registers it, so ``Order``/``Authorization`` parse ``email``.
IDENTIFIER_EMAIL = messages.IdentifierType.POSSIBLE_NAMES.get("email") or \
    messages.IdentifierType("email")


class MailboxError(ValueError):
    """A name with ``@`` that is not a usable mailbox address."""


def is_mailbox(name: str) -> bool:
    """True for names our hooks handle; everything else passes through untouched."""
    return "@" in name


def normalize_mailbox(address: str) -> str:
    """``local@domain`` with the local part kept exactly and the domain in lower-case A-labels.

    RFC 5321 lets a mailbox's local part be case-sensitive and RFC 8823 requires the
    certificate's address to equal the response mail's From, so only the domain is folded.
    """
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise MailboxError(f"{address!r} is not a mailbox address (local@domain)")
    if any(c.isspace() or c in '<>(),;:"[]\\' for c in local) or local.startswith(".") \
            or local.endswith(".") or ".." in local:
        raise MailboxError(f"{address!r}: the local part {local!r} needs quoting, "
                           "which certificate names do not support")
    if "*" in address:
        raise MailboxError(f"{address!r}: email identifiers cannot be wildcards (RFC 8823 §5.1)")
    domain = domain.rstrip(".")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise MailboxError(f"{address!r}: the domain {domain!r} is not a valid "
                           f"host name ({error})") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or any(not label or len(label) > 63 for label in labels):
        raise MailboxError(f"{address!r}: the domain {domain!r} is not a fully qualified name")
    if len(local.encode("utf-8")) > 64:
        raise MailboxError(f"{address!r}: the local part is longer than 64 octets (RFC 5321)")
    return f"{local}@{ascii_domain}"


def local_part_is_ascii(address: str) -> bool:
    """ASCII local parts go in an rfc822Name; others need SmtpUTF8Mailbox (RFC 8398)."""
    return address.rpartition("@")[0].isascii()
