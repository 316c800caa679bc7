"""What the test CA does for each ACME request and each incoming mail; HTTP lives in ``server``.

Every validation decision goes through ``decide``, which logs it with its reason and keeps it
in ``decisions`` so that tests can read why something was accepted or refused.
"""
import base64
import binascii
import concurrent.futures
import datetime
import hmac
import logging
import threading
from typing import Any, Callable, Optional

import josepy as jose
from cryptography.hazmat.primitives import serialization

from certbot_email.protocol import challenges as email_challenges
from certbot_email.protocol import identifiers as mail_ids
from certbot_email.protocol import keyauth
from certbot_email.testing import issuance, mailcheck, problems, validators
from certbot_email.testing.config import CAConfig, ReplyJoining
from certbot_email.testing.jws import SignedRequest
from certbot_email.testing.model import (
    INVALID,
    PENDING,
    PROCESSING,
    READY,
    REVOCATION_REASONS,
    VALID,
    Account,
    Authorization,
    Challenge,
    IssuedCertificate,
    Order,
    Store,
    now,
    random_token,
)

logger = logging.getLogger(__name__)
ORDER_LIFETIME = datetime.timedelta(hours=8)
_TOKEN_PART1_BYTES = {ReplyJoining.EITHER: 24, ReplyJoining.STRING: 32, ReplyJoining.BYTES: 32}
_JOININGS = {ReplyJoining.EITHER: (keyauth.TokenJoining.STRING, keyauth.TokenJoining.BYTES),
             ReplyJoining.STRING: (keyauth.TokenJoining.STRING,),
             ReplyJoining.BYTES: (keyauth.TokenJoining.BYTES,)}
_HOST_LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")

ChallengeMailSender = Callable[[str, str], None]


