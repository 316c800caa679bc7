"""Judging challenge mails: a corpus of hostile and malformed mails, each rejected by its rule."""
import logging
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certbot_email.protocol.challenge_mail import (
    MAX_MAIL_BYTES,
    STRICT,
    ChallengeMailJudge,
    ExpectedChallenge,
    MailRejectedError,
    Relaxation,
    Rule,
    challenge_from_subject,
)
from tests.unit.challenge_mails import (
    ALICE,
    CA,
    MESSAGE_ID,
    SIGNED,
    TOKEN1,
    Headers,
    Keys,
    headers,
    mail,
    sign,
)


@pytest.fixture(scope="module")
def keys() -> Keys:
    made = Keys()
    made.add(b"example.org")
    made.add(b"evil.example")
    made.add(b"sub.example.org")
    return made


def judge_for(keys: Keys, relaxations: frozenset[Relaxation] = STRICT) -> ChallengeMailJudge:
    """A judge waiting on Alice's challenge from the CA."""
    judge = ChallengeMailJudge(relaxations, txt_lookup=keys.lookup)
    judge.expect(ExpectedChallenge(identifier=ALICE, sender=CA))
    return judge


def rejected(keys: Keys, raw: bytes, judge: Optional[ChallengeMailJudge] = None) -> Rule:
    """The rule a mail is rejected by; fails the test if it is accepted."""
    with pytest.raises(MailRejectedError) as caught:
        (judge or judge_for(keys)).judge(raw)
    return caught.value.rule


# ---- mails that pass ---------------------------------------------------------------------

def test_signed_challenge_yields_what_the_reply_needs(keys: Keys) -> None:
    found = judge_for(keys).judge(sign(keys, mail()))
    assert (found.sender, found.recipient, found.token_part1) == (CA, ALICE, TOKEN1)
    assert found.message_id == MESSAGE_ID
    assert found.reply_to is None and found.reply_address == CA
    assert found.waived == frozenset()


def test_reply_to_is_where_the_reply_goes(keys: Keys) -> None:
    raw = sign(keys, mail(headers(Reply_To="acme-validator@example.org")))
    found = judge_for(keys).judge(raw)
    assert found.reply_to == "acme-validator@example.org"
    assert found.reply_address == "acme-validator@example.org"


def test_acme4j_encoded_subject_v6(keys: Keys) -> None:
    subject = "=?UTF-8?Q?ACME:_LgYemJLy3F1LDki=20JrdIGbEzyFJyOyf=20=206vBdyZ1TG3sME=3D?="
    found = judge_for(keys).judge(sign(keys, mail(headers(Subject=subject))))
    assert found.token_part1 == TOKEN1


def test_folded_subject_drops_white_space(keys: Keys) -> None:
    folded = f"ACME:\r\n {TOKEN1[:20]}\r\n {TOKEN1[20:]}"
    found = judge_for(keys).judge(sign(keys, mail(headers(Subject=folded))))
    assert found.token_part1 == TOKEN1


def test_domain_of_identifier_compares_case_insensitively(keys: Keys) -> None:
    found = judge_for(keys).judge(sign(keys, mail(headers(To="alice@EXAMPLE.com"))))
    assert found.recipient == ALICE


def test_one_good_signature_among_bad_ones_is_enough(keys: Keys) -> None:
    raw = sign(keys, sign(keys, mail(), domain=b"evil.example"))
    assert judge_for(keys).judge(raw).token_part1 == TOKEN1


def test_odd_message_id_is_not_echoed(keys: Keys) -> None:
    raw = sign(keys, mail(headers(Message_ID="not an id")))
    assert judge_for(keys).judge(raw).message_id is None


# ---- the hostile corpus ------------------------------------------------------------------

def _nested(depth: int) -> tuple[Headers, str]:
    """A body of ``depth`` nested multiparts."""
    body = "leaf\r\n"
    for level in range(depth):
        body = (f"--b{level}\r\nContent-Type: multipart/mixed; boundary=\"b{level - 1}\"\r\n\r\n"
                f"{body}\r\n--b{level}--\r\n") if level else \
            f"--b0\r\nContent-Type: text/plain\r\n\r\n{body}--b0--\r\n"
    top = headers(Content_Type=f'multipart/mixed; boundary="b{depth - 1}"')
    return top, body


