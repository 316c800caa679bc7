"""The registry's memory: what a run judged, so that neither a replay nor a pre-emption works."""
import datetime
from pathlib import Path

import pytest

from certbot_email.protocol.challenge_mail import (
    ChallengeMail,
    ExpectedChallenge,
    MailRejectedError,
    Rule,
)
from certbot_email.reply_journal import AnsweredJournal
from certbot_email.reply_registry import ChallengeMailJudge, Verdict
from certbot_email.transport import IncomingMail
from tests.unit.challenge_mails import (
    ALICE,
    CA,
    DOWN,
    MESSAGE_ID,
    TOKEN1,
    Keys,
    headers,
    mail,
    sign,
)

BOB = "bob@example.com"
TOKEN2 = "Q" * 43
ARRIVED = datetime.datetime(2026, 11, 28, 12, 0, 5, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def keys() -> Keys:
    made = Keys()
    made.add(b"example.org")
    made.add_variants(b"example.org")
    return made


def judge_for(keys: Keys, journal: AnsweredJournal | None = None) -> ChallengeMailJudge:
    judge = ChallengeMailJudge(txt_lookup=keys.lookup, journal=journal)
    judge.expect(ExpectedChallenge(ALICE, CA))
    return judge


def arrival(uid: int, raw: bytes) -> IncomingMail:
    return IncomingMail(uid, raw, label=f"alice on imap.example.com:993/INBOX UID {uid}",
                        arrived=ARRIVED + datetime.timedelta(seconds=uid))


def rule_of(verdict: Verdict) -> Rule:
    assert isinstance(verdict, MailRejectedError), f"answered: {verdict}"
    return verdict.rule


# ---- replay and pre-emption: both orders ------------------------------------------------------

def test_a_copy_of_a_refused_genuine_mail_is_refused(keys: Keys) -> None:
    judge = judge_for(keys)
    genuine = sign(keys, mail())
    (first,) = judge.judge_batch([arrival(1, b"List-Id: <l.example>\r\n" + genuine)])
    assert rule_of(first) is Rule.LIST_HEADER
    (copy,) = judge.judge_batch([arrival(2, genuine)])
    assert rule_of(copy) is Rule.ALREADY_SEEN
    assert judge.pending() == [ExpectedChallenge(ALICE, CA)]  # still waiting for a real one


def test_a_forgery_with_the_cas_next_message_id_does_not_pre_empt_the_genuine_mail(
        keys: Keys) -> None:
    judge = judge_for(keys)
    forged = mail(headers(Subject=f"ACME: {TOKEN2}", Reply_To="evil@evil.example"))  # unsigned
    (refused,) = judge.judge_batch([arrival(1, forged)])
    assert rule_of(refused) is Rule.DKIM_MISSING
    (genuine,) = judge.judge_batch([arrival(2, sign(keys, mail()))])
    assert isinstance(genuine, ChallengeMail) and genuine.message_id == MESSAGE_ID


@pytest.mark.parametrize("forged", [
    mail(),  # unsigned
    mail(headers(To=BOB)),  # refused before its signature is looked at: NOT_FOR_US
    b"List-Id: <l.example>\r\n" + mail(),  # refused by a form rule
], ids=["unsigned", "not-for-us", "listed"])
def test_even_a_forgery_that_copies_the_genuine_token_does_not_pre_empt_it(
        keys: Keys, forged: bytes) -> None:
    judge = judge_for(keys)
    assert isinstance(judge.judge_batch([arrival(1, forged)])[0], MailRejectedError)
    assert isinstance(judge.judge_batch([arrival(2, sign(keys, mail()))])[0], ChallengeMail)


def test_a_forgery_signed_by_the_wrong_key_does_not_pre_empt_either(keys: Keys) -> None:
    judge = judge_for(keys)
    forged = sign(keys, mail(headers(Subject=f"ACME: {TOKEN2}")), private=keys.impostor)
    assert rule_of(judge.judge_batch([arrival(1, forged)])[0]) is Rule.DKIM_INVALID
    assert isinstance(judge.judge_batch([arrival(2, sign(keys, mail()))])[0], ChallengeMail)


def test_an_answered_message_id_is_refused_under_another_token(keys: Keys) -> None:
    judge = judge_for(keys)
    judge.mark_answered(judge.judge(sign(keys, mail())))
    resent = sign(keys, mail(headers(Subject=f"ACME: {TOKEN2}")))  # same Message-ID
    assert rule_of(judge.judge_batch([arrival(2, resent)])[0]) is Rule.ALREADY_ANSWERED


def test_the_same_token_twice_in_a_batch_is_one_challenge_answered_once(keys: Keys) -> None:
    judge = judge_for(keys)
    first, second = judge.judge_batch([arrival(1, sign(keys, mail())),
                                       arrival(2, sign(keys, mail()))])
    assert isinstance(first, ChallengeMail)
    assert rule_of(second) is Rule.ALREADY_SEEN


# ---- ambiguity -------------------------------------------------------------------------------

def test_two_different_passing_challenges_are_both_refused_and_the_challenge_given_up(
        keys: Keys) -> None:
    judge = judge_for(keys)
    judge.expect(ExpectedChallenge(BOB, CA))
    other = sign(keys, mail(headers(Subject=f"ACME: {TOKEN2}", Message_ID="<two@example.org>")))
    bobs = sign(keys, mail(headers(To=BOB, Subject="ACME: " + "B" * 43,
                                   Message_ID="<bob@example.org>")))
    verdicts = judge.judge_batch([arrival(1, sign(keys, mail())), arrival(2, other),
                                  arrival(3, bobs)])
    assert [rule_of(verdict) for verdict in verdicts[:2]] == [Rule.AMBIGUOUS, Rule.AMBIGUOUS]
    assert isinstance(verdicts[2], ChallengeMail)  # the other mailbox goes on
    why = str(verdicts[0])
    assert "UID 1 (Message-ID <A2299BB.FF7788@example.org>, arrived 2026-11-28 12:00:06 UTC)" \
        in why and "UID 2 (Message-ID <two@example.org>, arrived 2026-11-28 12:00:07 UTC)" in why
    assert verdicts[0].identifier == ALICE  # type: ignore[union-attr]
    assert [challenge.identifier for challenge in judge.pending()] == [BOB]
    later = sign(keys, mail(headers(Subject="ACME: " + "L" * 43, Message_ID="<l@example.org>")))
    refused = judge.judge_batch([arrival(4, later)])[0]
    assert rule_of(refused) is Rule.NO_LONGER_WAITING and "given up" in str(refused)


def test_a_newer_passing_forgery_does_not_win_and_the_genuine_is_not_not_for_us(
        keys: Keys) -> None:
    judge = judge_for(keys)
    newer = sign(keys, mail(headers(Subject=f"ACME: {TOKEN2}", Message_ID="<new@example.org>",
                                    Reply_To="evil@example.org")))
    verdicts = judge.judge_batch([arrival(1, sign(keys, mail())), arrival(2, newer)])
    assert {rule_of(verdict) for verdict in verdicts} == {Rule.AMBIGUOUS}


# ---- a key that could not be looked up ---------------------------------------------------

def test_a_mail_refused_for_dns_is_judged_again_as_itself_but_a_copy_is_not(keys: Keys) -> None:
    judge = judge_for(keys)
    raw = sign(keys, mail(), selector=DOWN)
    assert rule_of(judge.judge_batch([arrival(1, raw)])[0]) is Rule.DKIM_KEY_UNAVAILABLE
    assert rule_of(judge.judge_batch([arrival(2, raw)])[0]) is Rule.ALREADY_SEEN
    keys.failing.discard(keys.name(b"example.org", DOWN))  # the name server is back
    try:
        assert isinstance(judge.judge_batch([arrival(1, raw)])[0], ChallengeMail)
    finally:
        keys.failing.add(keys.name(b"example.org", DOWN))


# ---- the journal: what a later run must refuse -------------------------------------------------

def test_what_one_run_judged_a_later_run_refuses(keys: Keys, tmp_path: Path) -> None:
    journal = AnsweredJournal(str(tmp_path / "journal.json"))
    first_run = judge_for(keys, journal)
    stale = sign(keys, mail(), selector=DOWN)  # never answered: the key could not be looked up
    first_run.judge_batch([arrival(1, stale)])
    keys.failing.discard(keys.name(b"example.org", DOWN))
    try:
        later_run = judge_for(keys, AnsweredJournal(journal.path))
        assert rule_of(later_run.judge_batch([arrival(1, stale)])[0]) is Rule.ALREADY_SEEN
    finally:
        keys.failing.add(keys.name(b"example.org", DOWN))


def test_forgeries_leave_no_trace_in_the_journal(keys: Keys, tmp_path: Path) -> None:
    journal = AnsweredJournal(str(tmp_path / "journal.json"))
    judge = judge_for(keys, journal)
    judge.judge_batch([arrival(1, mail(headers(Message_ID="<predicted@example.org>")))])
    judge.judge_batch([arrival(2, sign(keys, mail(headers(Subject=f"ACME: {TOKEN2}"))))])
    saved = journal.load()
    assert f"seen token-part1:{TOKEN2}" in saved and f"seen message-id:{MESSAGE_ID}" in saved
    assert f"seen token-part1:{TOKEN1}" not in saved
    assert "seen message-id:<predicted@example.org>" not in saved


def test_a_refused_mail_from_someone_else_is_not_kept(keys: Keys, tmp_path: Path) -> None:
    journal = AnsweredJournal(str(tmp_path / "journal.json"))
    judge = judge_for(keys, journal)
    judge.judge_batch([arrival(1, sign(keys, mail(headers(From="x@example.org", To=BOB))))])
    assert journal.load() == set()


def test_an_answered_mail_is_in_the_journal_before_the_reply_goes_out(keys: Keys,
                                                                      tmp_path: Path) -> None:
    journal = AnsweredJournal(str(tmp_path / "journal.json"))
    judge = judge_for(keys, journal)
    judge.mark_answered(judge.judge(sign(keys, mail())))
    assert {f"token-part1:{TOKEN1}", f"message-id:{MESSAGE_ID}"} <= journal.load()
    assert rule_of(judge_for(keys, journal).judge_batch([arrival(9, sign(keys, mail()))])[0]) \
        is Rule.ALREADY_ANSWERED


# ---- only a verdict ever comes out ------------------------------------------------------------

def test_an_unexpected_error_inside_the_rules_is_a_refusal(keys: Keys) -> None:
    def exploding(name: bytes, timeout: float = 5) -> bytes:
        raise RuntimeError("a bug")
    judge = ChallengeMailJudge(txt_lookup=exploding)
    judge.expect(ExpectedChallenge(ALICE, CA))
    with pytest.raises(MailRejectedError, match="internal error RuntimeError") as caught:
        judge.judge(sign(keys, mail()))
    assert caught.value.rule is Rule.MALFORMED
