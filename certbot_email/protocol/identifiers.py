"""The RFC 8823 ``email`` identifier type and how mailbox addresses are normalised.

Inside certbot a mailbox travels as a name containing ``@``: no DNS name can contain one, so
``is_mailbox`` is the single test that separates our names from everybody else's.
"""
import re
import string

from acme import messages

#: Creating an ``IdentifierType`` registers it, so ``Order``/``Authorization`` parse ``email``.
IDENTIFIER_EMAIL = messages.IdentifierType.POSSIBLE_NAMES.get("email") or \
    messages.IdentifierType("email")


#: ASCII a local part may hold unquoted (RFC 5322 atext and the dot); UTF-8 is RFC 6532's.
_LOCAL_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~.")
#: A host name label in A-label form (RFC 1123 §2.1, RFC 5890).
_LDH_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class MailboxError(ValueError):
    """A name with ``@`` that is not a usable mailbox address."""


def is_mailbox(name: str) -> bool:
    """True for names our hooks handle; everything else passes through untouched."""
    return "@" in name


def normalize_mailbox(address: str) -> str:
    """``local@domain`` with the local part kept exactly and the domain in lower-case A-labels.

    RFC 5321 lets a mailbox's local part be case-sensitive and RFC 8823 requires the
    certificate's address to equal the response mail's From, so only the domain is folded.
    Everything a CA or an X.509 rfc822Name would refuse is refused here, naming the bad part,
    so that certbot stops before it makes an order.
    """
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise MailboxError(f"{address!r} is not a mailbox address (local@domain)")
    if "@" in local:
        raise MailboxError(f"{address!r} has more than one '@'; an address is local@domain")
    if "*" in address:
        raise MailboxError(f"{address!r}: email identifiers cannot be wildcards (RFC 8823 §5.1)")
    if any(c.isascii() and c not in _LOCAL_ATEXT for c in local) or local.startswith(".") \
            or local.endswith(".") or ".." in local:
        raise MailboxError(f"{address!r}: the local part {local!r} needs quoting, "
                           "which certificate names do not support")
    if len(local.encode("utf-8")) > 64:
        raise MailboxError(f"{address!r}: the local part is longer than 64 octets (RFC 5321)")
    return f"{local}@{_host_name(address, domain.rstrip('.'))}"


def _host_name(address: str, domain: str) -> str:
    """The domain of ``address`` as lower-case A-labels, if it can be a mail domain at all."""
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise MailboxError(f"{address!r}: the domain {domain!r} is not a valid "
                           f"host name ({error})") from None
    labels = ascii_domain.split(".")
    bad = next((label for label in labels if not _LDH_LABEL.match(label)), None)
    if bad is not None:
        raise MailboxError(f"{address!r}: the domain {domain!r} is not a valid host name: "
                           f"the label {bad!r} is not letters, digits and inner hyphens")
    if len(labels) < 2 or labels[-1].isdigit():
        raise MailboxError(f"{address!r}: the domain {domain!r} is not a fully qualified name")
    if len(ascii_domain) > 253:
        raise MailboxError(f"{address!r}: the domain is longer than 253 characters")
    return ascii_domain


def local_part_is_ascii(address: str) -> bool:
    """ASCII local parts go in an rfc822Name; others need SmtpUTF8Mailbox (RFC 8398)."""
    return address.rpartition("@")[0].isascii()