HOSTILE: dict[str, tuple[Rule, object]] = {
    # (expected rule, how to make the mail from the keys)
    "forged From, no signature": (
        Rule.DKIM_MISSING, lambda k: mail()),
    "From another CA address": (
        Rule.FROM_MISMATCH, lambda k: sign(k, mail(headers(From="other@example.org")))),
    "From/To mismatch: To is Bob": (
        Rule.NOT_FOR_US, lambda k: sign(k, mail(headers(To="bob@example.com")))),
    "local part case differs": (
        Rule.NOT_FOR_US, lambda k: sign(k, mail(headers(To="Alice@example.com")))),
    "missing Auto-Submitted": (
        Rule.NOT_AUTO_SUBMITTED, lambda k: sign(k, mail(headers(Auto_Submitted=None)))),
    "Auto-Submitted: no": (
        Rule.NOT_AUTO_SUBMITTED, lambda k: sign(k, mail(headers(Auto_Submitted="no")))),
    "body changed after signing": (
        Rule.DKIM_INVALID, lambda k: sign(k, mail()).replace(b"ACME challenge", b"ACME chall3nge")),
    "Subject changed after signing": (
        Rule.DKIM_INVALID,
        lambda k: sign(k, mail()).replace(TOKEN1.encode(), b"A" * 43 + b"=")),
    "signed with a key the DNS does not publish": (
        Rule.DKIM_INVALID, lambda k: sign(k, mail(), private=k.impostor)),
    "d= of another domain": (
        Rule.DKIM_DOMAIN, lambda k: sign(k, mail(), domain=b"evil.example")),
    "d= of a sub-domain of From's": (
        Rule.DKIM_DOMAIN, lambda k: sign(k, mail(), domain=b"sub.example.org")),
    "h= missing Subject": (
        Rule.DKIM_HEADERS,
        lambda k: sign(k, mail(), include=[h for h in SIGNED if h != b"subject"])),
    "h= missing Auto-Submitted": (
        Rule.DKIM_HEADERS,
        lambda k: sign(k, mail(), include=[h for h in SIGNED if h != b"auto-submitted"])),
    "l= tag": (
        Rule.DKIM_BODY_LENGTH, lambda k: sign(k, mail(), length=True)),
    "Re: Subject": (
        Rule.SUBJECT_IS_REPLY, lambda k: sign(k, mail(headers(Subject=f"Re: ACME: {TOKEN1}")))),
    "Fwd: Subject": (
        Rule.SUBJECT_IS_REPLY, lambda k: sign(k, mail(headers(Subject=f"Fwd: ACME: {TOKEN1}")))),
    "Subject without the label": (
        Rule.SUBJECT_NOT_CHALLENGE, lambda k: sign(k, mail(headers(Subject="Hello")))),
    "List-Id header": (
        Rule.LIST_HEADER, lambda k: sign(k, mail(extra=[("List-Id", "<acme.lists.example>")]))),
    "List-Unsubscribe header": (
        Rule.LIST_HEADER,
        lambda k: sign(k, mail(extra=[("List-Unsubscribe", "<mailto:x@lists.example>")]))),
    "two From headers, forged one added on top": (
        Rule.DUPLICATE_HEADER, lambda k: b"From: acme-generator@example.org\r\n" + sign(
            k, mail(headers(From="other@example.org")))),
    "two Subject headers": (
        Rule.DUPLICATE_HEADER,
        lambda k: b"Subject: ACME: " + b"B" * 43 + b"\r\n" + sign(k, mail())),
    "two addresses in From": (
        Rule.BAD_FROM, lambda k: sign(k, mail(headers(From=f"{CA}, evil@evil.example")))),
    "encoded word hiding the From address": (
        Rule.BAD_FROM,
        lambda k: sign(k, mail(headers(From="=?utf-8?q?acme-generator=40example.org?=")))),
    "no To": (
        Rule.BAD_TO, lambda k: sign(k, mail(headers(To=None)))),
    "Subject in a forbidden charset": (
        Rule.SUBJECT_CHARSET,
        lambda k: sign(k, mail(headers(Subject=f"=?iso-8859-1?q?ACME:_{TOKEN1[:-1]}?=")))),
    "Subject in a charset with a language tag": (
        Rule.SUBJECT_CHARSET,
        lambda k: sign(k, mail(headers(Subject="=?koi8-r*ru?q?ACME:_x?=")))),
    "CR/LF injected through the token": (
        Rule.SUBJECT_CONTROL,
        lambda k: sign(k, mail(headers(
            Subject=f"=?utf-8?q?ACME:_{TOKEN1[:-1]}=0D=0ABcc:_evil@evil.example?=")))),
    "NUL in the Subject": (
        Rule.SUBJECT_CONTROL,
        lambda k: sign(k, mail(headers(Subject=f"=?utf-8?q?ACME:_{TOKEN1[:-1]}=00?=")))),
    "token with characters outside base64url": (
        Rule.TOKEN_SYNTAX, lambda k: sign(k, mail(headers(Subject="ACME: abc+def/ghi" * 3)))),
    "token with impossible base64 length": (
        Rule.TOKEN_SYNTAX, lambda k: sign(k, mail(headers(Subject="ACME: " + "A" * 25)))),
    "token shorter than 128 bits": (
        Rule.TOKEN_TOO_SHORT, lambda k: sign(k, mail(headers(Subject="ACME: " + "A" * 20)))),
    "empty token": (
        Rule.TOKEN_SYNTAX, lambda k: sign(k, mail(headers(Subject="ACME:")))),
    "huge message": (
        Rule.TOO_LARGE, lambda k: mail(body="x" * 76 + "\r\n") * (MAX_MAIL_BYTES // 80 + 1)),
    "Reply-To smuggled behind a bare CR in an unsigned header": (
        Rule.MALFORMED,
        lambda k: b"X-Relay: ok\rReply-To: evil@evil.example\r\n" + sign(k, mail())),
    "nested multiparts": (
        Rule.NESTED_TOO_DEEP, lambda k: sign(k, mail(*_nested(12)))),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_mail_is_rejected_with_its_rule(keys: Keys, case: str) -> None:
    rule, make = HOSTILE[case]
    assert rejected(keys, make(keys)) is rule  # type: ignore[operator]


def test_corpus_is_large_enough() -> None:
    assert len(HOSTILE) >= 25


def test_second_copy_of_an_answered_challenge(keys: Keys) -> None:
    judge = judge_for(keys)
    raw = sign(keys, mail())
    judge.mark_answered(judge.judge(raw))
    assert rejected(keys, raw, judge) is Rule.ALREADY_ANSWERED


def test_same_token_under_a_new_message_id_is_still_answered(keys: Keys) -> None:
    judge = judge_for(keys)
    judge.mark_answered(judge.judge(sign(keys, mail())))
    again = sign(keys, mail(headers(Message_ID="<other@example.org>")))
    assert rejected(keys, again, judge) is Rule.ALREADY_ANSWERED


def test_fresh_challenge_after_the_answer_is_unexpected(keys: Keys) -> None:
    judge = judge_for(keys)
    judge.mark_answered(judge.judge(sign(keys, mail())))
    fresh = sign(keys, mail(headers(Subject="ACME: " + "Q" * 43, Message_ID="<n@example.org>")))
    assert rejected(keys, fresh, judge) is Rule.NOT_FOR_US
    assert judge.pending() == []


def test_nothing_pending_means_nothing_is_answered(keys: Keys) -> None:
    judge = ChallengeMailJudge(txt_lookup=keys.lookup)
    assert rejected(keys, sign(keys, mail()), judge) is Rule.NOT_FOR_US


def test_missing_dns_record_fails_dkim(keys: Keys) -> None:
    judge = ChallengeMailJudge(txt_lookup=lambda name, timeout=5: None)
    judge.expect(ExpectedChallenge(ALICE, CA))
    assert rejected(keys, sign(keys, mail()), judge) is Rule.DKIM_INVALID


def test_failing_dns_lookup_fails_dkim(keys: Keys) -> None:
    def broken(name: bytes, timeout: float = 5) -> bytes:
        raise LookupError("SERVFAIL")
    judge = ChallengeMailJudge(txt_lookup=broken)
    judge.expect(ExpectedChallenge(ALICE, CA))
    assert rejected(keys, sign(keys, mail()), judge) is Rule.DKIM_INVALID


def test_rejection_message_names_the_rule_and_detail(keys: Keys) -> None:
    with pytest.raises(MailRejectedError, match="d= is not the From domain.*evil.example"):
        judge_for(keys).judge(sign(keys, mail(), domain=b"evil.example"))


# ---- relaxations -------------------------------------------------------------------------

def test_relaxed_unsigned_lets_an_unsigned_mail_through_with_a_warning(
        keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    judge = judge_for(keys, frozenset({Relaxation.UNSIGNED}))
    with caplog.at_level(logging.WARNING):
        found = judge.judge(mail())
    assert found.waived == {Rule.DKIM_MISSING}
    assert "unsigned" in caplog.text and "no DKIM signature" in caplog.text


def test_relaxed_unsigned_warns_every_time(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    judge = ChallengeMailJudge({Relaxation.UNSIGNED}, txt_lookup=keys.lookup)
    judge.expect(ExpectedChallenge(ALICE, CA))
    judge.expect(ExpectedChallenge("bob@example.com", CA))
    with caplog.at_level(logging.WARNING):
        judge.judge(mail())
        judge.judge(mail(headers(To="bob@example.com")))
    assert caplog.text.count("lets a challenge mail through") == 2


def test_relaxed_unsigned_still_requires_auto_submitted(keys: Keys) -> None:
    judge = judge_for(keys, frozenset({Relaxation.UNSIGNED}))
    assert rejected(keys, mail(headers(Auto_Submitted=None)), judge) is Rule.NOT_AUTO_SUBMITTED


def test_relaxed_auto_submitted_still_requires_dkim(keys: Keys) -> None:
    judge = judge_for(keys, frozenset({Relaxation.NO_AUTO_SUBMITTED}))
    assert rejected(keys, mail(headers(Auto_Submitted=None)), judge) is Rule.DKIM_MISSING
    found = judge.judge(sign(keys, mail(headers(Auto_Submitted=None))))
    assert found.waived == {Rule.NOT_AUTO_SUBMITTED}


def test_relaxations_never_waive_from_or_subject_rules(keys: Keys) -> None:
    judge = judge_for(keys, frozenset(Relaxation))
    assert rejected(keys, mail(headers(From="evil@evil.example")), judge) is Rule.FROM_MISMATCH
    assert rejected(keys, mail(headers(Subject=f"Re: ACME: {TOKEN1}")), judge) \
        is Rule.SUBJECT_IS_REPLY


# ---- manual mode: a pasted Subject -------------------------------------------------------

@pytest.mark.parametrize("pasted", [
    f"ACME: {TOKEN1}", f"  ACME:   {TOKEN1[:10]} {TOKEN1[10:]}  ",
    "=?UTF-8?Q?ACME:_LgYemJLy3F1LDki=20JrdIGbEzyFJyOyf=20=206vBdyZ1TG3sME=3D?="])
def test_pasted_subject_gives_the_token(pasted: str) -> None:
    found = challenge_from_subject(pasted, ExpectedChallenge(ALICE, CA))
    assert (found.token_part1, found.recipient, found.reply_address) == (TOKEN1, ALICE, CA)
    assert Rule.DKIM_MISSING in found.waived


@pytest.mark.parametrize(("pasted", "rule"), [
    (f"Re: ACME: {TOKEN1}", Rule.SUBJECT_IS_REPLY),
    (f"ACME: {TOKEN1}\r\nBcc: evil@evil.example", Rule.SUBJECT_CONTROL),
    ("ACME: shorttoken", Rule.TOKEN_TOO_SHORT),
])
def test_bad_pasted_subject_is_rejected(pasted: str, rule: Rule) -> None:
    with pytest.raises(MailRejectedError) as caught:
        challenge_from_subject(pasted, ExpectedChallenge(ALICE, CA))
    assert caught.value.rule is rule


# ---- fuzzing -----------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_are_rejected_never_crash(raw: bytes) -> None:
    judge = ChallengeMailJudge(txt_lookup=lambda name, timeout=5: None)
    judge.expect(ExpectedChallenge(ALICE, CA))
    with pytest.raises(MailRejectedError):
        judge.judge(raw)


_header_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120)


@settings(max_examples=300, deadline=None)
@given(subject=_header_text, sender=_header_text, to=_header_text, extra=_header_text)
def test_arbitrary_header_values_are_rejected_never_crash(
        subject: str, sender: str, to: str, extra: str) -> None:
    judge = ChallengeMailJudge(txt_lookup=lambda name, timeout=5: None)
    judge.expect(ExpectedChallenge(ALICE, CA))
    raw = mail(headers(Subject=subject, From=sender, To=to), extra=[("X-Fuzz", extra)])
    with pytest.raises(MailRejectedError):
        judge.judge(raw)
