"""Judging challenge mails: a corpus of hostile and malformed mails, each rejected by its rule.

Every ``Rule`` is produced by at least one corpus mail (or sequence of mails, for the rules that
need a memory), and mutated genuine mails are fuzzed: a verdict, never another exception, and
never a passing mail that says something other than the genuine one.
"""
import logging
import re
from pathlib import Path
from typing import Callable, Optional, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certbot_email.protocol.challenge_mail import (
    MAX_MAIL_BYTES,
    STRICT,
    ChallengeMail,
    ExpectedChallenge,
    MailRejectedError,
    Relaxation,
    Rule,
    challenge_from_subject,
)
from certbot_email.protocol.mail_authenticity import SmimeVerifier
from certbot_email.reply_registry import ChallengeMailJudge, Verdict
from certbot_email.transport import IncomingMail
from certbot_email.transport.smime import openssl_verifier
from tests.unit.challenge_mails import (
    ALICE,
    CA,
    DOWN,
    MESSAGE_ID,
    REVOKED,
    SIGNED,
    SMALL,
    TEST_MODE,
    TOKEN1,
    Headers,
    Keys,
    headers,
    mail,
    sign,
)
from tests.unit.test_smime import Issuer, smime_signed

TOKEN2 = "Q" * 43


@pytest.fixture(scope="module")
def keys() -> Keys:
    made = Keys()
    made.add(b"example.org")
    made.add_variants(b"example.org")
    made.add(b"evil.example")
    made.add(b"sub.example.org")
    return made


@pytest.fixture(scope="module")
def trusted() -> Issuer:
    """The CA trusted to S/MIME-sign challenges in the corpus."""
    return Issuer("Corpus S/MIME CA")


@pytest.fixture(scope="module")
def smime_verifier(trusted: Issuer, tmp_path_factory: pytest.TempPathFactory) -> SmimeVerifier:
    return openssl_verifier(trusted.write(tmp_path_factory.mktemp("smime") / "ca.pem"))


def judge_for(keys: Keys, relaxations: frozenset[Relaxation] = STRICT,
              smime_verifier: Optional[SmimeVerifier] = None) -> ChallengeMailJudge:
    """A judge waiting on Alice's challenge from the CA."""
    judge = ChallengeMailJudge(relaxations, txt_lookup=keys.lookup, smime_verifier=smime_verifier)
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


#: A corpus entry makes, from the keys and the trusted S/MIME issuer, one mail or a sequence of
#: batches (the rule is the verdict on the last mail of the last batch).
Made = Union[bytes, list[list[bytes]]]
Maker = Callable[[Keys, Issuer], Made]


def _listed_then_clean(k: Keys, _issuer: Issuer) -> list[list[bytes]]:
    """The genuine mail refused once (a List-Id added after signing), then sent again clean."""
    genuine = sign(k, mail())
    return [[b"List-Id: <acme.lists.example>\r\n" + genuine], [genuine]]


def _two_challenges(k: Keys, _issuer: Issuer) -> list[list[bytes]]:
    """Two mails that pass, for one mailbox, with different token-part1, in one batch."""
    other = sign(k, mail(headers(Subject=f"ACME: {TOKEN2}", Message_ID="<two@example.org>")))
    return [[sign(k, mail()), other]]


def _many_fields(count: int) -> bytes:
    return mail(extra=[(f"X-Field-{n}", "v") for n in range(count)])


