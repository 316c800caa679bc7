"""Checking the JWS that wraps every ACME POST (RFC 8555 §6.2-6.5), before anything is acted on."""
import dataclasses
import json
from typing import Any, Optional, cast

import josepy as jose
from acme import jws as acme_jws

from certbot_email.testing import problems
from certbot_email.testing.model import Account, Store

#: Signature algorithms the CA accepts (RFC 8555 §6.2: at least ES256; RS256 for certbot).
ALLOWED_ALGS = frozenset({"RS256", "ES256", "ES384", "ES512"})
_FLATTENED_FIELDS = frozenset({"protected", "payload", "signature"})


@dataclasses.dataclass
class SignedRequest:
    """A POST whose signature, nonce and URL have been checked."""

    payload: bytes
    key: jose.JWK
    account: Optional[Account]

    @property
    def is_post_as_get(self) -> bool:
        """An empty payload is a POST-as-GET (RFC 8555 §6.3)."""
        return self.payload == b""

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object, or ``malformed``."""
        try:
            value = json.loads(self.payload)
        except ValueError as error:
            raise problems.malformed(f"payload is not JSON: {error}") from None
        if not isinstance(value, dict):
            raise problems.malformed("payload must be a JSON object")
        return value


def _parse(body: bytes) -> tuple[acme_jws.JWS, acme_jws.Header]:
    """The flattened JWS in ``body`` and its protected header, or ``malformed``."""
    try:
        raw = json.loads(body)
    except ValueError as error:
        raise problems.malformed(f"body is not JSON: {error}") from None
    if not isinstance(raw, dict) or set(raw) - {"header"} != _FLATTENED_FIELDS:
        raise problems.malformed("body must be a flattened JWS with protected, payload "
                                 "and signature (RFC 8555 §6.2)")
    if raw.get("header"):
        raise problems.malformed("unprotected JWS header fields are not allowed")
    try:
        signed = cast(acme_jws.JWS, acme_jws.JWS.from_json(raw))
        return signed, cast(acme_jws.Header, signed.signature.combined)
    except Exception as error:  # noqa: BLE001 - josepy raises many types on hostile input
        raise problems.malformed(f"cannot decode JWS: {error}") from None


def verify_request(body: bytes, url: str, store: Store, account_prefix: str,
                   new_account: bool = False, key_or_account: bool = False) -> SignedRequest:
    """Check signature, algorithm, nonce, URL and key: jwk for newAccount, kid afterwards,
    and either for revokeCert (``key_or_account``: the certificate's key may sign it)."""
    signed, header = _parse(body)
    if header.alg is None or header.alg.name not in ALLOWED_ALGS:
        raise problems.AcmeProblemError("badSignatureAlgorithm",
                                        f"algorithm must be one of {sorted(ALLOWED_ALGS)}")
    if header.nonce is None or not store.use_nonce(jose.b64encode(header.nonce).decode()):
        raise problems.AcmeProblemError("badNonce", "the nonce is missing, unknown or already used")
    if header.url != url:
        raise problems.unauthorized(f"the JWS url {header.url!r} is not the request URL {url!r}")
    if (header.jwk is None) == (header.kid is None):
        raise problems.malformed("exactly one of jwk and kid must be in the protected header")
    account: Optional[Account] = None
    if key_or_account and header.jwk is not None:
        key = header.jwk
    elif new_account:
        if header.jwk is None:
            raise problems.malformed("newAccount must be signed with jwk, not kid")
        key = header.jwk
    else:
        if header.kid is None:
            raise problems.malformed("this request must be signed with the account's kid")
        account = _account_for_kid(store, header.kid, account_prefix)
        key = account.key
    if not _signature_holds(signed, key):
        raise problems.malformed("the JWS signature does not verify")
    return SignedRequest(signed.payload, key, account)


def _account_for_kid(store: Store, kid: str, account_prefix: str) -> Account:
    """The account a kid URL names, or ``accountDoesNotExist``."""
    ident = kid[len(account_prefix):] if kid.startswith(account_prefix) else None
    with store.lock:
        account = store.accounts.get(ident) if ident else None
    if account is None:
        raise problems.AcmeProblemError("accountDoesNotExist", f"no account at {kid!r}")
    if account.status != "valid":
        raise problems.unauthorized(f"account {kid!r} is {account.status}")
    return account


def _signature_holds(signed: acme_jws.JWS, key: jose.JWK) -> bool:
    """True if the signature verifies; a key of the wrong type for ``alg`` is a failure too."""
    try:
        return bool(signed.verify(key))
    except Exception:  # noqa: BLE001 - josepy raises many types for a key/alg mismatch
        return False
