"""Key authorizations, digests and token joining against the spec vectors."""
import pytest

from certbot_email.protocol import keyauth
from certbot_email.protocol.keyauth import TokenJoining
from tests.unit.vectors import ACME4J_KEY, RFC7638_KEY

RFC_PART1 = "LgYemJLy3F1LDkiJrdIGbEzyFJyOyf6vBdyZ1TG3sME="
RFC_PART2 = "DGyRejmCefe7v4NfDGDKfA"


def test_thumbprints_of_the_vector_keys():
    assert keyauth.thumbprint(RFC7638_KEY) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert keyauth.thumbprint(ACME4J_KEY) == "1_nKJnlH9boVxdoO63T8zP7O2w42qZL4d6xj35Hy5aI"


def test_v2_acme4j_string_joining():
    token = keyauth.join_tokens(RFC_PART1, RFC_PART2)
    key_auth = keyauth.key_authorization(token, ACME4J_KEY)
    assert key_auth == (RFC_PART1 + RFC_PART2 +
                        ".1_nKJnlH9boVxdoO63T8zP7O2w42qZL4d6xj35Hy5aI")
    assert keyauth.key_authorization_digest(key_auth) == \
        "AjXW0h9_4YMP6Sv-9tKQNUrapI0us7ayBn0nCGOkUsk"


def test_v2_other_readings_give_other_digests():
    stripped = keyauth.key_authorization(keyauth.join_tokens(RFC_PART1.rstrip("="), RFC_PART2),
                                         ACME4J_KEY)
    assert keyauth.key_authorization_digest(stripped) == \
        "aeF6_NPRTqHBh0L1_wlbKFwocQfQb1S5_ZJZS3_iKlI"
    token = keyauth.join_tokens(RFC_PART1, RFC_PART2, TokenJoining.BYTES)
    assert token == "LgYemJLy3F1LDkiJrdIGbEzyFJyOyf6vBdyZ1TG3sMEMbJF6OYJ597u_g18MYMp8"
    assert keyauth.key_authorization_digest(keyauth.key_authorization(token, ACME4J_KEY)) == \
        "xyC6Z01DHFuV0pZgacdI2xN9nIKkPSARDv1gLbxY8Xk"


V3_THUMBPRINT = "hC4xyXNn8ZDH4yrcp93Zj3qgQs7LyT_GUL45YD7IVMQ"


@pytest.mark.parametrize("joining, token, digest", [
    (TokenJoining.BYTES, "V4nE8NhYh6edBpfQTg5qqceiOuWLxJOsQuCldEDL3Sc",
     "Fjt2SD7KoqSt3I6jwgg8ljjkP9Er7h1w0wF0UihvQIU"),
    (TokenJoining.STRING, "V4nE8NhYh6edBpfQTg5qqQx6I65YvEk6xC4KV0QMvdJw",
     "gtzugYfQ1gO_Pi-ripWZTUtKP_xzPoQe-brDkSOvX5c"),
])
def test_v3_acmez_vectors(joining, token, digest):
    joined = keyauth.join_tokens("V4nE8NhYh6edBpfQTg5qqQ", "x6I65YvEk6xC4KV0QMvdJw", joining)
    assert joined == token
    assert keyauth.key_authorization_digest(f"{joined}.{V3_THUMBPRINT}") == digest


def test_v4_rfc_tokens_with_rfc7638_key():
    key_auth = keyauth.key_authorization(keyauth.join_tokens(RFC_PART1, RFC_PART2), RFC7638_KEY)
    assert key_auth == (RFC_PART1 + RFC_PART2 +
                        ".NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
    assert keyauth.key_authorization_digest(key_auth) == \
        "ZEzZgc9aJoD_n58jPgRZT72bYhm3xgODx3XMbYEeaBo"


@pytest.mark.parametrize("joining", list(TokenJoining))
def test_v5_multiple_of_three_bytes_makes_both_readings_agree(joining):
    part1, part2 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", "ZGVmZ2hpamtsbW5vcHFycw"
    token = keyauth.join_tokens(part1, part2, joining)
    assert token == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXZGVmZ2hpamtsbW5vcHFycw"
    assert keyauth.key_authorization_digest(keyauth.key_authorization(token, RFC7638_KEY)) == \
        "1UjxaPcp2aTOF5jtuXmghNfUls7I8TkvzXgITvq0Yvc"


def test_v6_folded_token_part1_loses_its_white_space():
    decoded_subject_token = "LgYemJLy3F1LDki JrdIGbEzyFJyOyf  6vBdyZ1TG3sME="
    assert keyauth.join_tokens(decoded_subject_token, RFC_PART2) == RFC_PART1 + RFC_PART2
    assert keyauth.strip_whitespace(" a\r\n b\tc ") == "abc"


def test_email_tls_v2_shared_value():
    key_auth = keyauth.key_authorization("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA",
                                         RFC7638_KEY)
    assert keyauth.key_authorization_digest(key_auth) == \
        "ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8"