HOSTILE: dict[str, tuple[Rule, Maker]] = {
    # (expected rule, how to make the mail from the keys and the trusted S/MIME issuer)
    "forged From, no signature": (
        Rule.DKIM_MISSING, lambda k, _i: mail()),
    "From another CA address": (
        Rule.FROM_MISMATCH, lambda k, _i: sign(k, mail(headers(From="other@example.org")))),
    "From/To mismatch: To is Bob": (
        Rule.NOT_FOR_US, lambda k, _i: sign(k, mail(headers(To="bob@example.com")))),
    "local part case differs": (
        Rule.NOT_FOR_US, lambda k, _i: sign(k, mail(headers(To="Alice@example.com")))),
    "missing Auto-Submitted": (
        Rule.NOT_AUTO_SUBMITTED, lambda k, _i: sign(k, mail(headers(Auto_Submitted=None)))),
    "Auto-Submitted: no": (
        Rule.NOT_AUTO_SUBMITTED, lambda k, _i: sign(k, mail(headers(Auto_Submitted="no")))),
    "body changed after signing": (
        Rule.DKIM_INVALID,
        lambda k, _i: sign(k, mail()).replace(b"ACME challenge", b"ACME chall3nge")),
    "Subject changed after signing": (
        Rule.DKIM_INVALID,
        lambda k, _i: sign(k, mail()).replace(TOKEN1.encode(), b"A" * 43 + b"=")),
    "signed with a key the DNS does not publish": (
        Rule.DKIM_INVALID, lambda k, _i: sign(k, mail(), private=k.impostor)),
    "d= of another domain": (
        Rule.DKIM_DOMAIN, lambda k, _i: sign(k, mail(), domain=b"evil.example")),
    "d= of a sub-domain of From's": (
        Rule.DKIM_DOMAIN, lambda k, _i: sign(k, mail(), domain=b"sub.example.org")),
    "h= missing Subject": (
        Rule.DKIM_HEADERS,
        lambda k, _i: sign(k, mail(), include=[h for h in SIGNED if h != b"subject"])),
    "h= missing Auto-Submitted": (
        Rule.DKIM_HEADERS,
        lambda k, _i: sign(k, mail(), include=[h for h in SIGNED if h != b"auto-submitted"])),
    "l= tag": (
        Rule.DKIM_BODY_LENGTH, lambda k, _i: sign(k, mail(), length=True)),
    "Re: Subject": (
        Rule.SUBJECT_IS_REPLY, lambda k, _i: sign(k, mail(headers(Subject=f"Re: ACME: {TOKEN1}")))),
    "Fwd: Subject": (
        Rule.SUBJECT_IS_REPLY,
        lambda k, _i: sign(k, mail(headers(Subject=f"Fwd: ACME: {TOKEN1}")))),
    "Subject without the label": (
        Rule.SUBJECT_NOT_CHALLENGE, lambda k, _i: sign(k, mail(headers(Subject="Hello")))),
    "List-Id header": (
        Rule.LIST_HEADER, lambda k, _i: sign(k, mail(extra=[("List-Id", "<acme.lists.example>")]))),
    "List-Unsubscribe header": (
        Rule.LIST_HEADER,
        lambda k, _i: sign(k, mail(extra=[("List-Unsubscribe", "<mailto:x@lists.example>")]))),
    "two From headers, forged one added on top": (
        Rule.DUPLICATE_HEADER, lambda k, _i: b"From: acme-generator@example.org\r\n" + sign(
            k, mail(headers(From="other@example.org")))),
    "two Subject headers": (
        Rule.DUPLICATE_HEADER,
        lambda k, _i: b"Subject: ACME: " + b"B" * 43 + b"\r\n" + sign(k, mail())),
    "two addresses in From": (
        Rule.BAD_FROM, lambda k, _i: sign(k, mail(headers(From=f"{CA}, evil@evil.example")))),
    "encoded word hiding the From address": (
        Rule.BAD_FROM,
        lambda k, _i: sign(k, mail(headers(From="=?utf-8?q?acme-generator=40example.org?=")))),
    "no To": (
        Rule.BAD_TO, lambda k, _i: sign(k, mail(headers(To=None)))),
    "Subject in a forbidden charset": (
        Rule.SUBJECT_CHARSET,
        lambda k, _i: sign(k, mail(headers(Subject=f"=?iso-8859-1?q?ACME:_{TOKEN1[:-1]}?=")))),
    "Subject in a charset with a language tag": (
        Rule.SUBJECT_CHARSET,
        lambda k, _i: sign(k, mail(headers(Subject="=?koi8-r*ru?q?ACME:_x?=")))),
    "CR/LF injected through the token": (
        Rule.SUBJECT_CONTROL,
        lambda k, _i: sign(k, mail(headers(
            Subject=f"=?utf-8?q?ACME:_{TOKEN1[:-1]}=0D=0ABcc:_evil@evil.example?=")))),
    "NUL in the Subject": (
        Rule.SUBJECT_CONTROL,
        lambda k, _i: sign(k, mail(headers(Subject=f"=?utf-8?q?ACME:_{TOKEN1[:-1]}=00?=")))),
    "token with characters outside base64url": (
        Rule.TOKEN_SYNTAX, lambda k, _i: sign(k, mail(headers(Subject="ACME: abc+def/ghi" * 3)))),
    "token with impossible base64 length": (
        Rule.TOKEN_SYNTAX, lambda k, _i: sign(k, mail(headers(Subject="ACME: " + "A" * 25)))),
    "token shorter than 128 bits": (
        Rule.TOKEN_TOO_SHORT, lambda k, _i: sign(k, mail(headers(Subject="ACME: " + "A" * 20)))),
    "empty token": (
        Rule.TOKEN_SYNTAX, lambda k, _i: sign(k, mail(headers(Subject="ACME:")))),
    "huge message": (
        Rule.TOO_LARGE, lambda k, _i: mail(body="x" * 76 + "\r\n") * (MAX_MAIL_BYTES // 80 + 1)),
    "Reply-To smuggled behind a bare CR in an unsigned header": (
        Rule.MALFORMED,
        lambda k, _i: b"X-Relay: ok\rReply-To: evil@evil.example\r\n" + sign(k, mail())),
    "nested multiparts": (
        Rule.NESTED_TOO_DEEP, lambda k, _i: sign(k, mail(*_nested(12)))),
    # -- RFC 8301 and key records
    "a=rsa-sha1, which dkimpy accepts": (
        Rule.DKIM_ALGORITHM, lambda k, _i: sign(k, mail(), algorithm=b"rsa-sha1")),
    "key record in test mode (t=y)": (
        Rule.DKIM_TEST_KEY, lambda k, _i: sign(k, mail(), selector=TEST_MODE)),
    "768-bit RSA key": (
        Rule.DKIM_KEY_TOO_SMALL, lambda k, _i: sign(k, mail(), selector=SMALL)),
    "revoked key (empty p=)": (
        Rule.DKIM_NO_KEY, lambda k, _i: sign(k, mail(), selector=REVOKED)),
    "selector with no key record (NXDOMAIN)": (
        Rule.DKIM_NO_KEY, lambda k, _i: sign(k, mail(), selector=b"none", private=k.impostor)),
    "name server down for the key": (
        Rule.DKIM_KEY_UNAVAILABLE, lambda k, _i: sign(k, mail(), selector=DOWN)),
    "h= listing 65 headers": (
        Rule.DKIM_INVALID, lambda k, _i: sign(k, mail(), include=[*SIGNED] + [b"x"] * 52)),
    "selector that is no DNS name": (
        Rule.DKIM_INVALID,
        lambda k, _i: sign(k, mail(), selector=b"a..b", private=k.impostor)),
    # -- headers the parser had to repair, and who sent it
    "display name that looks like the CA's address before the real angle-addr": (
        Rule.HEADER_DEFECT, lambda k, _i: sign(k, mail(headers(From=f"{CA} <evil@evil.example>")))),
    "To with a stray angle bracket": (
        Rule.HEADER_DEFECT, lambda k, _i: sign(k, mail(headers(To=f"<{ALICE}>>")))),
    "Reply-To repaired by the parser": (
        Rule.HEADER_DEFECT,
        lambda k, _i: sign(k, mail(headers(
            Reply_To="acme-validator@example.org evil@evil.example")))),
    "Cc with two addresses and no comma": (
        Rule.HEADER_DEFECT, lambda k, _i: sign(k, mail(headers(Cc="a@example.org b@example.org")))),
    "Sender of another mailbox": (
        Rule.SENDER_MISMATCH,
        lambda k, _i: sign(k, mail(headers(Sender="bob@example.org")))),
    "Auto-Submitted: auto-replied": (
        Rule.NOT_AUTO_SUBMITTED,
        lambda k, _i: sign(k, mail(headers(Auto_Submitted="auto-replied")))),
    # -- bytes no challenge mail has
    "raw 8-bit byte in the To local part": (
        Rule.MALFORMED, lambda k, _i: sign(k, mail().replace(b"<alice@", b"<al\xffice@"))),
    "header with an empty name (dkimpy cannot parse it)": (
        Rule.MALFORMED, lambda k, _i: mail(extra=[("", "value")])),
    "mbox From_ line first": (
        Rule.MALFORMED,
        lambda k, _i: b"From ca@example.org Sat Dec  5 10:08:55 2020\r\n" + sign(k, mail())),
    "continuation line before any header": (
        Rule.MALFORMED, lambda k, _i: b" folded\r\n" + sign(k, mail())),
    # -- caps checked before the parser runs
    "130,000 addresses in From": (
        Rule.HEADER_LIMIT, lambda k, _i: mail(headers(From=",".join(["a@b"] * 130_000)))
        [:MAX_MAIL_BYTES]),
    "fifteen addresses in a short From": (
        Rule.HEADER_LIMIT, lambda k, _i: sign(k, mail(headers(From=",".join([CA] * 15))))),
    "huge folded header": (
        Rule.HEADER_LIMIT,
        lambda k, _i: sign(k, mail(extra=[("X-Huge", "\r\n ".join(["x" * 70] * 400))]))),
    "header block over 64 KiB": (
        Rule.HEADER_LIMIT,
        lambda k, _i: mail(extra=[(f"X-Pad-{n}", "y" * 900) for n in range(80)])),
    "too many header fields": (
        Rule.HEADER_LIMIT, lambda k, _i: _many_fields(300)),
    "nine DKIM signatures": (
        Rule.HEADER_LIMIT, lambda k, _i: b"".join([sign(k, mail()).split(b"\r\n ", 1)[0]
                                                  + b"\r\n"] * 8) + sign(k, mail())),
    # -- S/MIME instead of DKIM
    "S/MIME signed by a CA nobody trusts": (
        Rule.SMIME_INVALID, lambda k, _i: smime_signed(mail(), Issuer("Untrusted CA"))),
    "S/MIME signer certificate for another address": (
        Rule.SMIME_SIGNER, lambda k, i: smime_signed(mail(), i, signer="evil@example.org")),
    "S/MIME outer Reply-To not in the protected copy": (
        Rule.SMIME_HEADER_PROTECTION,
        lambda k, i: b"Reply-To: evil@evil.example\r\n" + smime_signed(mail(), i)),
    # -- the memory of a run
    "copy of a genuine challenge that was refused": (Rule.ALREADY_SEEN, _listed_then_clean),
    "second copy of an answered challenge": (
        Rule.ALREADY_ANSWERED, lambda k, _i: [[sign(k, mail())], [sign(k, mail())]]),
    "a new challenge after the answer": (
        Rule.NO_LONGER_WAITING,
        lambda k, _i: [[sign(k, mail())], [sign(k, mail(headers(
            Subject=f"ACME: {TOKEN2}", Message_ID="<later@example.org>")))]]),
    "two different challenges for one mailbox in one batch": (Rule.AMBIGUOUS, _two_challenges),
}


def verdicts(keys: Keys, batches: list[list[bytes]],
             smime_verifier: Optional[SmimeVerifier] = None) -> list[Verdict]:
    """Each batch judged as the mailbox worker does, what passed answered; every verdict."""
    judge = judge_for(keys, smime_verifier=smime_verifier)
    found: list[Verdict] = []
    uid = 0
    for batch in batches:
        arrivals = []
        for raw in batch:
            uid += 1
            arrivals.append(IncomingMail(uid, raw, label=f"INBOX UID {uid}"))
        judged = judge.judge_batch(arrivals)
        for verdict in judged:
            if isinstance(verdict, ChallengeMail):
                judge.mark_answered(verdict)
        found += judged
    return found


def corpus_rule(keys: Keys, issuer: Issuer, verifier: SmimeVerifier, case: str) -> Rule:
    """The rule the corpus entry's last mail is refused by; fails the test if it passes."""
    made = HOSTILE[case][1](keys, issuer)
    last = verdicts(keys, made if isinstance(made, list) else [[made]], verifier)[-1]
    assert isinstance(last, MailRejectedError), f"{case}: answered"
    return last.rule


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_mail_is_rejected_with_its_rule(keys: Keys, trusted: Issuer,
                                                 smime_verifier: SmimeVerifier, case: str) -> None:
    assert corpus_rule(keys, trusted, smime_verifier, case) is HOSTILE[case][0]


def test_corpus_is_large_enough() -> None:
    assert len(HOSTILE) >= 60


def test_every_rule_is_produced_by_a_corpus_mail() -> None:
    assert {rule for rule, _make in HOSTILE.values()} == set(Rule)


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


def test_fresh_challenge_after_the_answer_is_no_longer_waited_for(keys: Keys) -> None:
    judge = judge_for(keys)
    judge.mark_answered(judge.judge(sign(keys, mail())))
    fresh = sign(keys, mail(headers(Subject="ACME: " + "Q" * 43, Message_ID="<n@example.org>")))
    with pytest.raises(MailRejectedError, match=f"no longer waiting .*{ALICE}.*answered") as caught:
        judge.judge(fresh)
    assert caught.value.rule is Rule.NO_LONGER_WAITING
    assert judge.pending() == []


def test_nothing_pending_means_nothing_is_answered(keys: Keys) -> None:
    judge = ChallengeMailJudge(txt_lookup=keys.lookup)
    assert rejected(keys, sign(keys, mail()), judge) is Rule.NOT_FOR_US


def test_missing_dns_record_is_no_key(keys: Keys) -> None:
    judge = ChallengeMailJudge(txt_lookup=lambda name, timeout=5: None)
    judge.expect(ExpectedChallenge(ALICE, CA))
    with pytest.raises(MailRejectedError, match="no TXT record at sel._domainkey.example.org."):
        judge.judge(sign(keys, mail()))


def test_failing_dns_lookup_is_not_a_bad_signature(keys: Keys) -> None:
    def broken(name: bytes, timeout: float = 5) -> bytes:
        raise LookupError("TXT lookup at 192.0.2.53 failed: SERVFAIL; set --some-option")
    judge = ChallengeMailJudge(txt_lookup=broken)
    judge.expect(ExpectedChallenge(ALICE, CA))
    with pytest.raises(MailRejectedError) as caught:
        judge.judge(sign(keys, mail()))
    assert caught.value.rule is Rule.DKIM_KEY_UNAVAILABLE
    assert "192.0.2.53" in str(caught.value) and "--some-option" in str(caught.value)
    assert "not a bad signature" in str(caught.value)


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
        judge.judge(mail(headers(To="bob@example.com", Subject=f"ACME: {TOKEN2}")))
    assert caplog.text.count("lets a challenge mail through") == 2


def test_relaxed_unsigned_still_requires_auto_submitted(keys: Keys) -> None:
    judge = judge_for(keys, frozenset({Relaxation.UNSIGNED}))
    assert rejected(keys, mail(headers(Auto_Submitted=None)), judge) is Rule.NOT_AUTO_SUBMITTED


def test_relaxed_auto_submitted_still_requires_dkim(keys: Keys) -> None:
    relaxed = frozenset({Relaxation.NO_AUTO_SUBMITTED})
    assert rejected(keys, mail(headers(Auto_Submitted=None)), judge_for(keys, relaxed)) \
        is Rule.DKIM_MISSING
    found = judge_for(keys, relaxed).judge(sign(keys, mail(headers(Auto_Submitted=None))))
    assert found.waived == {Rule.NOT_AUTO_SUBMITTED}


@pytest.mark.parametrize("value", ["no", "auto-replied", "auto-notified", "", "auto-generatedX"])
def test_relaxed_auto_submitted_waives_only_a_missing_header(keys: Keys, value: str) -> None:
    judge = judge_for(keys, frozenset({Relaxation.NO_AUTO_SUBMITTED}))
    with pytest.raises(MailRejectedError, match="Auto-Submitted: ") as caught:
        judge.judge(sign(keys, mail(headers(Auto_Submitted=value))))
    assert caught.value.rule is Rule.NOT_AUTO_SUBMITTED


def test_relaxed_unsigned_waives_every_authenticity_rule(keys: Keys) -> None:
    for selector in (TEST_MODE, SMALL, DOWN):
        judge = judge_for(keys, frozenset({Relaxation.UNSIGNED}))
        found = judge.judge(sign(keys, mail(), selector=selector))
        assert len(found.waived) == 1 and next(iter(found.waived)).name.startswith("DKIM_")


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


# ---- fuzzing mutated genuine mails ---------------------------------------------------------

#: Bytes that break parsers: NUL, bare CR/LF, 8-bit, UTF-8 and broken UTF-8, MIME and DKIM syntax.
_NASTY = [b"\x00", b"\r", b"\n", b"\r\n ", b"\xff", b"\xc3\xa9", b"\xc3", b"\xed\xa0\x80", b":",
          b";", b",", b"<", b">", b"\"", b"(", b"=?utf-8?q?", b"?=", b"@", b"\t", b" ",
          b"boundary=", b"DKIM-Signature: v=1; a=rsa-sha1; d=example.org; s=sel; b=; bh=; h=from",
          b"From: ", b"To: ", b"Reply-To: evil@evil.example", b"Sender: ", b"List-Id: x"]

_mutation = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 2000),
              st.one_of(st.sampled_from(_NASTY), st.binary(min_size=1, max_size=8))),
    st.tuples(st.just("delete"), st.integers(0, 2000), st.integers(1, 40)),
    st.tuples(st.just("replace"), st.integers(0, 2000), st.sampled_from(_NASTY)),
    st.tuples(st.just("duplicate-line"), st.integers(0, 40), st.just(b"")),
    st.tuples(st.just("truncate"), st.integers(0, 2000), st.just(b"")),
)


