"""Manual mode of email-reply: the user hands over the challenge mail and sends the reply.

For mailboxes the plugin cannot log in to (OAuth-only providers, no IMAP). The mail is given
as a saved ``.eml`` file, judged by the same strict rules as over IMAP, or as its pasted
Subject, in which case the user vouches for what a Subject cannot show.
"""
import logging
import os

from certbot import achallenges, errors
from certbot.display import util as display_util

from certbot_email import certbot_compat
from certbot_email.protocol import keyauth
from certbot_email.protocol.challenge_mail import (
    ChallengeMail,
    ExpectedChallenge,
    MailRejectedError,
    challenge_from_subject,
)
from certbot_email.protocol.reply_mail import reply_instructions
from certbot_email.reply_registry import ChallengeMailJudge

logger = logging.getLogger(__name__)

#: How saved mails are usually named; a Subject ("ACME: <base64url>") never ends like this.
MAIL_FILE_SUFFIXES = (".eml", ".msg", ".txt", ".mbox")


def answer_by_hand(achall: achallenges.AnnotatedChallenge, judge: ChallengeMailJudge,
                   joining: keyauth.TokenJoining) -> ChallengeMail:
    """Ask for one identifier's challenge mail until one passes, then show the reply to send."""
    expected = ExpectedChallenge(identifier=certbot_compat.challenge_identifier(achall),
                                 sender=achall.chall.sender)
    judge.expect(expected)
    prompt = (f"The CA mails a challenge from {expected.sender} to {expected.identifier}, with "
              f"the Subject 'ACME: <token>'. Save that mail with all its headers as a file "
              f"and enter the file's path, or paste the mail's Subject:")
    while True:
        code, answer = display_util.input_text(prompt, force_interactive=True)
        if code != display_util.OK:
            raise errors.PluginError(f"No challenge mail was given for {expected.identifier}")
        answer = answer.strip()
        if looks_like_path(answer) and not os.path.exists(os.path.expanduser(answer)):
            display_util.notify(f"There is no file {answer!r}. Check the path of the saved "
                                f"mail, or paste the mail's Subject instead.")
            continue
        try:
            mail = _challenge(answer, expected, judge)
            break
        except MailRejectedError as rejection:
            display_util.notify(f"That mail is not answered: {rejection} "
                                f"[{rejection.rule.name}]. Give another one.")
        except OSError as error:
            display_util.notify(f"Cannot read {answer!r}: {error}")
    judge.mark_answered(mail)
    digest = achall.chall.validation(achall.account_key, token_part1=mail.token_part1,
                                     joining=joining)
    display_util.notification(
        f"Send this reply from {mail.recipient} as plain text, exactly as shown, then press "
        f"Enter:\n\n{reply_instructions(mail, digest)}",
        pause=True, wrap=False, force_interactive=True)
    return mail


def looks_like_path(answer: str) -> bool:
    """A file name, not a Subject: token-part1 is base64url, so a Subject has no ``/``."""
    return not answer.upper().startswith("ACME:") and (
        os.sep in answer or answer.startswith("~") or answer.lower().endswith(MAIL_FILE_SUFFIXES))


def _challenge(answer: str, expected: ExpectedChallenge,
               judge: ChallengeMailJudge) -> ChallengeMail:
    """Judge a saved mail file, or take a pasted Subject on the user's word."""
    path = os.path.expanduser(answer)
    if looks_like_path(answer) or os.path.isfile(path):
        with open(path, "rb") as file:
            raw = file.read()
        return judge.judge(raw, mail_id=raw)  # the same file again is the same mail
    mail = challenge_from_subject(answer, expected)
    logger.warning("Pasted Subject for %s: From, To, Auto-Submitted and DKIM were not checked; "
                   "you vouched that the mail came from %s. If the CA set a Reply-To, send the "
                   "reply there instead of to %s.", expected.identifier, expected.sender,
                   expected.sender)
    return mail
