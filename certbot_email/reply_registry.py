"""The challenges an email-reply run waits on, and the memory of every mail judged for them.

``ChallengeMailJudge`` puts the pure rules together (``protocol.challenge_mail`` reads a mail,
``protocol.mail_authenticity`` checks it is the CA's) with what only a run knows: which
challenges are pending, which are settled, and which mails were seen. It is thread-safe: a
mailbox worker judges while the plugin asks what is still pending.

What is remembered, so that neither a replay nor a pre-emption works: the token-part1 and
Message-ID of every mail that may be the CA's, whatever rule refused it. A mail may be the CA's
when its From is a CA address we wait on and its signature does not fail: it verified (DKIM and
S/MIME both cover Message-ID), or it could not be checked for a DNS failure, and then only its
token-part1 is kept, a Message-ID being easy to predict. So a copy of a refused challenge is
refused too, while a forgery, whose signature fails, leaves no trace: a forged mail carrying the
CA's next Message-ID, or even the genuine token-part1, cannot make the genuine mail look like a
copy of itself.

Both are kept in the journal too (``reply_journal``), so that a later run on the host refuses
what this one judged.
"""
import datetime
import logging
import threading
from typing import Hashable, Iterable, Optional, Sequence, Union

from certbot_email.protocol import identifiers
from certbot_email.protocol.challenge_mail import (
    AUTHENTICITY_RULES,
    RETRY_RULES,
    STRICT,
    ChallengeMail,
    ExpectedChallenge,
    MailRejectedError,
    ReadMail,
    Relaxation,
    Rule,
    answer_keys,
    clashes,
    printable,
    read_mail,
    same_mailbox,
    waive,
)
from certbot_email.protocol.mail_authenticity import (
    SmimeVerifier,
    TxtLookup,
    check_authentic,
    check_dkim,
)
from certbot_email.reply_journal import AnsweredJournal
from certbot_email.transport import IncomingMail

logger = logging.getLogger(__name__)

#: Journal keys of judged (not necessarily answered) mails start with this.
SEEN_PREFIX = "seen "
#: Stands for the mail of an earlier run, which no mail of this run can be.
_EARLIER_RUN = object()

#: One mail's verdict: the challenge to answer, or why not.
Verdict = Union[ChallengeMail, MailRejectedError]
#: Refusals after which the mail's signature was looked at already, or it is remembered anyway.
_SIGNATURE_LOOKED_AT = AUTHENTICITY_RULES | {Rule.ALREADY_ANSWERED, Rule.ALREADY_SEEN}


