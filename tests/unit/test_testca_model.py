"""The test CA's object life cycles (RFC 8555 §7.1.6) and its request handling without HTTP."""
import datetime
import json
from concurrent.futures import Future
from typing import Any, Callable

import josepy as jose
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email.testing import issuance, problems, validators
from certbot_email.testing.authority import TestCA
from certbot_email.testing.config import CAConfig
from certbot_email.testing.jws import SignedRequest
from certbot_email.testing.model import Store

KEY = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048)).public_key()
OTHER = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048)).public_key()
HOUR = datetime.timedelta(hours=1)


class CountingExecutor:
    """Records submitted work instead of running it."""

    def __init__(self) -> None:
        self.jobs: list[Callable[..., Any]] = []

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        self.jobs.append(function)
        return Future()

    def shutdown(self, **unused: Any) -> None:
        """Nothing to stop."""


def test_nonces_are_single_use():
    store = Store()
    nonce = store.new_nonce()
    assert store.use_nonce(nonce)
    assert not store.use_nonce(nonce)
    assert not store.use_nonce("never-issued")


def test_one_account_per_key():
    store = Store()
    first, created = store.add_account(KEY, ())
    again, created_again = store.add_account(KEY, ("mailto:x@example.test",))
    assert created and not created_again and first is again
    assert store.find_account(OTHER) is None


def test_order_follows_its_authorizations():
    store = Store()
    account, _ = store.add_account(KEY, ())
    order = store.add_order(account.ident, [{"type": "dns", "value": "a.example.test"},
                                            {"type": "dns", "value": "b.example.test"}],
                            HOUR, "ca@example.test")
    first, second = (store.authzs[ident] for ident in order.authz_ids)
    store.settle_challenge(store.challenges[first.challenge_ids[0]], True)
    store.refresh_order(order)
    assert order.status == "pending"
    store.settle_challenge(store.challenges[second.challenge_ids[1]], True)
    store.refresh_order(order)
    assert order.status == "ready"


def test_one_failed_authorization_fails_the_order():
    store = Store()
    account, _ = store.add_account(KEY, ())
    order = store.add_order(account.ident, [{"type": "dns", "value": "a.example.test"}], HOUR,
                            "ca@example.test")
    challenge = store.challenges[store.authzs[order.authz_ids[0]].challenge_ids[0]]
    store.settle_challenge(challenge, False, problems.problem_json("incorrectResponse", "no"))
    store.settle_challenge(challenge, True)
    assert challenge.status == "invalid"
    assert store.order_json(order, "https://ca")["status"] == "invalid"


def test_email_orders_offer_only_email_reply_with_from():
    store = Store()
    account, _ = store.add_account(KEY, ())
    order = store.add_order(account.ident, [{"type": "email", "value": "a@example.test"}], HOUR,
                            "ca@example.test")
    body = store.authz_json(store.authzs[order.authz_ids[0]], "https://ca")
    assert [c["type"] for c in body["challenges"]] == ["email-reply-00"]
    assert body["challenges"][0]["from"] == "ca@example.test"


@pytest.fixture(name="ca")
def fixture_ca(tmp_path) -> TestCA:
    ca = TestCA(CAConfig(state_dir=tmp_path), Store(), issuance.Authority(tmp_path, 1),
                validators.Network(None, 53, {}, 80, "testca.localhost"), None)
    ca.workers = CountingExecutor()  # type: ignore[assignment]
    return ca


def requester(ca: TestCA, key: jose.JWK, payload: bytes) -> SignedRequest:
    account, _ = ca.store.add_account(key, ())
    return SignedRequest(payload, key, account)


def test_repeated_challenge_posts_validate_once(ca):
    order = ca.new_order(requester(ca, KEY, b'{"identifiers": [{"type": "dns", '
                                            b'"value": "Mail.Example.Test."}]}'))
    assert order.identifiers == [{"type": "dns", "value": "mail.example.test"}]
    challenge_id = ca.store.authzs[order.authz_ids[0]].challenge_ids[1]
    post = requester(ca, KEY, b"{}")
    assert ca.challenge(post, challenge_id).status == "processing"
    assert ca.challenge(post, challenge_id).status == "processing"
    assert len(ca.workers.jobs) == 1


def test_other_accounts_cannot_touch_an_order(ca):
    order = ca.new_order(requester(ca, KEY, b'{"identifiers": [{"type": "dns", '
                                            b'"value": "mail.example.test"}]}'))
    intruder = requester(ca, OTHER, b"")
    with pytest.raises(problems.AcmeProblemError) as caught:
        ca.order(intruder, order.ident)
    assert caught.value.kind == "unauthorized"
    with pytest.raises(problems.AcmeProblemError):
        ca.authorization(intruder, order.authz_ids[0])


@pytest.mark.parametrize("identifier, kind", [
    ({"type": "dns", "value": "*.example.test"}, "rejectedIdentifier"),
    ({"type": "dns", "value": "localhost"}, "rejectedIdentifier"),
    ({"type": "email", "value": "no-at-sign"}, "rejectedIdentifier"),
    ({"type": "email", "value": "*@example.test"}, "rejectedIdentifier"),
    ({"type": "ip", "value": "127.0.0.1"}, "unsupportedIdentifier"),
    ({"type": "dns"}, "malformed"),
])
def test_bad_identifiers(ca, identifier, kind):
    payload = json.dumps({"identifiers": [identifier]}).encode()
    with pytest.raises(problems.AcmeProblemError) as caught:
        ca.new_order(requester(ca, KEY, payload))
    assert caught.value.kind == kind
