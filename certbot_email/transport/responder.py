"""The mail round trip for one mailbox: watch it, judge each mail, reply to the real challenges.

Runs in a background thread so that the plugin can return from ``perform()`` while a CA that
sends its challenge only after the POST is still to be answered; ``stop()`` ends it. Each batch
of new mails is judged whole before anything is answered, each mail on its own: a mail that
cannot be judged is refused and logged, never a reason to stop answering the others.
"""
import dataclasses
import logging
import threading
import time
from typing import Callable, Optional, Protocol, Sequence, Union

from certbot_email.protocol import identifiers
from certbot_email.protocol.challenge_mail import (
    RETRY_RULES,
    ROUTINE_RULES,
    ChallengeMail,
    ExpectedChallenge,
    MailRejectedError,
    Rule,
    printable,
)
from certbot_email.protocol.reply_mail import build_reply
from certbot_email.transport import IncomingMail, TransportError, smtp
from certbot_email.transport.mailbox import Watcher

logger = logging.getLogger(__name__)


class Judge(Protocol):
    """What the responder needs from the registry of challenges (``reply_registry``)."""

    def pending(self) -> list[ExpectedChallenge]:
        """Challenges still waiting for their mail."""

    def judge_batch(self, mails: Sequence[IncomingMail]
                    ) -> list[Union[ChallengeMail, MailRejectedError]]:
        """Each mail's verdict, in order, the batch judged whole."""

    def expect(self, challenge: ExpectedChallenge) -> None:
        """Start waiting for ``challenge``."""

    def mark_answered(self, mail: ChallengeMail) -> None:
        """Remember, before the reply goes out, that ``mail`` is answered."""


@dataclasses.dataclass(frozen=True)
class PendingAnswer:
    """What answering one identifier's challenge needs: who sends it, and its digest."""

    challenge: ExpectedChallenge
    smtp: smtp.SmtpSettings
    #: token-part1 -> the digest for the BEGIN/END block.
    digest: Callable[[str], str]


class Responder:
    """Answers, at most once each, the challenge mails for some identifiers in one mailbox."""

    def __init__(self, watcher: Watcher, judge: Judge, answers: list[PendingAnswer],
                 deadline: float, report: Callable[[str], None] = lambda line: None) -> None:
        """``report`` shows a person what happened to a challenge (where its reply went)."""
        self.watcher = watcher
        self.judge = judge
        self.deadline = deadline
        self._report = report
        self._answers = {identifiers.normalize_mailbox(answer.challenge.identifier): answer
                         for answer in answers}
        for answer in answers:
            judge.expect(answer.challenge)
        self.answered: dict[str, ChallengeMail] = {}
        self.failed: dict[str, str] = {}
        #: How many mails that claimed to be a challenge were refused, and why the last one was.
        self.refused = 0
        self.last_refusal = ""
        #: Mails refused for a reason that may pass (a DNS failure): judged again next time.
        self._again: list[IncomingMail] = []
        self._last_verdict: dict[object, Rule] = {}
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
        """Watch until every challenge is settled, the deadline passes, or ``stop()``."""
        try:
            while not self._stopping and self.judge.pending():
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    self._out_of_time()
                    break
                self._handle(self._again + self.watcher.next_mails(remaining))
        except Exception as error:  # noqa: BLE001 - the mailbox itself broke: reported
            logger.debug("email-reply worker failed", exc_info=True)
            for challenge in self.judge.pending():
                self.failed.setdefault(challenge.identifier, str(error))
        finally:
            self.done.set()

    def _handle(self, mails: list[IncomingMail]) -> None:
        """Judge the batch, log every verdict, then answer what passed."""
        self._again = []
        if not mails:
            return
        verdicts = self.judge.judge_batch(mails)
        for incoming, verdict in zip(mails, verdicts, strict=True):
            if isinstance(verdict, MailRejectedError):
                self._refused(incoming, verdict)
        for incoming, verdict in zip(mails, verdicts, strict=True):
            if isinstance(verdict, ChallengeMail):
                self._answer(incoming, verdict)

    def _refused(self, incoming: IncomingMail, rejection: MailRejectedError) -> None:
        """Log the verdict naming the mail (a mail judged again only when its verdict changes);
        keep it for later if the verdict may change."""
        if rejection.rule in RETRY_RULES:
            self._again.append(incoming)
        if self._last_verdict.get(incoming.uid) is rejection.rule:
            logger.debug("%s is still refused: %s", incoming.label, rejection)
            return
        self._last_verdict[incoming.uid] = rejection.rule
        about = rejection.about or "headers unreadable"
        level = logging.INFO if rejection.rule in ROUTINE_RULES else logging.WARNING
        logger.log(level, "Not answering %s (%s): %s [%s]", incoming.label, about, rejection,
                   rejection.rule.name)
        if rejection.rule not in ROUTINE_RULES:
            self.refused += 1
            self.last_refusal = f"{rejection} [{rejection.rule.name}]"
        if rejection.rule is Rule.AMBIGUOUS and rejection.identifier:
            self.failed.setdefault(rejection.identifier, str(rejection))

    def _answer(self, incoming: IncomingMail, mail: ChallengeMail) -> None:
        """Reply to a mail that passed, once: remembered first, then sent."""
        answer = self._answers[identifiers.normalize_mailbox(mail.recipient)]
        self.judge.mark_answered(mail)
        self.watcher.mark_answered(incoming)
        logger.info("Challenge mail for %s, %s (Message-ID %s, From %s), passed every check; "
                    "replying to %s", mail.recipient, incoming.label, printable(mail.message_id),
                    printable(mail.sender), mail.reply_address)
        try:
            reply = build_reply(mail, answer.digest(mail.token_part1))
            smtp.submit(answer.smtp, reply, mail.recipient, mail.reply_address)
        except (TransportError, ValueError) as error:
            self.failed[answer.challenge.identifier] = str(error)
            logger.error("Could not send the reply for %s: %s", mail.recipient, error)
            return
        self.answered[answer.challenge.identifier] = mail
        self._report(f"Replied to the challenge mail for {mail.recipient} ({incoming.label}, "
                     f"Message-ID {mail.message_id or '(none)'}) at {mail.reply_address}")

    def _out_of_time(self) -> None:
        """The deadline passed: say what is still pending and what held it up."""
        waiting = ", ".join(challenge.identifier for challenge in self.judge.pending())
        held = f"; {len(self._again)} mail(s) still could not be checked, the last " \
               f"because {self.last_refusal}" if self._again else ""
        logger.warning("No challenge mail for %s could be answered in time%s", waiting, held)
