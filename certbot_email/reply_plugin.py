"""certbot plugin layer of ``email-reply``: S/MIME certificates through RFC 8823."""
import datetime
import functools
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from acme import challenges
from certbot import achallenges, errors, interfaces
from certbot.display import util as display_util
from certbot.plugins import common

from certbot_email import certbot_compat, preflight
from certbot_email.protocol import identifiers
from certbot_email.protocol.challenges import EmailReply00

if TYPE_CHECKING:
    from certbot_email.reply_mailflow import FlowSettings
    from certbot_email.transport.responder import Responder

certbot_compat.install()

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 60
DEFAULT_TIMEOUT_SECONDS = 600
DEFAULT_POLL_SECONDS = 10
DEFAULT_LOOKBACK_SECONDS = 120
#: How often perform() says what it is still waiting for.
PROGRESS_SECONDS = 10.0
#: certbot -vvv lets the IMAP and DKIM protocol traces into the log; -vv does not.
TRACE_VERBOSITY = 3


class Authenticator(common.Plugin, interfaces.Authenticator):
    """Answers RFC 8823 challenge mails for the mailboxes being certified."""

    description = "Obtain S/MIME certificates for email addresses (RFC 8823 email-reply-00)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._responders: list[Responder] = []

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """Options; secrets live in the credentials file, never in flags or renewal conf."""
        add("credentials", type=str, default=None, metavar="PATH",
            help="Path to the INI file with the mailbox (IMAP or POP3) and SMTP submission "
                 "accounts (keep it mode 0600; see the README for its keys).")
        add("token-joining", type=str, default="string", choices=("string", "bytes"),
            help="How token-part1 (mail) and token-part2 (ACME) are joined, RFC 8823 being "
                 "ambiguous: 'string' (acme4j, acme2certifier) or 'bytes' (acmez, CASTLE).")
        add("key-usage", type=str, default="both", choices=("sign", "encrypt", "both"),
            help="What the certificate is for, requested through the CSR's keyUsage "
                 "(RFC 8823 section 3.3).")
        add("manual", action="store_true", default=False,
            help="Ask for the challenge mail (a saved file, or its pasted Subject) and show "
                 "the reply to send by hand, instead of using IMAP and SMTP. Interactive only.")
        add("allow-unsigned", action="store_true", default=False,
            help="RELAXED: answer challenge mails without a valid DKIM signature aligned with "
                 "From. Only for CAs that do not sign; anyone who can mail you could then get "
                 "a reply. Every use is logged as a warning.")
        add("allow-no-auto-submitted", action="store_true", default=False,
            help="RELAXED: answer challenge mails that have no Auto-Submitted header (one "
                 "that says anything but 'auto-generated' is still refused). Every use is "
                 "logged as a warning.")
        add("smime-ca-file", type=str, default=None, metavar="PATH",
            help="PEM file of the CAs trusted to S/MIME-sign challenge mails (RFC 8823 allows "
                 "S/MIME instead of DKIM); without it only DKIM proves a mail authentic.")
        add("dkim-dns-server", type=str, default=None, metavar="ADDRESS",
            help="Name server (IP, IP:PORT or [IPv6]:PORT) for DKIM key lookups; default: "
                 "the system resolver.")
        add("grace-seconds", type=int, metavar="SECONDS", default=DEFAULT_GRACE_SECONDS,
            help="How long to wait for the challenge mail before letting certbot tell the "
                 "CA to proceed (some CAs send the mail only then); the wait continues in "
                 "the background.")
        add("timeout-seconds", type=int, metavar="SECONDS", default=DEFAULT_TIMEOUT_SECONDS,
            help="Overall limit for the challenge mail to arrive and be answered.")
        add("poll-seconds", type=int, metavar="SECONDS", default=DEFAULT_POLL_SECONDS,
            help="Polling interval for POP3, and for IMAP servers without IDLE.")
        add("lookback-seconds", type=int, metavar="SECONDS", default=DEFAULT_LOOKBACK_SECONDS,
            help="Mails that reached the mailbox this long before the run started are still "
                 "considered (the CA may be quicker than certbot).")

    def prepare(self) -> None:
        """Refuse on a certbot whose internals our hooks do not fit; check the options, names,
        CA and mail accounts, so that a mistake stops the run before the CA sends a mail."""
        certbot_compat.require_support()
        if getattr(self.config, "allow_subset_of_names", False):
            raise errors.MisconfigurationError(
                "--allow-subset-of-names is not supported for email addresses")
        from certbot_email.protocol import csr
        usage = csr.MailboxKeyUsage(self.conf("key-usage"))
        certbot_compat.csr_profile.mailbox_key_usage = functools.partial(
            csr.mailbox_key_usage, usage)
        for name in ("grace-seconds", "timeout-seconds", "poll-seconds", "lookback-seconds"):
            if self.conf(name) < 0:
                raise errors.MisconfigurationError(
                    f"--{self.option_name(name)} is {self.conf(name)}; it must be 0 or more")
        if self.conf("manual") and self.config.noninteractive_mode:
            raise errors.MisconfigurationError(
                f"--{self.option_name('manual')} needs a person at a terminal; drop "
                f"--non-interactive, or give --{self.option_name('credentials')} instead")
        if self.conf("smime-ca-file") and not os.path.isfile(self.conf("smime-ca-file")):
            raise errors.MisconfigurationError(
                f"--{self.option_name('smime-ca-file')} {self.conf('smime-ca-file')!r} is not a "
                f"file; give a PEM file of the CA certificates that sign challenge mails")
        if self.conf("dkim-dns-server"):
            from certbot_email.transport import dkim_dns
            try:
                dkim_dns.parse_server(self.conf("dkim-dns-server"))
            except ValueError as error:
                raise errors.MisconfigurationError(
                    f"--{self.option_name('dkim-dns-server')}: {error}") from None
        preflight.check_request(self.config, self.name, for_mailboxes=True)
        if not self.conf("manual"):
            preflight.check_mail_accounts(self.config, self.conf("credentials"),
                                          f"--{self.option_name('credentials')}")

    def more_info(self) -> str:
        """Shown by ``certbot plugins``."""
        return ("Proves control of a mailbox by answering the CA's challenge mail "
                "(RFC 8823); use with certonly -d you@example.com.")

    def get_chall_pref(self, identifier: str) -> Iterable[type[challenges.Challenge]]:
        """email-reply-00 for mailboxes, nothing for host names."""
        return [EmailReply00] if identifiers.is_mailbox(identifier) else []

    def perform(self, achalls: list[achallenges.AnnotatedChallenge]
                ) -> list[challenges.ChallengeResponse]:
        """Answer the challenge mails, returning once answered or after the grace period."""
        from certbot_email import reply_mailflow
        if self.conf("manual"):
            reply_mailflow.answer_by_hand(self._settings(), achalls)
            return [achall.chall.response(achall.account_key) for achall in achalls]
        self._responders += reply_mailflow.start_responders(self._settings(), achalls,
                                                            report=display_util.notify)
        started = time.monotonic()
        grace_end = started + min(self.conf("grace-seconds"), self.conf("timeout-seconds"))
        waiting = self._waiting()
        while waiting and time.monotonic() < grace_end:
            display_util.notify(
                f"Waiting for the challenge mail for {', '.join(waiting)}, "
                f"{time.monotonic() - started:.0f} s{self._refusals()}")
            pending = [r for r in self._responders if not r.done.is_set()]
            pending[0].done.wait(min(PROGRESS_SECONDS, max(0.0, grace_end - time.monotonic())))
            self._raise_failures()
            waiting = self._waiting()
        self._raise_failures()
        unanswered = [identifier for r in self._responders for identifier in r.identifiers
                      if identifier not in r.answered]
        if waiting:
            display_util.notify(
                f"No challenge mail answered yet for {', '.join(waiting)}{self._refusals()}; "
                f"asking the CA to proceed and still waiting in the background")
        elif unanswered:
            display_util.notify(
                f"No challenge mail could be answered in time for {', '.join(unanswered)}"
                f"{self._refusals()}; asking the CA to proceed")
        else:
            display_util.notify("Every challenge mail is answered; waiting for the CA to "
                                "check the replies")
        return [achall.chall.response(achall.account_key) for achall in achalls]

    def cleanup(self, achalls: list[Any]) -> None:
        """Stop the background watchers; say why a challenge failed after perform() returned."""
        responders = self._responders
        self._stop()
        for identifier, why in _failures(responders).items():
            logger.error("email-reply could not answer the challenge for %s: %s",
                         identifier, why)

    def _stop(self) -> None:
        for responder in self._responders:
            responder.stop()
        self._responders = []

    def _refusals(self) -> str:
        """``; N mails refused, the last: <why>`` once a mail that claimed to be a challenge
        was refused, so that progress never reads as if no mail had come."""
        refused = [r for r in self._responders if r.refused]
        if not refused:
            return ""
        return (f"; {sum(r.refused for r in refused)} mail(s) refused so far, the last because "
                f"{refused[-1].last_refusal}")

    def _waiting(self) -> list[str]:
        """Identifiers whose challenge mail has not been answered yet."""
        return [identifier for r in self._responders if not r.done.is_set()
                for identifier in r.identifiers if identifier not in r.answered]

    def _raise_failures(self) -> None:
        """A reply that could not be sent, or a mailbox that broke, fails the run now."""
        failures = _failures(self._responders)
        if failures:
            self._stop()
            raise errors.PluginError("; ".join(f"{identifier}: {why}"
                                               for identifier, why in failures.items()))

    def _settings(self) -> "FlowSettings":
        """The options as one value for the mail flow."""
        from certbot_email.reply_journal import JOURNAL_NAME
        from certbot_email.reply_mailflow import FlowSettings
        return FlowSettings(
            credentials=self.conf("credentials"),
            token_joining=self.conf("token-joining"),
            allow_unsigned=self.conf("allow-unsigned"),
            allow_no_auto_submitted=self.conf("allow-no-auto-submitted"),
            dkim_dns_server=self.conf("dkim-dns-server"),
            smime_ca_file=self.conf("smime-ca-file"),
            timeout_seconds=self.conf("timeout-seconds"),
            poll_seconds=self.conf("poll-seconds"),
            since=datetime.datetime.now(datetime.timezone.utc)
            - datetime.timedelta(seconds=self.conf("lookback-seconds")),
            journal=os.path.join(self.config.work_dir, JOURNAL_NAME),
            protocol_trace=_verbosity(self.config) >= TRACE_VERBOSITY)


def _failures(responders: list["Responder"]) -> dict[str, str]:
    """Identifier -> why its challenge could not be answered, over every mailbox."""
    return {identifier: why for r in responders for identifier, why in r.failed.items()}


def _verbosity(config: Any) -> int:
    """How many -v certbot was given (``--verbose-level`` wins, as in certbot's own logging)."""
    level = getattr(config, "verbose_level", None)
    return int(level) if level is not None else int(getattr(config, "verbose_count", 0) or 0)
