"""Wiring the plugin's options to the mail round trip: one responder per distinct mailbox.

Imported lazily from ``perform()``, so that the import certbot does on every run stays light.
"""
import dataclasses
import datetime
import logging
import time
from typing import Callable, Optional

import josepy as jose
from certbot import achallenges, errors

from certbot_email import certbot_compat
from certbot_email.protocol import keyauth
from certbot_email.protocol.challenge_mail import MAX_MAIL_BYTES, ExpectedChallenge, Relaxation
from certbot_email.protocol.challenges import EmailReply00
from certbot_email.reply_credentials import MailboxCredentials
from certbot_email.reply_journal import AnsweredJournal
from certbot_email.reply_registry import ChallengeMailJudge
from certbot_email.transport import (
    MailboxSettings,
    TransportError,
    dkim_dns,
    show_protocol_traces,
    smime,
)
from certbot_email.transport.mailbox import open_watcher
from certbot_email.transport.responder import PendingAnswer, Responder

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FlowSettings:
    """The plugin options the mail round trip needs (no secrets: those stay in the file)."""

    #: Path of the credentials file; None in manual mode.
    credentials: Optional[str]
    token_joining: str
    allow_unsigned: bool
    allow_no_auto_submitted: bool
    dkim_dns_server: Optional[str]
    #: Trust anchors for S/MIME-signed challenge mails; None: DKIM only.
    smime_ca_file: Optional[str]
    timeout_seconds: int
    poll_seconds: int
    #: Mails that arrived before this are old challenges, never answered.
    since: datetime.datetime
    #: Path of the AnsweredJournal, shared by every run on the host.
    journal: str
    #: Let imapclient's and dkimpy's protocol traces into the log (certbot -vvv).
    protocol_trace: bool = False

    @property
    def relaxations(self) -> frozenset[Relaxation]:
        """The named relaxations the flags ask for."""
        chosen = {Relaxation.UNSIGNED: self.allow_unsigned,
                  Relaxation.NO_AUTO_SUBMITTED: self.allow_no_auto_submitted}
        return frozenset(relaxation for relaxation, on in chosen.items() if on)


@dataclasses.dataclass(frozen=True)
class _Digest:
    """token-part1 -> the response digest of one challenge, under the chosen token joining."""

    challenge: EmailReply00
    account_key: jose.JWK
    joining: keyauth.TokenJoining

    def __call__(self, token_part1: str) -> str:
        """The digest once token-part1 is known from the mail."""
        return self.challenge.validation(self.account_key, token_part1=token_part1,
                                         joining=self.joining)


def make_judge(settings: FlowSettings, journal: AnsweredJournal) -> ChallengeMailJudge:
    """A judge with the chosen relaxations (announced here), DKIM/S/MIME trust and memory."""
    show_protocol_traces(settings.protocol_trace)
    for relaxation in sorted(settings.relaxations, key=lambda r: r.value):
        logger.warning("email-reply runs relaxed (%s): challenge mails are checked less than "
                       "RFC 8823 requires", relaxation.value)
    verifier = smime.openssl_verifier(settings.smime_ca_file) if settings.smime_ca_file else None
    return ChallengeMailJudge(settings.relaxations, txt_lookup=dkim_key_lookup(settings),
                              journal=journal, smime_verifier=verifier)


def dkim_key_lookup(settings: FlowSettings) -> dkim_dns.TxtLookup:
    """DKIM key lookups whose failures say which option fixes them."""
    if settings.dkim_dns_server:
        hint = (f"check that the name server given by --email-reply-dkim-dns-server "
                f"({settings.dkim_dns_server}) answers for the CA's zone")
    else:
        hint = ("name a server that can see the CA's zone with "
                "--email-reply-dkim-dns-server IP[:PORT]")
    return dkim_dns.txt_lookup(settings.dkim_dns_server or None, hint=hint)


def answer_by_hand(settings: FlowSettings,
                   achalls: list[achallenges.AnnotatedChallenge]) -> None:
    """Manual mode: each challenge mail comes from, and each reply goes out through, the user."""
    from certbot_email import reply_manual
    judge = make_judge(settings, AnsweredJournal(settings.journal))
    for achall in achalls:
        reply_manual.answer_by_hand(achall, judge, keyauth.TokenJoining(settings.token_joining))


def start_responders(settings: FlowSettings, achalls: list[achallenges.AnnotatedChallenge],
                     report: Callable[[str], None] = lambda line: None) -> list[Responder]:
    """Connect to each distinct mailbox and start answering; ``PluginError`` if one fails.

    ``report`` shows a person where each reply went (certbot's display, in the plugin)."""
    if not settings.credentials:
        raise errors.PluginError(
            "email-reply needs --email-reply-credentials PATH, an INI file with the IMAP and "
            "SMTP accounts (see the README), or --email-reply-manual")
    credentials = MailboxCredentials(settings.credentials)
    joining = keyauth.TokenJoining(settings.token_joining)
    by_mailbox: dict[MailboxSettings, list[PendingAnswer]] = {}
    for achall in achalls:
        identifier = certbot_compat.challenge_identifier(achall)
        mailbox, smtp = credentials.for_address(identifier)
        expected = ExpectedChallenge(identifier=identifier, sender=achall.chall.sender)
        digest = _Digest(achall.chall, achall.account_key, joining)
        by_mailbox.setdefault(mailbox, []).append(PendingAnswer(expected, smtp, digest))
    deadline = time.monotonic() + settings.timeout_seconds
    journal = AnsweredJournal(settings.journal)  # one writer: its lock covers every mailbox
    responders: list[Responder] = []
    try:
        for mailbox, answers in by_mailbox.items():
            watcher = open_watcher(mailbox, settings.since, MAX_MAIL_BYTES, settings.poll_seconds)
            responder = Responder(watcher, make_judge(settings, journal), answers, deadline,
                                  report=report)
            responder.start()
            responders.append(responder)
    except TransportError as error:
        for responder in responders:
            responder.stop()
        raise errors.PluginError(f"email-reply: {error}") from None
    return responders