def _mutate(raw: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    """``raw`` with each mutation applied in turn, positions taken modulo the length."""
    for kind, position, payload in mutations:
        at = position % (len(raw) + 1)
        if kind == "insert":
            raw = raw[:at] + payload + raw[at:]  # type: ignore[operator]
        elif kind == "delete":
            raw = raw[:at] + raw[at + int(payload):]  # type: ignore[call-overload]
        elif kind == "replace":
            raw = raw[:at] + payload + raw[at + 1:]  # type: ignore[operator]
        elif kind == "duplicate-line":
            lines = raw.split(b"\r\n")
            line = lines[position % len(lines)]
            lines.insert(position % len(lines), line)
            raw = b"\r\n".join(lines)
        else:
            raw = raw[:at]
    return raw


@pytest.fixture(scope="module")
def genuine_mails(keys: Keys) -> list[bytes]:
    """Challenges that pass: plain, with Reply-To, with a folded and an encoded Subject."""
    subject = "=?UTF-8?Q?ACME:_LgYemJLy3F1LDki=20JrdIGbEzyFJyOyf=20=206vBdyZ1TG3sME=3D?="
    return [sign(keys, mail()),
            sign(keys, mail(headers(Reply_To="acme-validator@example.org", Cc="x@example.org"))),
            sign(keys, mail(headers(Subject=f"ACME:\r\n {TOKEN1[:20]}\r\n {TOKEN1[20:]}"))),
            sign(keys, mail(headers(Subject=subject)))]


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, 3), mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_genuine_mails_get_a_verdict_and_never_a_changed_answer(
        keys: Keys, genuine_mails: list[bytes], which: int,
        mutations: list[tuple[str, int, object]]) -> None:
    genuine = judge_for(keys).judge(genuine_mails[which])
    try:
        found = judge_for(keys).judge(_mutate(genuine_mails[which], mutations))
    except MailRejectedError as rejection:
        assert not rejection.detail.startswith("internal error"), rejection
        return
    # Whatever still passes says exactly what the CA signed.
    assert (found.sender, found.recipient, found.token_part1, found.reply_address,
            found.message_id) == (genuine.sender, genuine.recipient, genuine.token_part1,
                                  genuine.reply_address, genuine.message_id)