class TestCA:
    """The CA's behaviour: accounts, orders, validations, mail replies and issuance."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, config: CAConfig, store: Store, authority: issuance.Authority,
                 network: validators.Network,
                 send_challenge_mail: Optional[ChallengeMailSender]) -> None:
        self.config = config
        self.store = store
        self.authority = authority
        self.network = network
        self.send_challenge_mail = send_challenge_mail
        self.dkim_lookup = validators.dkim_lookup(network)
        self.workers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="testca")
        self.decisions: list[str] = []
        self._decisions_lock = threading.Lock()

    def decide(self, message: str) -> None:
        """Log one validation decision with its reason."""
        logger.info("decision: %s", message)
        with self._decisions_lock:
            self.decisions.append(message)

    def shutdown(self) -> None:
        """Stop the worker threads."""
        self.workers.shutdown(wait=False, cancel_futures=True)

    # -- accounts -------------------------------------------------------------------------

    def new_account(self, request: SignedRequest) -> tuple[Account, bool]:
        """newAccount (RFC 8555 §7.3): create, or return the key's existing account."""
        payload = request.json()
        key = request.key.public_key()
        if payload.get("onlyReturnExisting"):
            account = self.store.find_account(key)
            if account is None:
                raise problems.AcmeProblemError("accountDoesNotExist", "no account for this key")
            return account, False
        contact = payload.get("contact", [])
        if not isinstance(contact, list) or not all(isinstance(c, str) for c in contact):
            raise problems.malformed("contact must be a list of URLs")
        if any(not c.startswith("mailto:") for c in contact):
            raise problems.AcmeProblemError("unsupportedContact", "only mailto: contacts")
        return self.store.add_account(key, tuple(contact))

    def update_account(self, request: SignedRequest, ident: str) -> Account:
        """POST to the account URL: POST-as-GET or deactivation (RFC 8555 §7.3.2, §7.3.6)."""
        account = self._own_account(request, ident)
        if not request.is_post_as_get and request.json().get("status") == "deactivated":
            account.status = "deactivated"
        return account

    @staticmethod
    def _own_account(request: SignedRequest, ident: str) -> Account:
        """The requester's account, which must be the one in the URL."""
        assert request.account is not None
        if request.account.ident != ident:
            raise problems.unauthorized("this is not the requester's account")
        return request.account

    # -- orders and authorizations --------------------------------------------------------

    def new_order(self, request: SignedRequest) -> Order:
        """newOrder (RFC 8555 §7.4) with ``dns`` and ``email`` identifiers, not mixed."""
        assert request.account is not None
        raw = request.json().get("identifiers")
        if not isinstance(raw, list) or not raw:
            raise problems.malformed("identifiers must be a non-empty list")
        checked = [self._identifier(item) for item in raw]
        if len({item["type"] for item in checked}) > 1:
            raise problems.AcmeProblemError(
                "rejectedIdentifier",
                "an order is either for mailboxes (S/MIME) or for host names (TLS), not both")
        if len({(item["type"], item["value"]) for item in checked}) != len(checked):
            raise problems.malformed("an identifier is repeated")
        order = self.store.add_order(request.account.ident, checked, ORDER_LIFETIME,
                                     self.config.mail.sender)
        self.decide(f"order {order.ident} created for {[i['value'] for i in checked]}")
        return order

    @staticmethod
    def _identifier(item: Any) -> dict[str, str]:
        """One checked, normalised identifier."""
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise problems.malformed("an identifier needs a string type and value")
        kind, value = item.get("type"), item["value"]
        if kind == "email":
            try:
                return {"type": "email", "value": mail_ids.normalize_mailbox(value)}
            except mail_ids.MailboxError as error:
                raise problems.AcmeProblemError("rejectedIdentifier", str(error)) from None
        if kind == "dns":
            host = value.lower().rstrip(".")
            labels = host.split(".")
            if "*" in host or len(labels) < 2 or any(
                    not label or len(label) > 63 or set(label) - _HOST_LABEL_CHARS
                    for label in labels):
                raise problems.AcmeProblemError("rejectedIdentifier", f"{value!r} is not a host "
                                                "name this CA certifies (no wildcards)")
            return {"type": "dns", "value": host}
        raise problems.AcmeProblemError("unsupportedIdentifier", f"identifier type {kind!r}")

    def _owned(self, request: SignedRequest, table: dict[str, Any], ident: str,
               what: str) -> Any:
        """Look up an order/authz/certificate owned by the requester, or 404/403."""
        with self.store.lock:
            item = table.get(ident)
        if item is None:
            raise problems.not_found(f"no such {what}")
        assert request.account is not None
        if item.account_id != request.account.ident:
            raise problems.unauthorized(f"this {what} belongs to another account")
        return item

    def order(self, request: SignedRequest, ident: str) -> Order:
        """POST-as-GET of an order."""
        self._require_post_as_get(request)
        return self._owned(request, self.store.orders, ident, "order")

    def authorization(self, request: SignedRequest, ident: str) -> Authorization:
        """POST-as-GET of an authorization; the first fetch sends the challenge mail (A5)."""
        self._require_post_as_get(request)
        authz: Authorization = self._owned(request, self.store.authzs, ident, "authorization")
        with self.store.lock:
            first_fetch, authz.fetched = not authz.fetched, True
            challenges = [self.store.challenges[c] for c in authz.challenge_ids]
        for challenge in challenges:
            self._expire_if_due(challenge)
            if first_fetch and challenge.typ == "email-reply-00" and \
                    not self.config.mail.send_on_post:
                self._issue_challenge_mail(challenge, authz)
        return authz

    @staticmethod
    def _require_post_as_get(request: SignedRequest) -> None:
        """Reads must carry an empty payload (RFC 8555 §6.3)."""
        if not request.is_post_as_get:
            raise problems.malformed("this resource is read with POST-as-GET (empty payload)")

    def authz_processing(self, authz: Authorization) -> bool:
        """True while one of the authorization's challenges is being validated."""
        with self.store.lock:
            return any(self.store.challenges[c].status == PROCESSING
                       for c in authz.challenge_ids)

    # -- challenges -----------------------------------------------------------------------

    def challenge(self, request: SignedRequest, ident: str) -> Challenge:
        """POST to a challenge: POST-as-GET reads it, a JSON object starts validation."""
        with self.store.lock:
            challenge = self.store.challenges.get(ident)
        if challenge is None:
            raise problems.not_found("no such challenge")
        authz: Authorization = self._owned(request, self.store.authzs, challenge.authz_id,
                                           "authorization")
        self._expire_if_due(challenge)
        if request.is_post_as_get:
            return challenge
        payload = request.json()
        if challenge.typ == "email-reply-00":
            if self._startable(challenge, authz):
                self._email_reply_ready(challenge, authz)
            return challenge
        scopes: tuple[tuple[str, int], ...] = ()
        if challenge.typ in validators.SCOPED_TYPES:
            scopes = validators.parse_scopes(challenge.typ, payload,
                                             self.config.dns_email_arrays,
                                             self.config.default_ports_only)
        assert request.account is not None
        key_auth = keyauth.key_authorization(challenge.token, request.account.key)
        attempt = validators.Attempt(challenge.typ, authz.identifier["value"], challenge.token,
                                     key_auth, keyauth.key_authorization_digest(key_auth),
                                     scopes)
        with self.store.lock:
            if not self._startable(challenge, authz):
                return challenge
            challenge.status = PROCESSING
        self.workers.submit(self._validate, challenge, attempt)
        return challenge

    def _startable(self, challenge: Challenge, authz: Authorization) -> bool:
        """Only a pending challenge of a pending authorization starts; repeats change nothing."""
        with self.store.lock:
            return challenge.status == PENDING and authz.status == PENDING

    def _validate(self, challenge: Challenge, attempt: validators.Attempt) -> None:
        """Run one check in a worker thread and settle the challenge with its reason."""
        where = f"{attempt.typ} for {attempt.host}"
        try:
            reason = validators.CHECKS[attempt.typ](self.network, attempt)
        except validators.ValidationFailedError as failure:
            self.decide(f"{where} INVALID: {failure.detail}")
            self.store.settle_challenge(challenge, False, problems.problem_json(
                failure.kind, failure.detail, {"type": "dns", "value": attempt.host}))
            return
        except Exception as error:  # noqa: BLE001 - a worker must never die silently
            logger.exception("validation of %s crashed", where)
            self.decide(f"{where} INVALID: internal error {error!r}")
            self.store.settle_challenge(challenge, False, problems.problem_json(
                "serverInternal", f"validation failed internally: {error!r}"))
            return
        with self.store.lock:
            challenge.proven_services = list(attempt.scopes)
        self.decide(f"{where} VALID: {reason}")
        self.store.settle_challenge(challenge, True)

    # -- email-reply-00 -------------------------------------------------------------------

    def _issue_challenge_mail(self, challenge: Challenge, authz: Authorization) -> None:
        """Make token-part1 and send the challenge mail once per challenge, off-thread."""
        with self.store.lock:
            if challenge.mail_sent:
                return
            challenge.mail_sent = True
            size = _TOKEN_PART1_BYTES[self.config.mail.joining]
            challenge.token_part1 = random_token(size)
            challenge.token_part1_expires = now() + datetime.timedelta(
                seconds=self.config.mail.token_lifetime_seconds)
            self.store.challenge_by_token_part1[challenge.token_part1] = challenge.ident
        recipient, token_part1 = authz.identifier["value"], challenge.token_part1
        self.decide(f"email-reply-00 for {recipient}: challenge mail issued")
        if self.send_challenge_mail is None:
            return
        self.workers.submit(self._send_mail, challenge, recipient, token_part1)

    def _send_mail(self, challenge: Challenge, recipient: str, token_part1: str) -> None:
        """Send, and fail the challenge if the mail cannot leave."""
        assert self.send_challenge_mail is not None
        try:
            self.send_challenge_mail(recipient, token_part1)
        except Exception as error:  # noqa: BLE001 - SMTP and socket errors alike
            logger.exception("challenge mail to %s failed", recipient)
            self.decide(f"email-reply-00 for {recipient} INVALID: cannot send mail: {error}")
            self.store.settle_challenge(challenge, False, problems.problem_json(
                "connection", f"the challenge mail could not be sent: {error}"))

    def _email_reply_ready(self, challenge: Challenge, authz: Authorization) -> None:
        """The client's POST: send now if not yet sent, and settle if the reply is in."""
        self._issue_challenge_mail(challenge, authz)
        with self.store.lock:
            challenge.client_ready = True
            if challenge.status == PENDING:
                challenge.status = PROCESSING
            accepted = challenge.reply_accepted
        if accepted:
            self.store.settle_challenge(challenge, True)

    def _expire_if_due(self, challenge: Challenge) -> None:
        """An unanswered token-part1 past its lifetime makes the challenge invalid (A13)."""
        with self.store.lock:
            due = (challenge.token_part1_expires is not None and
                   challenge.status in (PENDING, PROCESSING) and
                   not challenge.reply_accepted and now() > challenge.token_part1_expires)
        if due:
            self.decide(f"email-reply-00 challenge {challenge.ident} INVALID: token-part1 "
                        "expired before a valid reply arrived")
            self.store.settle_challenge(challenge, False, problems.problem_json(
                "incorrectResponse", "token-part1 expired before a valid reply arrived"))

    def expected_digests(self, challenge: Challenge, account_key: jose.JWK) -> list[str]:
        """The response digests this CA accepts for a challenge, per its joining policy."""
        assert challenge.token_part1 is not None
        return [keyauth.key_authorization_digest(keyauth.key_authorization(
            keyauth.join_tokens(challenge.token_part1, challenge.token, joining), account_key))
            for joining in _JOININGS[self.config.mail.joining]]

    def handle_reply(self, raw: bytes) -> bool:
        """Judge one mail from the CA's mailbox; True if it validated a challenge."""
        try:
            findings = mailcheck.inspect_reply(raw, self.dkim_lookup)
        except mailcheck.MailRejectedError as rejection:
            self.decide(f"email-reply-00 reply REJECTED: {rejection}")
            return False
        except Exception as error:  # noqa: BLE001 - hostile mail must not stop the reader
            logger.exception("reply could not be parsed")
            self.decide(f"email-reply-00 reply REJECTED: unparseable ({error!r})")
            return False
        where = f"email-reply-00 reply from {findings.sender}"
        with self.store.lock:
            if findings.token_part1 in self.store.used_token_part1:
                self.decide(f"{where} REJECTED: token-part1 was already used (replay)")
                return False
            ident = self.store.challenge_by_token_part1.get(findings.token_part1)
            challenge = self.store.challenges.get(ident) if ident else None
            if challenge is None:
                self.decide(f"{where} REJECTED: token-part1 belongs to no pending challenge")
                return False
            authz = self.store.authz_of(challenge)
        self._expire_if_due(challenge)
        with self.store.lock:
            if challenge.status not in (PENDING, PROCESSING):
                self.decide(f"{where} REJECTED: the challenge is already {challenge.status}")
                return False
            if findings.sender != authz.identifier["value"]:
                self.decide(f"{where} REJECTED: From is not the identifier "
                            f"{authz.identifier['value']}")
                return False
            self.store.used_token_part1.add(findings.token_part1)
            del self.store.challenge_by_token_part1[findings.token_part1]
            account_key = self.store.accounts[authz.account_id].key
        expected = self.expected_digests(challenge, account_key)
        given = findings.digest.encode("utf-8")
        if not any(hmac.compare_digest(given, digest.encode("ascii")) for digest in expected):
            self.decide(f"{where} INVALID: the response digest does not match")
            self.store.settle_challenge(challenge, False, problems.problem_json(
                "incorrectResponse", "the response mail's digest does not match",
                authz.identifier))
            return False
        with self.store.lock:
            challenge.reply_accepted = True
            ready = challenge.client_ready
        self.decide(f"{where} ACCEPTED for challenge {challenge.ident}"
                    + ("" if ready else "; waiting for the client's POST"))
        if ready:
            self.store.settle_challenge(challenge, True)
        return True

    # -- finalize and certificates --------------------------------------------------------

    def finalize(self, request: SignedRequest, ident: str) -> Order:
        """Finalize (RFC 8555 §7.4): check the CSR against the order, then issue off-thread."""
        order: Order = self._owned(request, self.store.orders, ident, "order")
        self.store.refresh_order(order)
        if order.status != READY:
            raise problems.AcmeProblemError("orderNotReady", f"the order is {order.status}", 403)
        csr_text = request.json().get("csr")
        if not isinstance(csr_text, str):
            raise problems.malformed("finalize needs a csr field")
        try:
            der = base64.urlsafe_b64decode(csr_text + "=" * (-len(csr_text) % 4))
        except (binascii.Error, ValueError):
            raise issuance.bad_csr("csr is not base64url") from None
        csr_request = issuance.parse_csr(der)
        try:
            issuance.check_against_order(csr_request, order.identifiers, self._allowed_srv(order))
        except problems.AcmeProblemError as problem:
            self.decide(f"finalize of order {order.ident} REFUSED: {problem.detail}")
            raise
        with self.store.lock:
            if order.status != READY:
                raise problems.AcmeProblemError("orderNotReady", f"the order is {order.status}",
                                                403)
            order.status = PROCESSING
        self.workers.submit(self._issue, order, csr_request)
        return order

    def _allowed_srv(self, order: Order) -> set[str]:
        """SRVNames proven for this order's hosts (spec B9/B10), or any if the policy says so."""
        allowed = set()
        with self.store.lock:
            for authz_id in order.authz_ids:
                authz = self.store.authzs[authz_id]
                host = authz.identifier["value"]
                if self.config.srv_for_any_method and authz.status == VALID:
                    allowed |= {f"_{service}.{host}" for service in
                                email_challenges.SERVICE_PORTS}
                for challenge_id in authz.challenge_ids:
                    challenge = self.store.challenges[challenge_id]
                    if challenge.status == VALID:
                        allowed |= {f"_{service}.{host}"
                                    for service, _ in challenge.proven_services}
        return allowed

    def _issue(self, order: Order, request: issuance.CertificateRequest) -> None:
        """Sign with the profile the order's identifier type calls for."""
        try:
            is_email = order.identifiers[0]["type"] == "email"
            cert = (self.authority.issue_smime if is_email else self.authority.issue_tls)(
                request)
            chain = self.authority.chain_pem(cert)
        except Exception as error:  # noqa: BLE001 - the order must end, not hang
            logger.exception("issuance for order %s failed", order.ident)
            with self.store.lock:
                order.status = INVALID
                order.error = problems.problem_json("serverInternal", f"issuance failed: {error}")
            return
        with self.store.lock:
            cert_id = random_token(9)
            self.store.certificates[cert_id] = chain
            self.store.issued[cert.public_bytes(serialization.Encoding.DER)] = IssuedCertificate(
                cert.serial_number, order.account_id, list(order.identifiers),
                _public_key_der(cert.public_key()))
            order.cert_id = cert_id
            order.status = VALID
        self.decide(f"order {order.ident} VALID: issued "
                    f"{'S/MIME' if is_email else 'TLS'} certificate {cert.serial_number:x}")

    def certificate(self, request: SignedRequest, ident: str) -> str:
        """POST-as-GET of a certificate chain, for its order's account only."""
        self._require_post_as_get(request)
        with self.store.lock:
            chain = self.store.certificates.get(ident)
            owner = next((o.account_id for o in self.store.orders.values()
                          if o.cert_id == ident), None)
        assert request.account is not None
        if chain is None or owner is None:
            raise problems.not_found("no such certificate")
        if owner != request.account.ident:
            raise problems.unauthorized("this certificate belongs to another account")
        return chain

    # -- revocation -----------------------------------------------------------------------

    def revoke(self, request: SignedRequest) -> None:
        """revokeCert (RFC 8555 §7.6), signed by the issuing account, by an account holding
        valid authorizations for every identifier in the certificate, or by the certificate's
        own key (jwk); refusals are ``unauthorized``, ``alreadyRevoked`` or
        ``badRevocationReason``."""
        payload = request.json()
        text, reason = payload.get("certificate"), payload.get("reason", 0)
        if not isinstance(text, str):
            raise problems.malformed("revokeCert needs a certificate field")
        if type(reason) is not int or reason not in REVOCATION_REASONS:
            raise problems.AcmeProblemError(
                "badRevocationReason", f"reason must be one of {sorted(REVOCATION_REASONS)} "
                "(RFC 5280 CRLReason)")
        try:
            der = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise problems.malformed("certificate is not base64url DER") from None
        with self.store.lock:
            issued = self.store.issued.get(der)
        if issued is None:
            raise problems.not_found("this CA did not issue that certificate")
        by = self._revoker(request, issued)
        with self.store.lock:
            if issued.revoked_reason is not None:
                raise problems.AcmeProblemError("alreadyRevoked",
                                                "the certificate is already revoked")
            issued.revoked_reason = reason
        self.decide(f"certificate {issued.serial:x} REVOKED (reason {reason}) by {by}")

    def _revoker(self, request: SignedRequest, issued: IssuedCertificate) -> str:
        """Who may revoke: named for the decision log, or ``unauthorized``."""
        if request.account is None:
            if _public_key_der(request.key.public_key().key) != issued.public_key:
                raise problems.unauthorized("the JWS key is not the certificate's key")
            return "the certificate's key"
        if request.account.ident == issued.account_id:
            return f"account {request.account.ident}, which ordered it"
        with self.store.lock:
            authorized = {(authz.identifier["type"], authz.identifier["value"])
                          for authz in self.store.authzs.values()
                          if authz.account_id == request.account.ident and authz.status == VALID}
        if all((i["type"], i["value"]) in authorized for i in issued.identifiers):
            return f"account {request.account.ident}, authorized for every identifier"
        raise problems.unauthorized("this account neither ordered the certificate nor holds "
                                    "authorizations for all its identifiers")


def _public_key_der(key: Any) -> bytes:
    """SubjectPublicKeyInfo DER, to compare keys across josepy and cryptography objects."""
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))
