"""The email-reply credentials file: which mailbox and submission account serve each address.

An INI file. Keys before the first section apply to every address; a section named after an
address (``[bob@example.com]``) overrides them for that address::

    imap_host = mail.example.com
    imap_user = alice
    imap_password = secret

    [bob@example.com]
    imap_user = bob
    imap_password = other secret

``mailbox_protocol = pop3`` reads the mail with POP3, from the ``pop3_*`` keys, instead of IMAP.
Parsed with configparser, without interpolation or inline comments, so a password may hold
``#``, ``;``, ``%`` or ``,``. Parse errors name line numbers only: a line may hold a secret.
"""
import configparser
import enum
import os
from typing import Optional, TypeVar

from certbot import errors
from certbot.plugins import dns_common

from certbot_email.protocol import identifiers
from certbot_email.transport import MailboxSettings, MailProtocol, TlsMode
from certbot_email.transport.smtp import SmtpSettings

#: Every key the file may hold; anything else is a typo worth an error.
KEYS = frozenset({
    "mailbox_protocol",
    "imap_host", "imap_port", "imap_tls", "imap_user", "imap_password", "imap_folder",
    "pop3_host", "pop3_port", "pop3_tls", "pop3_user", "pop3_password",
    "smtp_host", "smtp_port", "smtp_tls", "smtp_user", "smtp_password", "smtp_helo", "ca_file",
})
#: Required for the mailbox, after the ``imap_``/``pop3_`` prefix.
REQUIRED_MAILBOX_KEYS = ("host", "user", "password")
DEFAULT_PORTS = {
    ("imap", TlsMode.IMPLICIT): 993, ("imap", TlsMode.STARTTLS): 143,
    ("pop3", TlsMode.IMPLICIT): 995, ("pop3", TlsMode.STARTTLS): 110,
    ("smtp", TlsMode.IMPLICIT): 465, ("smtp", TlsMode.STARTTLS): 587,
}
_DEFAULTS = "DEFAULT"
_Choice = TypeVar("_Choice", bound=enum.Enum)


