"""The test CA's JWS checks: every malformed or replayed request gets its ACME error."""
import json
from typing import Optional

import josepy as jose
import pytest
from acme import jws as acme_jws
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from certbot_email.testing import jws, problems
from certbot_email.testing.model import Store

BASE = "https://ca.test"
PREFIX = f"{BASE}/acme/acct/"
RSA_KEY = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
OTHER_KEY = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
EC_KEY = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def sign(store: Store, payload: bytes, url: str, key: jose.JWK = RSA_KEY,
         kid: Optional[str] = None, nonce: Optional[str] = None,
         alg: jose.JWASignature = jose.RS256) -> bytes:
    """A flattened JWS as the acme library would send it."""
    nonce_text = nonce if nonce is not None else store.new_nonce()
    signed = acme_jws.JWS.sign(payload, key=key, alg=alg, nonce=jose.b64decode(nonce_text),
                               url=url, kid=kid)
    return signed.json_dumps().encode()


def problem_kind(call) -> str:
    """Run ``call`` and return the ACME error type it raised."""
    with pytest.raises(problems.AcmeProblemError) as caught:
        call()
    return caught.value.kind


def test_new_account_with_jwk_is_accepted():
    store = Store()
    url = f"{BASE}/acme/new-account"
    request = jws.verify_request(sign(store, b"{}", url), url, store, PREFIX, new_account=True)
    assert request.account is None
    assert request.key.thumbprint() == RSA_KEY.public_key().thumbprint()


def test_ec_key_with_es256_is_accepted():
    store = Store()
    url = f"{BASE}/acme/new-account"
    body = sign(store, b"{}", url, key=EC_KEY, alg=jose.ES256)
    assert jws.verify_request(body, url, store, PREFIX, new_account=True).payload == b"{}"


def test_reused_nonce_is_bad_nonce():
    store = Store()
    url = f"{BASE}/acme/new-account"
    body = sign(store, b"{}", url)
    jws.verify_request(body, url, store, PREFIX, new_account=True)
    assert problem_kind(lambda: jws.verify_request(body, url, store, PREFIX,
                                                   new_account=True)) == "badNonce"


def test_unknown_nonce_is_bad_nonce():
    store = Store()
    url = f"{BASE}/acme/new-account"
    body = sign(store, b"{}", url, nonce="AAAAAAAAAAAAAAAAAAAAAA")
    assert problem_kind(lambda: jws.verify_request(body, url, store, PREFIX,
                                                   new_account=True)) == "badNonce"


def test_url_mismatch_is_unauthorized():
    store = Store()
    body = sign(store, b"{}", f"{BASE}/acme/new-order")
    assert problem_kind(lambda: jws.verify_request(body, f"{BASE}/acme/new-account", store,
                                                   PREFIX, new_account=True)) == "unauthorized"


def test_kid_on_new_account_is_malformed():
    store = Store()
    url = f"{BASE}/acme/new-account"
    body = sign(store, b"{}", url, kid=PREFIX + "x")
    assert problem_kind(lambda: jws.verify_request(body, url, store, PREFIX,
                                                   new_account=True)) == "malformed"


def test_jwk_where_kid_is_needed_is_malformed():
    store = Store()
    url = f"{BASE}/acme/new-order"
    assert problem_kind(lambda: jws.verify_request(sign(store, b"{}", url), url, store,
                                                   PREFIX)) == "malformed"


def test_unknown_kid_is_account_does_not_exist():
    store = Store()
    url = f"{BASE}/acme/new-order"
    body = sign(store, b"{}", url, kid=PREFIX + "nobody")
    assert problem_kind(lambda: jws.verify_request(body, url, store, PREFIX)) \
        == "accountDoesNotExist"


def test_kid_of_another_account_fails_the_signature():
    store = Store()
    account, _ = store.add_account(RSA_KEY.public_key(), ())
    url = f"{BASE}/acme/new-order"
    body = sign(store, b"{}", url, key=OTHER_KEY, kid=PREFIX + account.ident)
    assert problem_kind(lambda: jws.verify_request(body, url, store, PREFIX)) == "malformed"


def test_kid_of_own_account_is_accepted():
    store = Store()
    account, _ = store.add_account(RSA_KEY.public_key(), ())
    url = f"{BASE}/acme/new-order"
    request = jws.verify_request(sign(store, b"", url, kid=PREFIX + account.ident), url, store,
                                 PREFIX)
    assert request.account is account
    assert request.is_post_as_get


def test_tampered_payload_is_malformed():
    store = Store()
    url = f"{BASE}/acme/new-account"
    raw = json.loads(sign(store, b"{}", url))
    raw["payload"] = jose.b64encode(b'{"contact":[]}').decode()
    assert problem_kind(lambda: jws.verify_request(json.dumps(raw).encode(), url, store,
                                                   PREFIX, new_account=True)) == "malformed"


def test_hmac_algorithm_is_refused():
    store = Store()
    url = f"{BASE}/acme/new-account"
    raw = json.loads(sign(store, b"{}", url))
    protected = json.loads(jose.b64decode(raw["protected"]))
    protected["alg"] = "HS256"
    raw["protected"] = jose.b64encode(json.dumps(protected).encode()).decode()
    assert problem_kind(lambda: jws.verify_request(json.dumps(raw).encode(), url, store,
                                                   PREFIX, new_account=True)) \
        == "badSignatureAlgorithm"


def test_general_serialization_is_malformed():
    store = Store()
    url = f"{BASE}/acme/new-account"
    raw = json.loads(sign(store, b"{}", url))
    general = {"payload": raw["payload"], "signatures": [
        {"protected": raw["protected"], "signature": raw["signature"]}]}
    assert problem_kind(lambda: jws.verify_request(json.dumps(general).encode(), url, store,
                                                   PREFIX, new_account=True)) == "malformed"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(body=st.one_of(st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                      st.fixed_dictionaries({"protected": st.text(max_size=60),
                                             "payload": st.text(max_size=60),
                                             "signature": st.text(max_size=60)}
                                            ).map(lambda v: json.dumps(v).encode())))
def test_fuzzed_bodies_only_ever_raise_problems(body: bytes):
    store = Store()
    url = f"{BASE}/acme/new-account"
    try:
        jws.verify_request(body, url, store, PREFIX, new_account=True)
    except problems.AcmeProblemError as problem:
        assert problem.to_json()["type"].startswith(problems.ERROR_PREFIX)
    else:
        pytest.fail("a fuzzed body was accepted")


@settings(max_examples=100, deadline=None)
@given(protected=st.dictionaries(
    st.sampled_from(["alg", "nonce", "url", "jwk", "kid", "crit", "b64"]),
    st.one_of(st.text(max_size=30), st.integers(), st.none(), st.lists(st.text(max_size=5))),
    max_size=6), payload=st.binary(max_size=40))
def test_fuzzed_protected_headers_only_ever_raise_problems(protected: dict, payload: bytes):
    store = Store()
    url = f"{BASE}/acme/new-account"
    raw = {"protected": jose.b64encode(json.dumps(protected).encode()).decode(),
           "payload": jose.b64encode(payload).decode(),
           "signature": jose.b64encode(b"\x00" * 64).decode()}
    with pytest.raises(problems.AcmeProblemError):
        jws.verify_request(json.dumps(raw).encode(), url, store, PREFIX, new_account=True)
