"""Connect to a TLS listener (STARTTLS for SMTP, IMAP, POP3) and fetch the certificate it serves."""
import imaplib
import poplib
import smtplib
import socket
import ssl
from typing import Any

from cryptography import x509

from certbot_email_smtpext.listeners import TlsListener, TlsStart

TIMEOUT_SECONDS = 5.0
#: Our EHLO name; without one smtplib asks the resolver for this host's FQDN.
EHLO_NAME = "localhost"
#: TLS 1.2 cipher strings that leave a server holding several keys only one certificate to pick;
#: TLS 1.3 chooses by signature algorithms, which Python's ssl cannot restrict.
_CIPHERS_BY_KEY_ALGORITHM = {"RSA": "ECDHE+aRSA", "EC": "ECDHE+aECDSA"}


class ProbeError(Exception):
    """The listener could not be reached, or did not complete a TLS handshake."""


class _ProbeContext(ssl.SSLContext):
    """A client context that sends the listener's SNI name (or none), whatever host we dialled."""

    server_name: str | None = None

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """smtplib, imaplib and poplib pass the dialled address; send the SNI name instead."""
        kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def _any_certificate_context(server_name: str | None,
                             key_algorithm: str | None) -> ssl.SSLContext:
    """A client context that accepts any certificate: we compare what is served, not trust it."""
    context = _ProbeContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.server_name = server_name
    if key_algorithm is not None:
        if key_algorithm not in _CIPHERS_BY_KEY_ALGORITHM:
            raise ValueError(f"cannot ask for a {key_algorithm!r} certificate: use one of "
                             + ", ".join(_CIPHERS_BY_KEY_ALGORITHM))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(_CIPHERS_BY_KEY_ALGORITHM[key_algorithm])
    return context


def served_certificate(listener: TlsListener, timeout: float = TIMEOUT_SECONDS,
                       key_algorithm: str | None = None) -> x509.Certificate:
    """The leaf certificate the listener serves now; ProbeError says why there is none.

    The listener's server_name is sent as SNI. key_algorithm ("RSA" or "EC", see
    checks.key_algorithm) offers only TLS 1.2 suites for that key type, to see that certificate
    of a daemon that holds several.
    """
    context = _any_certificate_context(listener.server_name, key_algorithm)
    try:
        return _handshake(listener, context, timeout)
    except (OSError, ValueError, imaplib.IMAP4.error, poplib.error_proto) as error:
        raise ProbeError(f"{type(error).__name__}: {error}") from error


def _handshake(listener: TlsListener, context: ssl.SSLContext,
               timeout: float) -> x509.Certificate:
    """Connect, start TLS the way the listener expects, and return the peer's leaf certificate."""
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
