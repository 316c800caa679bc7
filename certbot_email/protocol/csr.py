"""Certificate names for mail: rfc822Name, SmtpUTF8Mailbox (RFC 8398), SRVName (RFC 4985).

Also the S/MIME key usage a CSR asks for (RFC 8823 §3.3). Pure functions over
``cryptography`` objects; certbot_compat decides when they are used.
"""
import enum
import ipaddress
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ObjectIdentifier

from certbot_email.protocol import identifiers

OID_SMTP_UTF8_MAILBOX = ObjectIdentifier("1.3.6.1.5.5.7.8.9")
OID_SRV_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.7")
_UTF8_STRING = 0x0C
_IA5_STRING = 0x16


class MailboxKeyUsage(enum.Enum):
    """What an S/MIME certificate is for; RFC 8823 §3.3 maps it to the CSR's keyUsage."""

    SIGN = "sign"
    ENCRYPT = "encrypt"
    BOTH = "both"


def _der_string(tag: int, text: bytes) -> bytes:
    """DER TLV of a string type (short or long length form)."""
    length = len(text)
    if length < 0x80:
        return bytes([tag, length]) + text
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + text


def _der_string_value(tag: int, der: bytes) -> str:
    """Inverse of ``_der_string``; ``ValueError`` for anything else."""
    if len(der) < 2 or der[0] != tag:
        raise ValueError("unexpected ASN.1 type in otherName")
    length, offset = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(der[2:2 + count], "big"), 2 + count
    if offset + length != len(der):
        raise ValueError("malformed ASN.1 length in otherName")
    return der[offset:].decode("utf-8" if tag == _UTF8_STRING else "ascii")


def mailbox_general_name(address: str) -> x509.GeneralName:
    """rfc822Name for an ASCII local part, else an SmtpUTF8Mailbox otherName (RFC 8398 §3)."""
    if identifiers.local_part_is_ascii(address):
        return x509.RFC822Name(address)
    return x509.OtherName(OID_SMTP_UTF8_MAILBOX,
                          _der_string(_UTF8_STRING, address.encode("utf-8")))


def srv_general_name(service: str, host: str) -> x509.GeneralName:
    """SRVName ``_<service>.<host>`` as an IA5String otherName (RFC 4985 §2, no ``_tcp``)."""
    value = f"_{service}.{host}".encode("ascii")
    return x509.OtherName(OID_SRV_NAME, _der_string(_IA5_STRING, value))


def srv_name_hosts(names: Iterable[str]) -> list[str]:
    """The names an SRVName can be made for: plain host names, not mailboxes, wildcards or IP
    addresses (RFC 4985's Name is a DNS domain)."""
    hosts = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not identifiers.is_mailbox(name) and not name.startswith("*."):
                hosts.append(name)
    return hosts


def mailboxes(names: x509.SubjectAlternativeName) -> list[str]:
    """Every mailbox in a SAN, rfc822Name and SmtpUTF8Mailbox alike, in order."""
    found = []
    for name in names:
        if isinstance(name, x509.RFC822Name):
            found.append(name.value)
        elif isinstance(name, x509.OtherName) and name.type_id == OID_SMTP_UTF8_MAILBOX:
            found.append(_der_string_value(_UTF8_STRING, name.value))
    return found


def srv_names(names: x509.SubjectAlternativeName) -> list[str]:
    """Every SRVName (``_service.host``) in a SAN."""
    return [_der_string_value(_IA5_STRING, name.value) for name in names
            if isinstance(name, x509.OtherName) and name.type_id == OID_SRV_NAME]


def mailbox_key_usage(usage: MailboxKeyUsage, key: object) -> x509.KeyUsage:
    """keyUsage for an S/MIME CSR: encryption is keyEncipherment for RSA, keyAgreement for EC."""
    sign = usage in (MailboxKeyUsage.SIGN, MailboxKeyUsage.BOTH)
    encrypt = usage in (MailboxKeyUsage.ENCRYPT, MailboxKeyUsage.BOTH)
    is_rsa = isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey))
    return x509.KeyUsage(
        digital_signature=sign, content_commitment=False,
        key_encipherment=encrypt and is_rsa, data_encipherment=False,
        key_agreement=encrypt and not is_rsa, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False)


def mailbox_sans(addresses: Iterable[str]) -> list[x509.GeneralName]:
    """General names for a list of mailbox addresses, in order."""
    return [mailbox_general_name(address) for address in addresses]