class MailboxCredentials:
    """The parsed credentials file; ``for_address`` gives one address's mailbox and SMTP."""

    def __init__(self, path: str) -> None:
        self.path = path
        dns_common.validate_file_permissions(path)
        parser = configparser.ConfigParser(interpolation=None, default_section=_DEFAULTS)
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
            parser.read_string(f"[{_DEFAULTS}]\n{text}", source=path)
        except (OSError, UnicodeDecodeError) as error:
            raise errors.PluginError(f"Cannot read the email-reply credentials file "
                                     f"{path}: {error}") from None
        except configparser.Error as error:
            raise errors.PluginError(f"The email-reply credentials file {path} is not a valid "
                                     f"INI file ({_where(error)}); write 'key = value' lines, "
                                     f"with optional [address] sections") from None
        self._parser = parser
        unknown = sorted({key for section in [_DEFAULTS, *parser.sections()]
                          for key in parser[section] if key not in KEYS})
        if unknown:
            raise errors.PluginError(f"The email-reply credentials file {path} has unknown "
                                     f"keys {', '.join(unknown)}; known keys: "
                                     f"{', '.join(sorted(KEYS))}")
        for name in parser.sections():
            try:
                identifiers.normalize_mailbox(name)
            except identifiers.MailboxError as error:
                raise errors.PluginError(f"Section [{name}] of the email-reply credentials file "
                                         f"{path} must be named after an address: {error}"
                                         ) from None

    def _section(self, address: str) -> configparser.SectionProxy:
        """The section for ``address`` if there is one, else the defaults."""
        wanted = identifiers.normalize_mailbox(address)
        for name in self._parser.sections():
            if identifiers.normalize_mailbox(name) == wanted:
                return self._parser[name]
        return self._parser[_DEFAULTS]

    def for_address(self, address: str) -> tuple[MailboxSettings, SmtpSettings]:
        """Mailbox and SMTP settings for ``address``; ``PluginError`` names a bad key."""
        section = self._section(address)
        protocol = self._choice(section, "mailbox_protocol", address, MailProtocol,
                                MailProtocol.IMAP)
        prefix = protocol.value
        missing = [f"{prefix}_{key}" for key in REQUIRED_MAILBOX_KEYS
                   if not section.get(f"{prefix}_{key}")]
        if missing:
            raise errors.PluginError(
                f"The email-reply credentials file {self.path} sets no {', '.join(missing)} "
                f"for {address}; add them at the top or in a [{address}] section")
        mailbox_tls = self._choice(section, f"{prefix}_tls", address, TlsMode, TlsMode.IMPLICIT)
        smtp_tls = self._choice(section, "smtp_tls", address, TlsMode, TlsMode.IMPLICIT)
        ca_file = section.get("ca_file") or None
        if ca_file and not os.path.isfile(ca_file):
            raise errors.PluginError(f"ca_file {ca_file!r} in {self.path} is not a file")
        mailbox = MailboxSettings(
            protocol=protocol, host=section[f"{prefix}_host"],
            port=self._port(section, prefix, mailbox_tls, address), tls=mailbox_tls,
            user=section[f"{prefix}_user"], password=section[f"{prefix}_password"],
            folder=section.get("imap_folder") or "INBOX", ca_file=ca_file)
        smtp = SmtpSettings(
            host=section.get("smtp_host") or mailbox.host,
            port=self._port(section, "smtp", smtp_tls, address), tls=smtp_tls,
            user=section.get("smtp_user") or mailbox.user,
            password=section.get("smtp_password") or mailbox.password,
            local_hostname=section.get("smtp_helo") or address.rpartition("@")[2],
            ca_file=ca_file)
        for key, password in ((f"{prefix}_password", mailbox.password),
                              ("smtp_password", smtp.password)):
            if protocol is MailProtocol.IMAP or key == "smtp_password":
                self._require_ascii(key, password, address)
        return mailbox, smtp

    def _require_ascii(self, key: str, password: str, address: str) -> None:
        """IMAP LOGIN and SMTP AUTH as Python speaks them take ASCII only; say so up front,
        naming the key but never quoting the password (the library's error would)."""
        if not password.isascii():
            raise errors.PluginError(
                f"{key} for {address} in {self.path} has characters outside ASCII, which IMAP "
                "LOGIN and SMTP AUTH cannot send; use an ASCII (app) password")

    def _choice(self, section: configparser.SectionProxy, key: str, address: str,
                choices: type[_Choice], default: _Choice) -> _Choice:
        """An enum-valued key, ``default`` when unset; a bad value names the choices."""
        value = section.get(key) or default.value
        try:
            return choices(value.lower())
        except ValueError:
            raise errors.PluginError(
                f"{key} = {value!r} for {address} in {self.path}; use one of "
                f"{', '.join(choice.value for choice in choices)}") from None

    def _port(self, section: configparser.SectionProxy, protocol: str, tls: TlsMode,
              address: str) -> int:
        """The configured port, or the RFC 8314 / RFC 6409 default for the TLS mode."""
        key = f"{protocol}_port"
        value: Optional[str] = section.get(key)
        if not value:
            return DEFAULT_PORTS[(protocol, tls)]
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise errors.PluginError(f"{key} = {value!r} for {address} in {self.path} is not "
                                     f"a port number")
        return int(value)


def _where(error: configparser.Error) -> str:
    """Line numbers of a parse error, without the line text (it may hold a password)."""
    if isinstance(error, configparser.ParsingError):
        lines = ", ".join(str(line - 1) for line, _text in error.errors)
        return f"cannot parse line {lines}"
    if isinstance(error, (configparser.DuplicateOptionError, configparser.DuplicateSectionError)):
        return f"{type(error).__name__} at line {(error.lineno or 1) - 1}"
    return type(error).__name__