def test_a_signature_listing_too_many_headers_is_not_verified(keys: Keys) -> None:
    with pytest.raises(MailRejectedError, match="h= lists 65 headers, over 64"):
        judge_for(keys).judge(sign(keys, mail(), include=[*SIGNED] + [b"x"] * 52))


def test_a_header_line_dkimpy_cannot_parse_is_malformed(keys: Keys) -> None:
    from certbot_email.protocol.mail_authenticity import check_dkim
    with pytest.raises(MailRejectedError, match="dkimpy: Unexpected characters") as caught:
        check_dkim(b": value\r\n" + sign(keys, mail()), "example.org", keys.lookup)
    assert caught.value.rule is Rule.MALFORMED


def test_log_text_escapes_control_characters_and_surrogates() -> None:
    rejection = MailRejectedError(Rule.BAD_TO, "a\r\nFake: line \udcff\x00")
    assert "\r" not in str(rejection) and "\n" not in str(rejection)
    assert "\\r\\nFake: line \\udcff\\x00" in str(rejection)


README = Path(__file__).resolve().parents[2] / "README.rst"


def test_readme_lists_every_rule_once_in_the_order_they_apply() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("Strict checks, and the relaxations\n"):
                   text.index("Manual mode\n-----------")]
    rows = re.findall(r"^``([A-Z_]+)``\s{2,}\S", section, re.MULTILINE)
    assert rows == [rule.name for rule in Rule]
