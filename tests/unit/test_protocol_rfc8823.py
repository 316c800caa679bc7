"""The RFC 8823 rules shared by the client and the test CA, including spec vectors V6 and V7."""
import base64
import email
import email.policy

import dkim.util
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certbot_email.protocol import rfc8823
from certbot_email.protocol.reply_mail import response_body

V6_RAW_SUBJECT = "=?UTF-8?Q?ACME:_LgYemJLy3F1LDki=20JrdIGbEzyFJyOyf=20=206vBdyZ1TG3sME=3D?="
V6_TOKEN1 = "LgYemJLy3F1LDkiJrdIGbEzyFJyOyf6vBdyZ1TG3sME="
V7_DIGEST = "AjXW0h9_4YMP6Sv-9tKQNUrapI0us7ayBn0nCGOkUsk"
BEGIN, END = rfc8823.BEGIN_LINE, rfc8823.END_LINE


def decoded_subject(raw_header: str) -> str:
    """The Subject as both sides read it: parsed with the modern policy (encoded words, folding)."""
    message = email.message_from_bytes(f"Subject: {raw_header}\r\n\r\n".encode(),
                                       policy=email.policy.default)
    return str(message["Subject"])


def test_header_lists_follow_the_rfc():
    assert len(rfc8823.CHALLENGE_SIGNED_HEADERS) == 13
    assert set(rfc8823.CHALLENGE_SIGNED_HEADERS) - set(rfc8823.RESPONSE_SIGNED_HEADERS) \
        == {"auto-submitted"}
    assert len(rfc8823.RESPONSE_SIGNED_HEADERS) == 12
    assert not set(rfc8823.RECOMMENDED_SIGNED_HEADERS) & set(rfc8823.CHALLENGE_SIGNED_HEADERS)


def test_v6_encoded_subject_gives_token_part1():
    parts = rfc8823.split_subject(decoded_subject(V6_RAW_SUBJECT))
    assert parts == rfc8823.SubjectParts("", V6_TOKEN1)
    assert rfc8823.encoded_word_charsets(V6_RAW_SUBJECT) == ["UTF-8"]


@pytest.mark.parametrize("raw, charsets", [
    ("=?iso-8859-1?q?ACME:_x?=", ["iso-8859-1"]),
    ("=?utf-8*en?b?QUNNRTo=?= =?us-ascii?q?_x?=", ["utf-8", "us-ascii"]),
    ("ACME: plain", []),
])
def test_encoded_word_charsets_include_rfc2231_language_tags(raw, charsets):
    assert rfc8823.encoded_word_charsets(raw) == charsets


def test_folded_subject_loses_its_white_space():
    folded = f"ACME:\r\n {V6_TOKEN1[:20]}\r\n \t{V6_TOKEN1[20:]}"
    assert rfc8823.split_subject(decoded_subject(folded)) == rfc8823.SubjectParts("", V6_TOKEN1)


@pytest.mark.parametrize("subject, label, expected", [
    ("ACME: abc def", rfc8823.LABEL, ("", "abcdef")),
    ("Re: Fwd: ACME: abc", rfc8823.LABEL, ("Re: Fwd: ", "abc")),
    ("AW: acme: abc", rfc8823.LABEL, None),
    ("AW: acme: abc", rfc8823.LABEL_ANY_CASE, ("AW: ", "abc")),
    ("Hello", rfc8823.LABEL_ANY_CASE, None),
    ("ACME:", rfc8823.LABEL, ("", "")),
])
def test_split_subject_cuts_at_the_first_label(subject, label, expected):
    assert rfc8823.split_subject(subject, label) == expected


@pytest.mark.parametrize("domain, expected", [
    ("Example.TEST.", "example.test"),
    (" example.test ", "example.test"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("a..b", ""),
])
def test_a_label(domain, expected):
    assert rfc8823.a_label(domain) == expected


def test_dkim_signatures_in_header_order():
    headers = [(b"DKIM-Signature", b"one"), (b"From", b"x"), (b"dkim-signature", b"two")]
    assert rfc8823.dkim_signatures(headers) == [b"one", b"two"]


def tags(value: bytes) -> rfc8823.DkimTags:
    return rfc8823.DkimTags.from_fields(dkim.util.parse_tag_value(value))


def test_dkim_tags_read_d_s_h_l():
    found = tags(b"v=1; a=rsa-sha256; d=B\xc3\xbccher.Example.; s=lab; "
                 b"h=From : To:\r\n SUBJECT; l=10; bh=x; b=y")
    assert found.selector == "lab"
    assert found.signed_headers == {"from", "to", "subject"}
    assert found.body_length == "10"
    assert found.missing_headers(("from", "date", "subject", "cc")) == ["date", "cc"]


@pytest.mark.parametrize("d, from_domain, aligned", [
    ("Example.Test", "example.test", True),
    ("example.test.", "example.test", True),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", True),
    ("mail.example.test", "example.test", False),
    ("test", "example.test", False),
    ("", "example.test", False),
])
def test_d_must_equal_the_from_domain_exactly(d, from_domain, aligned):
    assert tags(f"d={d}; s=lab; h=from".encode()).aligned_with(from_domain) is aligned


def test_body_length_tag():
    assert tags(b"d=x.test; h=from").body_length is None
    assert not tags(b"d=x.test; h=from").leaves_body_unsigned(100)
    assert tags(b"d=x.test; h=from; l=99").leaves_body_unsigned(100)
    assert not tags(b"d=x.test; h=from; l=100").leaves_body_unsigned(100)


def test_v7_digest_split_over_lines_with_text_around():
    text = (f"Hello,\r\nthis answers your challenge.\r\n{BEGIN}\r\n{V7_DIGEST[:20]}\r\n"
            f"{V7_DIGEST[20:]}\r\n{END}\r\nRegards\r\n")
    assert rfc8823.find_response_block(text) == V7_DIGEST


@pytest.mark.parametrize("text", [
    "no block here\r\n",
    f"{BEGIN}\r\n{V7_DIGEST}\r\n",
    f"{V7_DIGEST}\r\n{END}\r\n",
    f"{END}\r\n{V7_DIGEST}\r\n{BEGIN}\r\n",
    f"{BEGIN}\r\n\r\n{END}\r\n",
    f"<pre>{BEGIN}\r\n{V7_DIGEST}\r\n{END}</pre>\r\n",
])
def test_v7_missing_or_broken_block_is_not_found(text):
    assert rfc8823.find_response_block(text) is None


def test_block_tolerates_lf_white_space_and_padding():
    assert rfc8823.find_response_block(f"  {BEGIN}\n {V7_DIGEST} =\n{END}  \n") == V7_DIGEST


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=64), st.sets(st.integers(1, 85)))
def test_client_block_is_read_back_however_it_is_wrapped(data, cuts):
    digest = base64.urlsafe_b64encode(data).decode().rstrip("=")
    begin, line, end, _ = response_body(digest).split("\r\n")
    points = [0, *sorted(cut for cut in cuts if cut < len(line)), len(line)]
    wrapped = "\r\n".join(line[a:b] for a, b in zip(points, points[1:], strict=False))
    assert rfc8823.find_response_block(f"{begin}\r\n{wrapped}\r\n{end}\r\n") == digest
