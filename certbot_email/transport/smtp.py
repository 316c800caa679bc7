"""Sending one message through authenticated SMTP submission (RFC 6409, RFC 8314)."""
import dataclasses
import smtplib
import ssl
from typing import Optional

from certbot_email.transport import TlsMode, TransportError, tls_context


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


def submit(settings: SmtpSettings, message: bytes, sender: str, recipient: str) -> None:
    """Submit ``message`` from ``sender`` to ``recipient``; ``TransportError`` on any refusal."""
    context = tls_context(settings.ca_file)
    where = f"SMTP submission server {settings.host}:{settings.port}"
    try:
        if settings.tls is TlsMode.IMPLICIT:
            connection: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.host, settings.port, local_hostname=settings.local_hostname,
                timeout=settings.timeout, context=context)
        else:
            connection = smtplib.SMTP(settings.host, settings.port,
                                      local_hostname=settings.local_hostname,
                                      timeout=settings.timeout)
        with connection:
            if settings.tls is TlsMode.STARTTLS:
                connection.starttls(context=context)
                connection.ehlo()
            connection.login(settings.user, settings.password)
            connection.sendmail(sender, [recipient], message)
    except smtplib.SMTPAuthenticationError as error:
        raise TransportError(f"{where} refused the login as {settings.user!r} "
                             f"({error.smtp_code}); check the SMTP user and password") from None
    except smtplib.SMTPRecipientsRefused as error:
        raise TransportError(f"{where} refused the recipient {recipient!r}: "
                             f"{error.recipients.get(recipient)}") from None
    except smtplib.SMTPSenderRefused as error:
        raise TransportError(f"{where} refused {sender!r} as sender ({error.smtp_code} "
                             f"{error.smtp_error!r}); the SMTP user must be allowed to send "
                             f"as the certified address") from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as error:
        raise TransportError(f"{where}: {error}") from None
