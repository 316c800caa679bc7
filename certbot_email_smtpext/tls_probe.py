"""Connect to a TLS listener (STARTTLS for SMTP, IMAP, POP3) and fetch the certificate it serves."""
import imaplib
import poplib
import smtplib
import socket
import ssl

from cryptography import x509

from certbot_email_smtpext.listeners import TlsListener, TlsStart

TIMEOUT_SECONDS = 5.0
#: Our EHLO name; without one smtplib asks the resolver for this host's FQDN.
EHLO_NAME = "localhost"


class ProbeError(Exception):
    """The listener could not be reached, or did not complete a TLS handshake."""


def _any_certificate_context() -> ssl.SSLContext:
    """A client context that accepts any certificate: we compare what is served, not trust it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served_certificate(listener: TlsListener, timeout: float = TIMEOUT_SECONDS) -> x509.Certificate:
    """The leaf certificate the listener serves now; ProbeError says why there is none."""
    try:
        return _handshake(listener, timeout)
    except (OSError, ValueError, imaplib.IMAP4.error, poplib.error_proto) as error:
        raise ProbeError(f"{type(error).__name__}: {error}") from error


def _handshake(listener: TlsListener, timeout: float) -> x509.Certificate:
    """Connect, start TLS the way the listener expects, and return the peer's leaf certificate."""
    context = _any_certificate_context()
    host, port = listener.host, listener.port
    if listener.start is TlsStart.IMPLICIT:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw) as tls:
                return _peer(tls)
    if listener.start is TlsStart.SMTP:
        with smtplib.SMTP(host, port, local_hostname=EHLO_NAME, timeout=timeout) as smtp:
            smtp.starttls(context=context)
            return _peer(smtp.sock)
    if listener.start is TlsStart.IMAP:
        imap = imaplib.IMAP4(host, port, timeout=timeout)
        try:
            imap.starttls(ssl_context=context)
            return _peer(imap.sock)
        finally:
            imap.shutdown()
    pop3 = poplib.POP3(host, port, timeout=timeout)
    try:
        pop3.stls(context=context)
        return _peer(pop3.sock)
    finally:
        pop3.close()


def _peer(sock: object) -> x509.Certificate:
    """The peer certificate of a TLS socket."""
    if not isinstance(sock, ssl.SSLSocket):
        raise ssl.SSLError("the connection did not switch to TLS")
    der = sock.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError("the server sent no certificate")
    return x509.load_der_x509_certificate(der)
