"""The mail round trip for one mailbox: watch it, judge each mail, reply to the real challenges.

Runs in a background thread so that the plugin can return from ``perform()`` while a CA that
sends its challenge only after the POST is still to be answered; ``stop()`` ends it.
"""
import dataclasses
import logging
import threading
import time
from typing import Callable, Optional

from certbot_email.protocol import identifiers
from certbot_email.protocol.challenge_mail import (
    ChallengeMail,
    ChallengeMailJudge,
    ExpectedChallenge,
    MailRejectedError,
)
from certbot_email.protocol.reply_mail import build_reply
from certbot_email.transport import IncomingMail, TransportError, smtp
from certbot_email.transport.mailbox import Watcher

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PendingAnswer:
    """What answering one identifier's challenge needs: who sends it, and its digest."""

    challenge: ExpectedChallenge
    smtp: smtp.SmtpSettings
    #: token-part1 -> the digest for the BEGIN/END block.
    digest: Callable[[str], str]


class Responder:
    """Answers, at most once each, the challenge mails for some identifiers in one mailbox."""

    def __init__(self, watcher: Watcher, judge: ChallengeMailJudge,
                 answers: list[PendingAnswer], deadline: float,
                 on_answered: Callable[[ChallengeMail], None] = lambda mail: None) -> None:
        """``on_answered`` runs before the reply is sent, to remember it beyond this run."""
        self.watcher = watcher
        self.judge = judge
        self.deadline = deadline
        self._on_answered = on_answered
        self._answers = {identifiers.normalize_mailbox(answer.challenge.identifier): answer
                         for answer in answers}
        for answer in answers:
            judge.expect(answer.challenge)
        self.answered: dict[str, ChallengeMail] = {}
        self.failed: dict[str, str] = {}
        self.done = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    @property
    def identifiers(self) -> list[str]:
        """The mailboxes this responder answers for."""
        return [answer.challenge.identifier for answer in self._answers.values()]

    def start(self) -> None:
        """Connect (errors surface here, in the caller's thread), then watch in the background."""
        self.watcher.connect()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"email-reply {self.watcher.settings.describe()}")
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and wait for the thread; a reply being sent is finished first."""
        self._stopping = True
        self.watcher.interrupt()
        if self._thread is not None:
            self._thread.join()
        self.watcher.close()

    def _run(self) -> None:
        """Watch until every challenge is answered, the deadline passes, or ``stop()``."""
        try:
            while not self._stopping and self.judge.pending():
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning("No challenge mail for %s arrived in time",
                                   ", ".join(c.identifier for c in self.judge.pending()))
                    break
                # Newest first: of a stale challenge from an earlier run and today's, the
                # CA is waiting on today's.
                for incoming in reversed(self.watcher.next_mails(remaining)):
                    self._handle(incoming)
        except Exception as error:  # noqa: BLE001 - reported to perform() instead of lost
            logger.debug("email-reply worker failed", exc_info=True)
            for challenge in self.judge.pending():
                self.failed.setdefault(challenge.identifier, str(error))
        finally:
            self.done.set()

    def _handle(self, incoming: IncomingMail) -> None:
        """Judge one mail and, if it is a challenge we wait on, reply to it once."""
        where = self.watcher.settings.describe()
        try:
            mail = self.judge.judge(incoming.raw)
        except MailRejectedError as rejection:
            logger.warning("Not answering a mail in %s: %s [%s]", where, rejection,
                           rejection.rule.name)
            return
        answer = self._answers[identifiers.normalize_mailbox(mail.recipient)]
        self.judge.mark_answered(mail)
        self.watcher.mark_answered(incoming)
        try:
            self._on_answered(mail)
        except OSError as error:
            logger.warning("Could not record that the challenge mail for %s was answered (%s); "
                           "a later run could answer it again", mail.recipient, error)
        logger.info("Challenge mail for %s from %s (%s) passed every check; replying to %s",
                    mail.recipient, mail.sender, mail.message_id, mail.reply_address)
        try:
            reply = build_reply(mail, answer.digest(mail.token_part1))
            smtp.submit(answer.smtp, reply, mail.recipient, mail.reply_address)
        except (TransportError, ValueError) as error:
            self.failed[answer.challenge.identifier] = str(error)
            logger.error("Could not send the reply for %s: %s", mail.recipient, error)
            return
        self.answered[answer.challenge.identifier] = mail
