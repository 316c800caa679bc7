"""Sending one message through authenticated SMTP submission (RFC 6409, RFC 8314).

A TLS mode that does not fit the port is the commonest submission mistake, and neither way
fails clearly by itself: implicit TLS against a STARTTLS port dies on OpenSSL's "wrong version
number", and STARTTLS against an implicit-TLS port waits out the whole timeout for a greeting
that never comes. Both are recognised here within seconds and named by the key to change.
"""
import contextlib
import dataclasses
import smtplib
import ssl
from typing import Iterator, Optional

from certbot_email.transport import (
    TlsMode,
    TransportError,
    first_bytes,
    offers_implicit_tls,
    tls_context,
)

#: How long a STARTTLS port may take to greet before we ask whether it speaks TLS instead.
GREETING_SECONDS = 5.0
#: The probes' own limit: a port of the other kind answers them at once.
PROBE_SECONDS = 5.0
SMTP_GREETING = b"220"


@dataclasses.dataclass(frozen=True)
class SmtpSettings:
    """A submission server and the account to log in with; the password never shows in a repr."""

    host: str
    port: int
    tls: TlsMode
    user: str
    password: str = dataclasses.field(repr=False)
    #: EHLO name; passed explicitly because socket.getfqdn() can hang or say "localhost".
    local_hostname: str = "localhost"
    ca_file: Optional[str] = None
    timeout: float = 30.0

    def describe(self) -> str:
        """``host:port`` for messages."""
        return f"SMTP submission server {self.host}:{self.port}"


def submit(settings: SmtpSettings, message: bytes, sender: str, recipient: str) -> None:
    """Submit ``message`` from ``sender`` to ``recipient``; ``TransportError`` on any refusal."""
    with _logged_in(settings) as connection:
        connection.sendmail(sender, [recipient], message)


def check_login(settings: SmtpSettings) -> None:
    """Connect, negotiate TLS and log in, sending nothing: finds a wrong port, TLS mode or
    password before a CA is asked for anything; ``TransportError`` says which."""
    with _logged_in(settings):
        pass


@contextlib.contextmanager
def _logged_in(settings: SmtpSettings) -> Iterator[smtplib.SMTP]:
    """An authenticated session; every failure inside, sending included, is a TransportError."""
    context = tls_context(settings.ca_file)
    where = settings.describe()
    try:
        with _connect(settings, context) as connection:
            connection.ehlo()
            if settings.tls is TlsMode.STARTTLS:
                if not connection.has_extn("starttls"):
                    raise TransportError(f"{where} does not offer STARTTLS; use its implicit-TLS "
                                         f"port (smtp_tls = implicit) or another server")
                connection.starttls(context=context)
                connection.ehlo()
            if not connection.has_extn("auth"):
                raise TransportError(f"{where} offers no login (AUTH), so it is not a "
                                     f"submission port: set smtp_port to the submission port "
                                     f"(usually 587 with STARTTLS, or 465)")
            connection.login(settings.user, settings.password)
            yield connection
    except smtplib.SMTPAuthenticationError as error:
        raise TransportError(f"{where} refused the login as {settings.user!r} "
                             f"({error.smtp_code}); check the SMTP user and password") from None
    except smtplib.SMTPRecipientsRefused as error:
        recipient = next(iter(error.recipients), "")
        raise TransportError(f"{where} refused the recipient {recipient!r}: "
                             f"{error.recipients.get(recipient)}") from None
    except smtplib.SMTPSenderRefused as error:
        raise TransportError(f"{where} refused {error.sender!r} as sender ({error.smtp_code} "
                             f"{error.smtp_error!r}); the SMTP user must be allowed to send "
                             f"as the certified address") from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as error:
        raise TransportError(f"{where}: {error}") from None


def _connect(settings: SmtpSettings, context: ssl.SSLContext) -> smtplib.SMTP:
    """A greeted connection, TLS from the start for implicit mode; a mode mismatch says so."""
    if settings.tls is TlsMode.IMPLICIT:
        try:
            return smtplib.SMTP_SSL(settings.host, settings.port,
                                    local_hostname=settings.local_hostname,
                                    timeout=settings.timeout, context=context)
        except ssl.SSLCertVerificationError:
            raise
        except ssl.SSLError:
            if first_bytes(settings.host, settings.port, PROBE_SECONDS).startswith(
                    SMTP_GREETING):
                raise TransportError(
                    f"{settings.describe()} greets in plaintext, so it expects STARTTLS, not "
                    f"implicit TLS: set smtp_tls = starttls (or smtp_port to an implicit-TLS "
                    f"port, usually 465)") from None
            raise
    try:
        connection = smtplib.SMTP(settings.host, settings.port,
                                  local_hostname=settings.local_hostname, timeout=GREETING_SECONDS)
    except (smtplib.SMTPServerDisconnected, TimeoutError):
        if offers_implicit_tls(settings.host, settings.port, PROBE_SECONDS):
            raise TransportError(
                f"{settings.describe()} sent no greeting within {GREETING_SECONDS:g} s but "
                f"completed a TLS handshake at once, so it expects implicit TLS, not STARTTLS: "
                f"set smtp_tls = implicit (or smtp_port to a STARTTLS port, usually 587)"
            ) from None
        # Just a slow server: give it the whole timeout.
        return smtplib.SMTP(settings.host, settings.port, local_hostname=settings.local_hostname,
                            timeout=settings.timeout)
    connection.timeout = settings.timeout
    if connection.sock is not None:
        connection.sock.settimeout(settings.timeout)
    return connection
