"""Mistakes our plugins catch in ``prepare()``, before certbot asks the CA for anything.

certbot prepares the authenticator before it registers an account or makes an order. A mistake
found later costs a round trip: a challenge mail the CA has already sent, a 60 s grace wait, or
a certificate issued and then not saved. Each check here raises one error that says what to
change; none of them talks to the CA.
"""
import os
import urllib.parse
from typing import Any, Optional, Union

from certbot import errors

from certbot_email import certbot_compat
from certbot_email.protocol import identifiers

#: CAs known not to issue certificates for email addresses, by directory host. Let's Encrypt is
#: certbot's default, so it is where a first ``-d alice@example.com`` goes.
CAS_WITHOUT_EMAIL = {
    "acme-v02.api.letsencrypt.org": "Let's Encrypt (certbot's default CA)",
    "acme-staging-v02.api.letsencrypt.org": "Let's Encrypt's staging CA",
}
#: At most this many leftover files are named in an error.
SHOWN_LEFTOVERS = 4


class PrepareError(errors.MisconfigurationError):
    """A mistake found before the order. certbot reports a plugin's prepare() error as
    "The error was: {error!r}", so the repr is the message itself, without quotes to unpick."""

    def __repr__(self) -> str:
        return str(self)


def requested_names(config: Any) -> list[str]:
    """The ``-d`` names of this run (on renewal, the lineage's)."""
    return [str(name) for name in getattr(config, "domains", None) or ()]


def check_request(config: Any, plugin: str, for_mailboxes: bool) -> None:
    """The names suit the authenticator, the CA can issue for them, and certbot could save
    the certificate; ``MisconfigurationError`` otherwise."""
    names = requested_names(config)
    _require_kind(names, plugin, for_mailboxes)
    if for_mailboxes and names:
        _refuse_ca_without_email(getattr(config, "server", None) or "")
    _refuse_leftover_lineage(config)


def _require_kind(names: list[str], plugin: str, for_mailboxes: bool) -> None:
    """Addresses only for email-reply, host names only for the TLS authenticators."""
    wrong = [name for name in names if identifiers.is_mailbox(name) != for_mailboxes]
    if not wrong:
        return
    listed = ", ".join(wrong)
    if for_mailboxes:
        raise PrepareError(
            f"-a {plugin} certifies email addresses (S/MIME, -d alice@example.com), but "
            f"{listed} {'is a host name' if len(wrong) == 1 else 'are host names'}. Get a "
            f"certificate for host names in a separate run, with -a email-dns, -a "
            f"email-capability or another authenticator")
    raise PrepareError(
        f"-a {plugin} certifies host names (TLS, -d mail.example.com), but {listed} "
        f"{'is an email address' if len(wrong) == 1 else 'are email addresses'}. Get an "
        f"S/MIME certificate for addresses in a separate run, with -a email-reply")


def _refuse_ca_without_email(server: str) -> None:
    """A mailbox order to a CA that certainly refuses it would only register an account."""
    known = CAS_WITHOUT_EMAIL.get(urllib.parse.urlsplit(server).hostname or "")
    if known:
        raise PrepareError(
            f"{known} does not issue certificates for email addresses. Give a CA that does "
            f"with --server DIRECTORY-URL: see 'Which CA issues certificates for email "
            f"addresses' in the certbot-email README")


def _refuse_leftover_lineage(config: Any) -> None:
    """certbot saves a new lineage only into empty live/archive directories, and checks that
    only after the CA has issued; a directory left behind (``certbot delete`` keeps files it did
    not make) is found here instead."""
    name = certbot_compat.new_lineage_name(config)
    if name is None:
        return
    for parent in (config.live_dir, config.default_archive_dir):
        path = os.path.join(parent, name)
        leftovers = _leftovers(path)
        if leftovers is None:
            continue
        shown = ", ".join(leftovers[:SHOWN_LEFTOVERS]) + (
            ", ..." if len(leftovers) > SHOWN_LEFTOVERS else "")
        raise PrepareError(
            f"certbot has no certificate named {name!r}, but {path} is left over from an "
            f"earlier one (it holds {shown}), as certbot delete leaves files it did not make. "
            f"certbot would refuse to save the new certificate there after the CA issued it: "
            f"move {path} away, or choose another name with --cert-name")


def _leftovers(path: str) -> Optional[list[str]]:
    """What blocks certbot from using ``path`` for a new lineage, or None when nothing does."""
    if not os.path.exists(path):
        return None
    if not os.path.isdir(path):
        return [os.path.basename(path)]
    return sorted(os.listdir(path)) or None


def check_mail_accounts(config: Any, credentials: Optional[str], option: str) -> None:
    """email-reply: the credentials file is there and complete for every address, and each
    mailbox and submission server takes its login, so that no challenge mail is sent in vain."""
    if not credentials:
        raise PrepareError(
            f"email-reply needs {option} PATH, an INI file naming the mailbox (IMAP or POP3) and "
            f"SMTP submission account of each address (see 'The credentials file' in the "
            f"README), or --email-reply-manual to handle the mails yourself")
    if not os.path.isfile(credentials):
        raise PrepareError(
            f"{option} {credentials}: there is no such file. Create it (chmod 600) with the "
            f"mailbox and SMTP keys described in 'The credentials file' in the README")
    if not os.access(credentials, os.R_OK):
        raise PrepareError(
            f"{option} {credentials}: this user cannot read it; run certbot as the file's "
            f"owner (normally root)")
    from certbot_email.reply_credentials import MailboxCredentials
    from certbot_email.transport import MailboxSettings, TransportError, mailbox, smtp
    addresses_by_account: dict[Union[MailboxSettings, smtp.SmtpSettings], list[str]] = {}
    try:
        accounts = MailboxCredentials(credentials)
        for address in requested_names(config):
            for account in accounts.for_address(address):
                addresses_by_account.setdefault(account, []).append(address)
    except errors.PluginError as error:
        raise PrepareError(str(error)) from None
    for account, addresses in addresses_by_account.items():
        try:
            if isinstance(account, smtp.SmtpSettings):
                smtp.check_login(account)
            else:
                mailbox.check_login(account)
        except TransportError as error:
            raise PrepareError(f"{error} (for {', '.join(addresses)}, from {credentials})"
                               ) from None
