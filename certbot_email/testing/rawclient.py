"""A raw ACME client for the test CA built on the ``acme`` library (not our certbot plugins).

Tests and demos use it to drive orders with ``email`` identifiers, which
``ClientV2.new_order`` cannot express, and to build CSRs with mailbox and SRVName SANs.
"""
import datetime
import time
from typing import Any, Optional

import josepy as jose
from acme import challenges, client, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbot_email.protocol import csr as csr_names
from certbot_email.protocol import identifiers

PrivateKey = Any


def make_csr(key: PrivateKey, dns_names: tuple[str, ...] = (),
             mailboxes: tuple[str, ...] = (), srv: tuple[tuple[str, str], ...] = (),
             key_usage: Optional[x509.KeyUsage] = None) -> bytes:
    """A PEM CSR with an empty subject and the given SANs (SRV as (service, host) pairs)."""
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += csr_names.mailbox_sans(mailboxes)
    sans += [csr_names.srv_general_name(service, host) for service, host in srv]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def new_key(kind: str = "ec") -> PrivateKey:
    """A certificate key: P-256 by default, RSA 2048 on request."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


class RawClient:
    """One ACME account at one directory, with blocking helpers for each protocol step."""

    def __init__(self, directory_url: str, root_path: str,
                 account_key: Optional[jose.JWK] = None) -> None:
        # ClientNetwork hands verify_ssl to requests, which also takes a CA bundle path.
        self.key = account_key or jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
        self.net = client.ClientNetwork(self.key, user_agent="certbot-email-testca-rawclient",
                                        verify_ssl=root_path)  # type: ignore[arg-type]
        self.directory = client.ClientV2.get_directory(directory_url, self.net)
        self.acme = client.ClientV2(self.directory, self.net)

    def register(self) -> messages.RegistrationResource:
        """newAccount with the terms agreed."""
        return self.acme.new_account(messages.NewRegistration.from_data(
            email="admin@example.test", terms_of_service_agreed=True))

    def new_order(self, kind: str, values: tuple[str, ...], csr_pem: bytes = b""
                  ) -> messages.OrderResource:
        """newOrder with explicit identifiers of one type (``dns`` or ``email``)."""
        typ = identifiers.IDENTIFIER_EMAIL if kind == "email" else messages.IDENTIFIER_FQDN
        order = messages.NewOrder(identifiers=tuple(
            messages.Identifier(typ=typ, value=value) for value in values))
        response = self.acme._post(self.directory["newOrder"], order)  # noqa: SLF001
        body = messages.Order.from_json(response.json())
        authzs = [self.fetch_authz(url) for url in body.authorizations]
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authzs, csr_pem=csr_pem)

    def fetch_authz(self, url: str) -> messages.AuthorizationResource:
        """POST-as-GET of an authorization."""
        response = self.acme._post_as_get(url)  # noqa: SLF001
        return messages.AuthorizationResource(
            body=messages.Authorization.from_json(response.json()), uri=url)

    @staticmethod
    def challenge(authzr: messages.AuthorizationResource, typ: str) -> messages.ChallengeBody:
        """The challenge of one type in an authorization."""
        for challb in authzr.body.challenges:
            if challb.chall.typ == typ:
                return challb
        raise LookupError(f"no {typ} challenge in {authzr.uri}")

    def answer(self, challb: messages.ChallengeBody,
               response: challenges.ChallengeResponse) -> messages.ChallengeResource:
        """POST the response object to the challenge URL."""
        return self.acme.answer_challenge(challb, response)

    def wait_authz(self, authzr: messages.AuthorizationResource, patience: float = 30.0
                   ) -> messages.AuthorizationResource:
        """Poll until the authorization leaves ``pending`` (or patience runs out)."""
        deadline = time.monotonic() + patience
        while True:
            current = self.fetch_authz(authzr.uri)
            if current.body.status != messages.STATUS_PENDING or time.monotonic() > deadline:
                return current
            time.sleep(0.2)

    def finalize(self, orderr: messages.OrderResource, csr_pem: bytes,
                 patience: float = 30.0) -> messages.OrderResource:
        """Finalize with ``csr_pem`` and download the chain once the order is valid."""
        ready = orderr.update(csr_pem=csr_pem)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=patience)
        return self.acme.finalize_order(ready, deadline)
