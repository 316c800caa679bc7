"""Read a listener's advertised ACME values the way the CA will, and wait until they show.

A reload is asynchronous (Postfix's master, Dovecot's long-lived login processes), so the
plugin answers the CA only once a fresh connection, made exactly like the CA's (same address
and port; plaintext before any STARTTLS, or an unverified implicit-TLS handshake), shows
every pending value.
"""
import socket
import ssl
import time
from typing import Callable, Iterable, Optional

from certbot_email.protocol import capability

TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.05


class ProbeError(Exception):
    """The listener could not be read (refused, closed, or not speaking the protocol)."""


def _reader(sock: socket.socket) -> Callable[[], str]:
    """CRLF lines from ``sock``; EOF is a ProbeError."""
    stream = sock.makefile("rb")

    def read_line() -> str:
        line = stream.readline(4096)
        if not line:
            raise ProbeError("the server closed the connection")
        return line.decode("utf-8", "replace").rstrip("\r\n")
    return read_line


def _smtp(sock: socket.socket, read_line: Callable[[], str]) -> list[str]:
    """Parameters of ``250-ACME <v>`` lines in the EHLO reply."""
    line = read_line()
    while line.startswith("220-"):
        line = read_line()
    if not line.startswith("220"):
        raise ProbeError(f"SMTP greeting was {line!r}")
    sock.sendall(b"EHLO certbot-email-probe.invalid\r\n")
    reply = [read_line()]
    while reply[-1].startswith("250-"):
        reply.append(read_line())
    sock.sendall(b"QUIT\r\n")
    return capability.ehlo_acme_values(line for line in reply if line.startswith("250"))


def _imap(sock: socket.socket, read_line: Callable[[], str]) -> list[str]:
    """The greeting's [CAPABILITY ...] if present, else the CAPABILITY command."""
    greeting = read_line()
    if not greeting.upper().startswith("* OK"):
        raise ProbeError(f"IMAP greeting was {greeting!r}")
    if "[CAPABILITY " in greeting.upper():
        values = capability.imap_acme_values(greeting)
    else:
        sock.sendall(b"p1 CAPABILITY\r\n")
        values = []
        line = read_line()
        while not line.startswith("p1 "):
            if line.upper().startswith("* CAPABILITY "):
                values += capability.imap_acme_values(line)
            line = read_line()
    sock.sendall(b"p2 LOGOUT\r\n")
    return values


def _pop3(sock: socket.socket, read_line: Callable[[], str]) -> list[str]:
    """``ACME <v>`` lines of the CAPA response."""
    greeting = read_line()
    if not greeting.startswith("+OK"):
        raise ProbeError(f"POP3 greeting was {greeting!r}")
    sock.sendall(b"CAPA\r\n")
    if not read_line().startswith("+OK"):
        return []
    values = capability.pop3_acme_values(iter(read_line, "."))  # the lines up to the lone dot
    sock.sendall(b"QUIT\r\n")
    return values


_READERS = {"smtp": _smtp, "imap": _imap, "pop3": _pop3}


def session_values(protocol: str, sock: socket.socket) -> list[str]:
    """One dialogue on a connected socket: the ACME values it shows, then QUIT/LOGOUT."""
    return _READERS[protocol](sock, _reader(sock))


def unverified_tls() -> ssl.SSLContext:
    """A client context that accepts any certificate, as the CA does for a server without one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def advertised_values(protocol: str, host: str, port: int, implicit_tls: bool,
                      server_name: Optional[str] = None,
                      timeout: float = TIMEOUT_SECONDS) -> list[str]:
    """The ACME values one fresh connection shows; ProbeError when it cannot be read."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if not implicit_tls:
                return session_values(protocol, raw)
            with unverified_tls().wrap_socket(raw, server_hostname=server_name) as tls:
                return session_values(protocol, tls)
    except (OSError, ssl.SSLError) as error:
        raise ProbeError(f"{type(error).__name__}: {error}") from error


def wait_until(protocol: str, host: str, port: int, implicit_tls: bool,
               accept: Callable[[list[str]], bool], timeout: float,
               server_name: Optional[str] = None) -> tuple[bool, str]:
    """Poll until ``accept(values)`` holds; (done, what the last probe saw)."""
    deadline = time.monotonic() + timeout
    seen = "nothing yet"
    while True:
        try:
            values = advertised_values(protocol, host, port, implicit_tls, server_name)
            if accept(values):
                return True, f"ACME values {values}"
            seen = f"ACME values {values}"
        except ProbeError as error:
            seen = str(error)
        if time.monotonic() >= deadline:
            return False, seen
        time.sleep(POLL_SECONDS)


def shows_all(expected: Iterable[str]) -> Callable[[list[str]], bool]:
    """Acceptance test: every expected value is advertised."""
    wanted = set(expected)
    return lambda values: wanted <= set(values)


def shows_none(unwanted: Iterable[str]) -> Callable[[list[str]], bool]:
    """Acceptance test: the real server is back, without our values."""
    gone = set(unwanted)
    return lambda values: not gone & set(values)
