"""Mail clients for tests: inject, submit and wait for mail, on loopback, with verified TLS."""

from __future__ import annotations

import email.utils
import smtplib
import ssl
import time
from email.message import EmailMessage

from imapclient import IMAPClient

from .ports import HOST

# smtplib would otherwise say EHLO socket.getfqdn(), which may ask the system resolver.
CLIENT_HOSTNAME = "client.example.test"


def build_message(
    sender: str, recipient: str, subject: str, body: str = "lab test\n", **headers: str
) -> EmailMessage:
    """A complete message (with Date and Message-ID).

    Extra headers by keyword, underscores standing for dashes: Auto_Submitted="auto-replied".
    """
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate()
    # domain= given, or make_msgid would call socket.getfqdn()
    message["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2])
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def smtp_send(port: int, message: EmailMessage, *, starttls: ssl.SSLContext | None = None) -> None:
    """Deliver without authentication (the port-25 role); STARTTLS first when a context is given."""
    with smtplib.SMTP(HOST, port, local_hostname=CLIENT_HOSTNAME, timeout=10) as smtp:
        if starttls is not None:
            smtp.starttls(context=starttls)
        smtp.send_message(message)


def smtp_submit(
    port: int,
    message: EmailMessage,
    user: str,
    password: str,
    tls: ssl.SSLContext,
    *,
    implicit_tls: bool,
) -> None:
    """Authenticated submission: implicit TLS (465 role) or STARTTLS (587 role), then AUTH."""
    smtp: smtplib.SMTP
    if implicit_tls:
        smtp = smtplib.SMTP_SSL(
            HOST, port, local_hostname=CLIENT_HOSTNAME, timeout=10, context=tls
        )
    else:
        smtp = smtplib.SMTP(HOST, port, local_hostname=CLIENT_HOSTNAME, timeout=10)
    with smtp:
        if not implicit_tls:
            smtp.starttls(context=tls)
        smtp.login(user, password)
        smtp.send_message(message)


def imap_login(port: int, user: str, password: str, tls: ssl.SSLContext) -> IMAPClient:
    """A logged-in IMAPS client (certificate verified against tls); the caller logs out."""
    client = IMAPClient(HOST, port=port, ssl=True, ssl_context=tls, timeout=10)
    client.login(user, password)
    return client


def wait_for_message(
    port: int, user: str, password: str, tls: ssl.SSLContext, subject: str, timeout: float = 10
) -> bytes:
    """The raw bytes of the newest INBOX message whose Subject contains subject, once it is there.

    Fetched with BODY.PEEK[]: it stays unseen, and comes byte for byte as stored (for DKIM checks).
    """
    client = imap_login(port, user, password, tls)
    try:
        client.select_folder("INBOX", readonly=True)
        deadline = time.monotonic() + timeout
        while True:
            found = client.search(["SUBJECT", subject])
            if found:
                newest = max(found)
                return client.fetch([newest], ["BODY.PEEK[]"])[newest][b"BODY[]"]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no mail with subject {subject!r} for {user} in {timeout} s")
            time.sleep(0.05)
            client.noop()
    finally:
        client.logout()
