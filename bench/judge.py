"""What judging one challenge mail costs, for the worst shapes a stranger can send (<= 256 KiB).

Each shape is judged --rounds times by a fresh ``ChallengeMailJudge`` (DKIM keys from memory,
so no DNS is timed), rounds interleaved so that machine noise hits every shape alike. Prints
the median per shape, its verdict, and the ratio against the baseline measured in the same run:
judging one small genuine challenge mail. Target: every shape well under 100 ms.

    python bench/judge.py [--rounds N]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import dkim

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certbot_email.protocol.challenge_mail import (  # noqa: E402  (repository root first)
    MAX_MAIL_BYTES,
    ExpectedChallenge,
    MailRejectedError,
)
from certbot_email.reply_registry import ChallengeMailJudge  # noqa: E402
from tests.unit.challenge_mails import (  # noqa: E402
    ALICE,
    CA,
    SELECTOR,
    SIGNED,
    TOKEN1,
    Keys,
    headers,
    mail,
    sign,
)

BASELINE = "genuine challenge (1 KiB)"
TARGET_MS = 100.0


def _fill(raw: bytes) -> bytes:
    """``raw`` cut to the size limit."""
    return raw[:MAX_MAIL_BYTES]


def _body(size: int) -> str:
    return ("x" * 76 + "\r\n") * (size // 78)


def shapes(keys: Keys) -> dict[str, bytes]:
    """Shape name -> the mail; every one at most MAX_MAIL_BYTES."""
    genuine = sign(keys, mail())
    big_body = sign(keys, mail(body=_body(MAX_MAIL_BYTES - 6000)))
    signature = big_body.split(b"From:", 1)[0]
    unsigned = mail(body=_body(MAX_MAIL_BYTES - 6000))
    relaxed = dkim.sign(unsigned, SELECTOR, b"example.org",
                        keys.private[SELECTOR + b"/example.org"], include_headers=SIGNED,
                        canonicalize=(b"relaxed", b"relaxed"))
    fields = mail(extra=[(f"X-F{n}", "v") for n in range(240)])

    def wide(names: int) -> bytes:
        """Two signatures whose h= lists ``names`` headers, over a mail they no longer fit."""
        signature = dkim.sign(fields, SELECTOR, b"example.org",
                              keys.private[SELECTOR + b"/example.org"],
                              include_headers=[*SIGNED, *(f"x-{n}".encode()
                                                          for n in range(names - len(SIGNED)))])
        return signature * 2 + fields.replace(b"ACME: L", b"ACME: M")
    nested = "leaf\r\n"
    for level in range(2000):
        nested = f"--b{level}\r\nContent-Type: multipart/mixed; boundary=b{level + 1}\r\n\r\n" \
                 f"{nested}--b{level}--\r\n"
    siblings = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\n{n}\r\n" for n in range(6000))
    return {
        BASELINE: genuine,
        "genuine, 250 KiB body": big_body,
        "130,000 addresses in From": _fill(mail(headers(From=",".join(["a@b"] * 130_000)))),
        "From: 10 addresses, 2 KiB of encoded-word names": mail(headers(From=", ".join(
            [f"=?utf-8?q?{'=C3=A9' * 30}?= <ca{n}@example.org>" for n in range(10)])[:2000])),
        "From: 2 KiB of nested comments": mail(headers(From="(" * 900 + ")" * 900 + CA)),
        "Subject: 2 KiB of encoded words": mail(headers(
            Subject=" ".join(["=?utf-8?q?ACME:?="] * 110))),
        "To: 130,000 commas": _fill(mail(headers(To="," * 260_000))),
        "one 250 KiB folded header": _fill(mail(extra=[(
            "X-Folded", "\r\n ".join(["y" * 70] * 3600))])),
        "256 header fields of 250 bytes": mail(extra=[(f"X-F{n}", "z" * 240)
                                                      for n in range(250)]),
        "60 header fields of 900 bytes, signed": sign(keys, mail(extra=[(
            f"X-Pad{n}", "p" * 900) for n in range(60)])),
        "8 copies of a valid signature, 250 KiB body": signature * 7 + big_body,
        "8 relaxed signatures, 250 KiB body changed": relaxed * 8 + unsigned[:-3] + b"y\r\n",
        "the same, refused first by a List-Id": b"List-Id: <l.example>\r\n" + relaxed * 8
        + unsigned[:-3] + b"y\r\n",
        "2 signatures, h= of 64 names, 250 fields": wide(64),
        "2 signatures, h= of 1500 names, 250 fields": wide(1500),
        "2000-deep MIME nesting": _fill(mail(
            headers(Content_Type="multipart/mixed; boundary=b0"), body=nested)),
        "6000 sibling MIME parts, signed": sign(keys, _fill(mail(
            headers(Content_Type="multipart/mixed; boundary=b"), body=siblings))),
        "256 KiB without a line break": b"X" * MAX_MAIL_BYTES,
        "256 KiB of empty lines": b"\r\n" * (MAX_MAIL_BYTES // 2),
        "256 KiB of continuation lines": b"Subject: a\r\n" + b" b\r\n" * (MAX_MAIL_BYTES // 5),
        "raw 8-bit bytes in every header": mail(extra=[(
            f"X-8bit{n}", "\u00ff" * 10) for n in range(200)]).replace(b"\xc3\xbf", b"\xff"),
    }


def judge_once(keys: Keys, raw: bytes) -> tuple[float, str]:
    """Seconds to judge ``raw`` with a fresh judge, and the verdict."""
    judge = ChallengeMailJudge(txt_lookup=keys.lookup)
    judge.expect(ExpectedChallenge(ALICE, CA))
    start = time.perf_counter()
    try:
        found = judge.judge(raw)
        verdict = "answered" if found.token_part1 == TOKEN1 else "answered (other token)"
    except MailRejectedError as rejection:
        verdict = rejection.rule.name
    return time.perf_counter() - start, verdict


def main() -> None:
    """Interleave the shapes for --rounds rounds; print medians, verdicts and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    keys = Keys()
    keys.add(b"example.org")
    mails = shapes(keys)
    assert all(len(raw) <= MAX_MAIL_BYTES for raw in mails.values())
    times: dict[str, list[float]] = {name: [] for name in mails}
    verdicts: dict[str, str] = {}
    for _round in range(args.rounds):
        for name, raw in mails.items():
            elapsed, verdicts[name] = judge_once(keys, raw)
            times[name].append(elapsed)
    base = statistics.median(times[BASELINE])
    print(f"median of {args.rounds} judgements per shape (fresh judge each, keys in memory):")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:48} {len(mails[name]) / 1024:6.0f} KiB {median * 1000:8.2f} ms "
              f"{median / base:7.1f}x  {verdicts[name]}")
    worst = max(times, key=lambda name: statistics.median(times[name]))
    worst_ms = statistics.median(times[worst]) * 1000
    print(f"worst: {worst} at {worst_ms:.2f} ms ({worst_ms / (base * 1000):.1f}x the genuine "
          f"mail's {base * 1000:.2f} ms); target under {TARGET_MS:.0f} ms: "
          f"{'met' if worst_ms < TARGET_MS else 'MISSED'}")


if __name__ == "__main__":
    main()
