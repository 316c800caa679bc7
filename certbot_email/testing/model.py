"""The CA's objects (RFC 8555 §7.1) and their life cycles, with no I/O."""
import dataclasses
import datetime
import secrets
import threading
from typing import Any, Optional

import josepy as jose

from certbot_email.protocol import keyauth

PENDING, PROCESSING, VALID, INVALID, READY = "pending", "processing", "valid", "invalid", "ready"

#: Challenge types offered for each identifier type.
DNS_CHALLENGES = ("http-01", "dns-01", "dns-email-00", "capability-smtp-00",
                  "capability-imap-00", "capability-pop-00")
EMAIL_CHALLENGES = ("email-reply-00",)


def now() -> datetime.datetime:
    """Current UTC time; one place so that every timestamp agrees on the clock."""
    return datetime.datetime.now(datetime.timezone.utc)


def rfc3339(moment: datetime.datetime) -> str:
    """Timestamp format of RFC 8555 (RFC 3339, UTC, seconds)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def random_token(size: int = 16) -> str:
    """Unpadded base64url of ``size`` random bytes (RFC 8555 §8.1 tokens)."""
    return jose.b64encode(secrets.token_bytes(size)).decode("ascii")


@dataclasses.dataclass
class Account:
    """An ACME account, bound to one key."""

    ident: str
    key: jose.JWK
    contact: tuple[str, ...] = ()
    status: str = VALID

    def to_json(self, base: str) -> dict[str, Any]:
        """Account object (RFC 8555 §7.1.2)."""
        return {"status": self.status, "contact": list(self.contact),
                "orders": f"{base}/acme/acct/{self.ident}/orders"}


@dataclasses.dataclass
class Challenge:
    """One challenge; email-reply-00 and the email-tls ones carry extra state."""

    ident: str
    typ: str
    authz_id: str
    token: str = dataclasses.field(default_factory=random_token)
    status: str = PENDING
    error: Optional[dict[str, Any]] = None
    validated: Optional[datetime.datetime] = None
    sender: Optional[str] = None
    token_part1: Optional[str] = None
    token_part1_expires: Optional[datetime.datetime] = None
    mail_sent: bool = False
    reply_accepted: bool = False
    client_ready: bool = False
    proven_services: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    def to_json(self, base: str) -> dict[str, Any]:
        """Challenge object (RFC 8555 §8, plus ``from`` for RFC 8823)."""
        body: dict[str, Any] = {"type": self.typ, "url": f"{base}/acme/chall/{self.ident}",
                                "status": self.status, "token": self.token}
        if self.sender is not None:
            body["from"] = self.sender
        if self.validated is not None:
            body["validated"] = rfc3339(self.validated)
        if self.error is not None:
            body["error"] = self.error
        return body


@dataclasses.dataclass
class Authorization:
    """Authorization of one identifier for one account."""

    ident: str
    account_id: str
    identifier: dict[str, str]
    expires: datetime.datetime
    challenge_ids: list[str] = dataclasses.field(default_factory=list)
    status: str = PENDING
    fetched: bool = False


@dataclasses.dataclass
class Order:
    """An order (RFC 8555 §7.1.3)."""

    ident: str
    account_id: str
    identifiers: list[dict[str, str]]
    expires: datetime.datetime
    authz_ids: list[str]
    status: str = PENDING
    cert_id: Optional[str] = None
    error: Optional[dict[str, Any]] = None


#: RFC 5280 §5.3.1 CRLReason codes a client may give (7 is unused).
REVOCATION_REASONS = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10})


@dataclasses.dataclass
class IssuedCertificate:
    """A certificate this CA signed, kept for revocation (RFC 8555 §7.6)."""

    serial: int
    account_id: str
    identifiers: list[dict[str, str]]
    #: SubjectPublicKeyInfo DER: a revocation signed with this key needs no account.
    public_key: bytes
    revoked_reason: Optional[int] = None


class Store:
    """All objects of one CA run, behind one lock; ids are random so URLs cannot be guessed."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.nonces: set[str] = set()
        self.accounts: dict[str, Account] = {}
        self.account_by_thumbprint: dict[str, str] = {}
        self.orders: dict[str, Order] = {}
        self.authzs: dict[str, Authorization] = {}
        self.challenges: dict[str, Challenge] = {}
        self.certificates: dict[str, str] = {}
        #: By the certificate's DER, as revokeCert names it.
        self.issued: dict[bytes, IssuedCertificate] = {}
        self.challenge_by_token_part1: dict[str, str] = {}
        self.used_token_part1: set[str] = set()

    def new_nonce(self) -> str:
        """A fresh nonce, remembered until it is used once."""
        nonce = random_token(16)
        with self.lock:
            self.nonces.add(nonce)
        return nonce

    def use_nonce(self, nonce: str) -> bool:
        """True once for each issued nonce; unknown and reused nonces give False."""
        with self.lock:
            if nonce in self.nonces:
                self.nonces.remove(nonce)
                return True
            return False

    def add_account(self, key: jose.JWK, contact: tuple[str, ...]) -> tuple[Account, bool]:
        """The account for ``key``, created if new; the flag says whether it was created."""
        thumb = keyauth.thumbprint(key)
        with self.lock:
            existing = self.account_by_thumbprint.get(thumb)
            if existing is not None:
                return self.accounts[existing], False
            account = Account(random_token(9), key, contact)
            self.accounts[account.ident] = account
            self.account_by_thumbprint[thumb] = account.ident
            return account, True

    def find_account(self, key: jose.JWK) -> Optional[Account]:
        """The account bound to ``key``, if any."""
        with self.lock:
            ident = self.account_by_thumbprint.get(keyauth.thumbprint(key))
            return None if ident is None else self.accounts[ident]

    def add_order(self, account_id: str, identifiers: list[dict[str, str]],
                  lifetime: datetime.timedelta, mail_sender: str) -> Order:
        """A new order with one fresh authorization and its challenges per identifier."""
        expires = now() + lifetime
        with self.lock:
            authz_ids = []
            for identifier in identifiers:
                authz = Authorization(random_token(9), account_id, identifier, expires)
                types = EMAIL_CHALLENGES if identifier["type"] == "email" else DNS_CHALLENGES
                for typ in types:
                    challenge = Challenge(random_token(9), typ, authz.ident)
                    if typ == "email-reply-00":
                        challenge.sender = mail_sender
                    self.challenges[challenge.ident] = challenge
                    authz.challenge_ids.append(challenge.ident)
                self.authzs[authz.ident] = authz
                authz_ids.append(authz.ident)
            order = Order(random_token(9), account_id, identifiers, expires, authz_ids)
            self.orders[order.ident] = order
            return order

    def authz_of(self, challenge: Challenge) -> Authorization:
        """The authorization a challenge belongs to."""
        return self.authzs[challenge.authz_id]

    def refresh_order(self, order: Order) -> None:
        """Recompute a pending order's status from its authorizations (RFC 8555 §7.1.6)."""
        with self.lock:
            if order.status != PENDING:
                return
            statuses = [self.authzs[ident].status for ident in order.authz_ids]
            if any(status == INVALID for status in statuses):
                order.status = INVALID
                order.error = {"type": "urn:ietf:params:acme:error:unauthorized",
                               "detail": "an authorization of this order is invalid"}
            elif all(status == VALID for status in statuses):
                order.status = READY

    def settle_challenge(self, challenge: Challenge, success: bool,
                         error: Optional[dict[str, Any]] = None) -> None:
        """Finish a challenge; its authorization follows it (one challenge decides, §7.1.6)."""
        with self.lock:
            if challenge.status in (VALID, INVALID):
                return
            authz = self.authz_of(challenge)
            challenge.status = VALID if success else INVALID
            challenge.error = None if success else error
            if success:
                challenge.validated = now()
            if authz.status == PENDING:
                authz.status = challenge.status

    def authz_json(self, authz: Authorization, base: str) -> dict[str, Any]:
        """Authorization object (RFC 8555 §7.1.4)."""
        with self.lock:
            return {"identifier": authz.identifier, "status": authz.status,
                    "expires": rfc3339(authz.expires),
                    "challenges": [self.challenges[ident].to_json(base)
                                   for ident in authz.challenge_ids]}

    def order_json(self, order: Order, base: str) -> dict[str, Any]:
        """Order object (RFC 8555 §7.1.3)."""
        self.refresh_order(order)
        with self.lock:
            body: dict[str, Any] = {
                "status": order.status, "expires": rfc3339(order.expires),
                "identifiers": order.identifiers,
                "authorizations": [f"{base}/acme/authz/{ident}" for ident in order.authz_ids],
                "finalize": f"{base}/acme/finalize/{order.ident}"}
            if order.cert_id is not None:
                body["certificate"] = f"{base}/acme/cert/{order.cert_id}"
            if order.error is not None:
                body["error"] = order.error
            return body
