"""ACME problem documents (RFC 8555 §6.7): every refusal the test CA makes is one of these."""
from typing import Any, Optional

ERROR_PREFIX = "urn:ietf:params:acme:error:"


class AcmeProblemError(Exception):
    """A refusal that the HTTP layer turns into an ``application/problem+json`` response."""

    def __init__(self, kind: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status

    def to_json(self) -> dict[str, Any]:
        """The problem document body."""
        return {"type": ERROR_PREFIX + self.kind, "detail": self.detail, "status": self.status}


def malformed(detail: str) -> AcmeProblemError:
    """The request could not be understood."""
    return AcmeProblemError("malformed", detail)


def unauthorized(detail: str) -> AcmeProblemError:
    """The account may not do this."""
    return AcmeProblemError("unauthorized", detail, 403)


def not_found(detail: str) -> AcmeProblemError:
    """No such resource; RFC 8555 has no error type for it, so ``malformed`` with 404."""
    return AcmeProblemError("malformed", detail, 404)


def problem_json(kind: str, detail: str, identifier: Optional[dict[str, str]] = None
                 ) -> dict[str, Any]:
    """A problem document stored on a challenge or order, not raised."""
    body: dict[str, Any] = {"type": ERROR_PREFIX + kind, "detail": detail}
    if identifier is not None:
        body["identifier"] = identifier
    return body
