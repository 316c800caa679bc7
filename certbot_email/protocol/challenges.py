"""ACME challenge and response objects for RFC 8823 and draft-ietf-acme-email-tls.

Declarative josepy classes, registered with acme's challenge registries so that certbot and
the acme client parse them. josepy 2 needs a type annotation on every field, or the class
fails at import time and takes every certbot command down with it.
"""
from typing import Any, Optional

import josepy as jose
from acme import challenges

from certbot_email.protocol import keyauth

#: IANA default ports of the services the email-tls challenges name (RFC 6186, RFC 8314).
SERVICE_PORTS: dict[str, int] = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
}

#: Services reached with TLS from the first byte; the others start in plaintext.
IMPLICIT_TLS_SERVICES = frozenset({"submissions", "imaps", "pop3s"})


def default_port(service: str) -> int:
    """The IANA port of ``service``; ``ValueError`` names the known services otherwise."""
    try:
        return SERVICE_PORTS[service]
    except KeyError:
        raise ValueError(f"unknown mail service {service!r}; "
                         f"known: {', '.join(sorted(SERVICE_PORTS))}") from None


def scoped_owner_name(host: str, service: str, port: Optional[int] = None) -> str:
    """``_<port>._<service>._acme-challenge.<host>`` (draft-ietf-acme-email-tls §3.3)."""
    port = default_port(service) if port is None else port
    return f"_{port}._{service}.{challenges.DNS01.LABEL}.{host}"


class _DigestValidation:
    """Mixin: the validation value is base64url(SHA-256(key authorization)), as for dns-01."""

    def validation(self, account_key: jose.JWK, **unused_kwargs: Any) -> str:
        """The value to publish or advertise."""
        return keyauth.key_authorization_digest(
            self.key_authorization(account_key))  # type: ignore[attr-defined]


class _PayloadResponse(challenges.KeyAuthorizationChallengeResponse):
    """A response whose wire form never has ``keyAuthorization`` (RFC 8555), so CAs parse it."""

    key_authorization: Optional[str] = jose.field(  # type: ignore[assignment]
        "keyAuthorization", omitempty=True)


class _ScopedResponse(_PayloadResponse):
    """Response naming the service and port that was proven (draft -05 §3.1-3.2)."""

    service: Optional[str] = jose.field("service", omitempty=True)
    port: Optional[int] = jose.field("port", omitempty=True)


class _ScopedChallenge(_DigestValidation, challenges.KeyAuthorizationChallenge):
    """An email-tls challenge: its proof is bound to one service on one port."""

    response_cls: type[_ScopedResponse]

    def scoped_response(self, account_key: jose.JWK, service: str,
                        port: Optional[int] = None) -> _ScopedResponse:
        """The POST body ``{"service": ..., "port": ...}``; the port defaults to IANA's."""
        return self.response_cls(key_authorization=self.key_authorization(account_key),
                                 service=service,
                                 port=default_port(service) if port is None else port)


@challenges.ChallengeResponse.register
class EmailReply00Response(_PayloadResponse):
    """RFC 8823 response POST; serialises to ``{}`` (RFC 8555 erratum 5729)."""

    typ = "email-reply-00"


@challenges.Challenge.register
class EmailReply00(challenges.KeyAuthorizationChallenge):
    """RFC 8823 ``email-reply-00``: ``token`` holds token-part2, ``from`` the CA's sender.

    ``token`` is kept as the string the CA sent: RFC 8823 joins it as text by default, and a
    CA that pads it or sends fewer than 16 bytes must still parse.
    """

    response_cls = EmailReply00Response
    typ = response_cls.typ

    token: str = jose.field("token")  # type: ignore[assignment]
    sender: str = jose.field("from")

    def key_authorization(self, account_key: jose.JWK, token_part1: str = "",
                          joining: keyauth.TokenJoining = keyauth.TokenJoining.STRING) -> str:
        """Key authorization over the joined token; token-part1 comes from the mail Subject."""
        if not token_part1:
            raise ValueError("email-reply-00 needs token-part1 from the challenge mail")
        token = keyauth.join_tokens(token_part1, self.token, joining)
        return keyauth.key_authorization(token, account_key)

    def validation(self, account_key: jose.JWK, **kwargs: Any) -> str:
        """Digest for the response mail's BEGIN/END block; pass ``token_part1``/``joining``."""
        return keyauth.key_authorization_digest(self.key_authorization(account_key, **kwargs))

    def response(self, account_key: jose.JWK) -> EmailReply00Response:
        """The POST body: RFC 8823 defines no fields, so nothing depends on token-part1."""
        return EmailReply00Response()


@challenges.ChallengeResponse.register
class DNSEmail00Response(_ScopedResponse):
    """dns-email-00 response; ``services``/``ports`` are the draft's open "arrays" variant (B3)."""

    typ = "dns-email-00"

    services: Optional[tuple[str, ...]] = jose.field("services", omitempty=True)
    ports: Optional[tuple[int, ...]] = jose.field("ports", omitempty=True)


@challenges.Challenge.register
class DNSEmail00(_ScopedChallenge):
    """``dns-email-00``: a dns-01 TXT record at a service-scoped owner name."""

    response_cls = DNSEmail00Response
    typ = response_cls.typ

    def validation_domain_name(self, name: str, service: str,
                               port: Optional[int] = None) -> str:
        """Owner name of the TXT record for ``service`` on ``port`` of host ``name``."""
        return scoped_owner_name(name, service, port)


@challenges.ChallengeResponse.register
class CapabilitySMTP00Response(_ScopedResponse):
    """capability-smtp-00 response."""

    typ = "capability-smtp-00"


@challenges.Challenge.register
class CapabilitySMTP00(_ScopedChallenge):
    """``capability-smtp-00``: an EHLO keyword ``ACME <value>``."""

    response_cls = CapabilitySMTP00Response
    typ = response_cls.typ


@challenges.ChallengeResponse.register
class CapabilityIMAP00Response(_ScopedResponse):
    """capability-imap-00 response."""

    typ = "capability-imap-00"


@challenges.Challenge.register
class CapabilityIMAP00(_ScopedChallenge):
    """``capability-imap-00``: an IMAP capability ``ACME=<value>``."""

    response_cls = CapabilityIMAP00Response
    typ = response_cls.typ


@challenges.ChallengeResponse.register
class CapabilityPOP00Response(_ScopedResponse):
    """capability-pop-00 response."""

    typ = "capability-pop-00"


@challenges.Challenge.register
class CapabilityPOP00(_ScopedChallenge):
    """``capability-pop-00``: a POP3 CAPA line ``ACME <value>``."""

    response_cls = CapabilityPOP00Response
    typ = response_cls.typ


def imap_capability(value: str) -> str:
    """The IMAP capability atom advertising ``value``."""
    return f"ACME={value}"
