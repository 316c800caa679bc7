"""The ACME values a mail server advertises, read from its replies (draft-ietf-acme-email-tls §3.4).

The email-capability plugin advertises them (its Dovecot snippet through
`challenges.imap_capability`; its stdlib-only responder writes the lines itself); the test CA's
validators and the plugin's probe read them back with these parsers, so both agree on what counts
as advertised.
"""
from collections.abc import Iterable

_KEYWORD = "ACME"
_IMAP_ATOM = "ACME="
_IMAP_CODE = "[CAPABILITY "
_IMAP_RESPONSE = "* CAPABILITY "


def _keyword_value(words: list[str]) -> list[str]:
    """The parameter of an `ACME <value>` line (keyword case-insensitive, exactly one value)."""
    return [words[1]] if len(words) == 2 and words[0].upper() == _KEYWORD else []


def ehlo_acme_values(reply: Iterable[str]) -> list[str]:
    """Parameters of `ACME` keyword lines in an EHLO reply's lines, with or without codes."""
    values = []
    for line in reply:
        values += _keyword_value(line[4:].split() if line[:3].isdigit() else line.split())
    return values


def imap_acme_values(line: str) -> list[str]:
    """Non-empty `ACME=<value>` atoms of a greeting's [CAPABILITY ...] or a * CAPABILITY line."""
    upper = line.upper()
    if _IMAP_CODE in upper:
        start = upper.index(_IMAP_CODE) + len(_IMAP_CODE)
        text = line[start:line.find("]", start)]
    elif upper.startswith(_IMAP_RESPONSE):
        text = line[len(_IMAP_RESPONSE):]
    else:
        return []
    return [atom[len(_IMAP_ATOM):] for atom in text.split()
            if atom.upper().startswith(_IMAP_ATOM) and len(atom) > len(_IMAP_ATOM)]


def pop3_acme_values(lines: Iterable[str]) -> list[str]:
    """Arguments of `ACME <value>` lines in a CAPA response (between +OK and the lone dot)."""
    values = []
    for line in lines:
        values += _keyword_value(line.split())
    return values