class ChallengeMailJudge:
    """Decides which mails are challenges we wait on, and remembers what it judged."""

    def __init__(self, relaxations: Iterable[Relaxation] = STRICT, *, txt_lookup: TxtLookup,
                 journal: Optional[AnsweredJournal] = None,
                 smime_verifier: Optional[SmimeVerifier] = None) -> None:
        """``txt_lookup`` fetches DKIM keys (the transport layer's, so no DNS happens in the
        rules); ``journal`` holds earlier runs' memory; ``smime_verifier`` admits S/MIME proof."""
        self.relaxations = frozenset(relaxations)
        self._txt_lookup = txt_lookup
        self._smime_verifier = smime_verifier
        self._journal = journal
        self._lock = threading.Lock()
        self._expected: list[ExpectedChallenge] = []
        #: Identifier -> how its challenge was settled (answered, or given up).
        self._settled: dict[str, str] = {}
        self._answered: set[str] = set()
        self._seen_tokens: dict[str, Hashable] = {}
        self._seen_message_ids: dict[str, Hashable] = {}
        self._unsaved: list[str] = []
        #: The CA addresses of every challenge expected: only their mails are worth keeping.
        self._senders: set[str] = set()
        for key in journal.load() if journal is not None else ():
            if not key.startswith(SEEN_PREFIX):
                self._answered.add(key)
            elif key.startswith(SEEN_PREFIX + "token-part1:"):
                self._seen_tokens[key.split(":", 1)[1]] = _EARLIER_RUN
            else:
                self._seen_message_ids[key.split(":", 1)[1]] = _EARLIER_RUN

    def expect(self, challenge: ExpectedChallenge) -> None:
        """Start waiting for a challenge mail to ``challenge.identifier``."""
        with self._lock:
            self._expected.append(challenge)
            self._senders.add(challenge.sender)

    def pending(self) -> list[ExpectedChallenge]:
        """Challenges still waiting for their mail."""
        with self._lock:
            return list(self._expected)

    def judge(self, raw: bytes, mail_id: Optional[Hashable] = None) -> ChallengeMail:
        """The challenge a mail carries, or ``MailRejectedError`` naming the rule it broke;
        nothing else ever escapes. ``mail_id`` names the mail when it is judged again."""
        try:
            return self._judge(raw, object() if mail_id is None else mail_id)
        except MailRejectedError:
            raise
        except Exception as error:  # noqa: BLE001 - the promise: a verdict, whatever the bytes
            logger.debug("Judging a mail failed unexpectedly", exc_info=True)
            raise MailRejectedError(Rule.MALFORMED,
                                    f"internal error {type(error).__name__}") from None

    def judge_batch(self, mails: Sequence[IncomingMail]) -> list[Verdict]:
        """Every mail of a batch judged before any is answered: of two challenges that pass
        for one mailbox with different token-part1, neither is answered and it is given up."""
        verdicts: list[Verdict] = []
        for incoming in mails:
            try:
                verdicts.append(self.judge(incoming.raw, incoming.uid))
            except MailRejectedError as rejection:
                verdicts.append(rejection)
        passed = [(incoming, verdict) for incoming, verdict in zip(mails, verdicts, strict=True)
                  if isinstance(verdict, ChallengeMail)]
        for recipient, clashing in clashes([mail for _incoming, mail in passed]).items():
            named = [_describe(incoming, mail) for incoming, mail in passed
                     if mail.recipient == recipient]
            why = (f"{' and '.join(named)}; someone besides the CA can get mail through to "
                   f"{recipient} as {clashing[0].sender}")
            self.give_up(recipient, f"{Rule.AMBIGUOUS.value} ({why})")
            for index, verdict in enumerate(verdicts):
                if isinstance(verdict, ChallengeMail) and verdict.recipient == recipient:
                    refusal = MailRejectedError(Rule.AMBIGUOUS, why, recipient)
                    refusal.about = (f"Message-ID {printable(verdict.message_id or '(none)')}, "
                                     f"From {printable(verdict.sender)}")
                    verdicts[index] = refusal
        self.save()
        return verdicts

    def mark_answered(self, mail: ChallengeMail) -> None:
        """Never answer this mail, its token-part1 or its mailbox's challenge again."""
        keys = answer_keys(mail.token_part1, mail.message_id)
        which = f" {mail.message_id}" if mail.message_id else ""
        with self._lock:
            self._answered.update(keys)
            self._settle(mail.recipient, f"its challenge mail{which} was answered")
        self._write(keys, "answered")

    def give_up(self, identifier: str, why: str) -> None:
        """Stop waiting for ``identifier``'s challenge: ``why`` says what went wrong."""
        with self._lock:
            self._settle(identifier, f"given up: {why}")

    def save(self) -> None:
        """Write what was judged since the last save to the journal."""
        with self._lock:
            keys, self._unsaved = self._unsaved, []
        if keys:
            self._write(keys, "judged")

    def _write(self, keys: list[str], what: str) -> None:
        if self._journal is None:
            return
        try:
            self._journal.record(keys)
        except OSError as error:
            logger.warning("Could not record in %s which challenge mails were %s (%s); a later "
                           "run could judge them afresh", self._journal.path, what, error)

    def _judge(self, raw: bytes, mail_id: Hashable) -> ChallengeMail:
        try:
            read = read_mail(raw)
        except MailRejectedError as rejection:
            self._remember_if_the_cas(raw, None, rejection.token_part1, rejection.sender, mail_id)
            raise
        try:
            return self._judge_read(raw, read, mail_id)
        except MailRejectedError as rejection:
            rejection.about, rejection.token_part1 = read.about, read.token_part1
            rejection.sender = read.sender
            if rejection.rule not in _SIGNATURE_LOOKED_AT:
                self._remember_if_the_cas(raw, read, read.token_part1, read.sender, mail_id)
            raise

    def _judge_read(self, raw: bytes, read: ReadMail, mail_id: Hashable) -> ChallengeMail:
        """Memory, then whom it is for, then Auto-Submitted, then authenticity."""
        with self._lock:
            self._check_memory(read, mail_id)
            expected = self._match(read)
        waived: set[Rule] = set()
        if read.auto_submitted is None:
            waived.add(waive(self.relaxations, Rule.NOT_AUTO_SUBMITTED, "no such header"))
        elif read.auto_submitted != "auto-generated":
            # The relaxation is for CAs that omit the header, never for a mail that says it
            # was not generated automatically.
            raise MailRejectedError(Rule.NOT_AUTO_SUBMITTED,
                                    f"Auto-Submitted: {printable(read.auto_submitted)}")
        try:
            check_authentic(raw, read, self._txt_lookup, self._smime_verifier)
            verified = True
        except MailRejectedError as rejection:
            if rejection.rule in RETRY_RULES:  # may be the CA's: a copy must not pass
                self._remember(read.token_part1, None, mail_id)
            waived.add(waive(self.relaxations, rejection.rule, rejection.detail))
            verified = False
        with self._lock:
            self._check_memory(read, mail_id)
        self._remember(read.token_part1, read.message_id if verified else None, mail_id)
        return ChallengeMail(
            sender=read.sender, recipient=expected.identifier, token_part1=read.token_part1,
            message_id=read.message_id, reply_to=read.reply_to, references=read.references,
            waived=frozenset(waived))

    def _check_memory(self, read: ReadMail, mail_id: Hashable) -> None:
        """Answered before, or judged before as another mail; the caller holds the lock."""
        if self._answered.intersection(answer_keys(read.token_part1, read.message_id)):
            raise MailRejectedError(Rule.ALREADY_ANSWERED, read.message_id or read.token_part1)
        if self._seen_tokens.get(read.token_part1, mail_id) != mail_id:
            raise MailRejectedError(Rule.ALREADY_SEEN, f"token-part1 {read.token_part1}")
        if read.message_id and \
                self._seen_message_ids.get(read.message_id, mail_id) != mail_id:
            raise MailRejectedError(Rule.ALREADY_SEEN, f"Message-ID {read.message_id}")

    def _remember_if_the_cas(self, raw: bytes, read: Optional[ReadMail],
                             token_part1: Optional[str], sender: Optional[str],
                             mail_id: Hashable) -> None:
        """Remember a refused mail if it may be the CA's (see the module docstring): its From
        is a CA we wait on, and its signature, checked now, does not fail."""
        with self._lock:
            ours = sender is not None and any(same_mailbox(sender, known)
                                              for known in self._senders)
        if not token_part1 or not ours:
            return
        assert sender is not None
        try:
            if read is not None:
                check_authentic(raw, read, self._txt_lookup, self._smime_verifier)
            else:
                check_dkim(raw, identifiers.normalize_mailbox(sender).rpartition("@")[2],
                           self._txt_lookup)
        except MailRejectedError as failure:
            if failure.rule in RETRY_RULES or Relaxation.UNSIGNED in self.relaxations:
                self._remember(token_part1, None, mail_id)
            return  # a forgery: it must not make the genuine mail look like a copy
        except ValueError:
            return
        self._remember(token_part1, read.message_id if read is not None else None, mail_id)

    def _remember(self, token_part1: str, message_id: Optional[str], mail_id: Hashable) -> None:
        """Keep a judged mail's token-part1 (and the Message-ID of a verified one)."""
        with self._lock:
            self._see(self._seen_tokens, token_part1, mail_id, "token-part1")
            if message_id:
                self._see(self._seen_message_ids, message_id, mail_id, "message-id")

    def _see(self, seen: dict[str, Hashable], value: str, mail_id: Hashable, kind: str) -> None:
        """Remember ``value`` as judged in mail ``mail_id``; the caller holds the lock."""
        if value not in seen:
            seen[value] = mail_id
            self._unsaved.append(f"{SEEN_PREFIX}{kind}:{value}")

    def _match(self, read: ReadMail) -> ExpectedChallenge:
        """The pending challenge this mail is for; the caller holds the lock."""
        addressed = [challenge for challenge in self._expected
                     if any(same_mailbox(challenge.identifier, to) for to in read.recipients)]
        if not addressed:
            for identifier, how in self._settled.items():
                if any(same_mailbox(identifier, to) for to in read.recipients):
                    raise MailRejectedError(Rule.NO_LONGER_WAITING, f"{identifier}: {how}")
            raise MailRejectedError(Rule.NOT_FOR_US,
                                    ", ".join(printable(to) for to in read.recipients))
        for challenge in addressed:
            if same_mailbox(challenge.sender, read.sender):
                return challenge
        raise MailRejectedError(Rule.FROM_MISMATCH,
                                f"{read.sender!r}, expected {addressed[0].sender!r}")

    def _settle(self, identifier: str, how: str) -> None:
        """No longer wait for ``identifier``; the caller holds the lock."""
        self._settled.setdefault(identifier, how)
        self._expected = [challenge for challenge in self._expected
                          if not same_mailbox(challenge.identifier, identifier)]


def _describe(incoming: IncomingMail, mail: ChallengeMail) -> str:
    """A mail as the ambiguity message names it: where, its Message-ID, when it arrived."""
    arrived = incoming.arrived.astimezone(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC") if incoming.arrived else "unknown"
    return f"{incoming.label} (Message-ID {mail.message_id or '(none)'}, arrived {arrived})"
