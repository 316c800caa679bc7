"""SMTP submission: a TLS mode that does not fit the port is named within seconds, not 30 s later.

Loopback stand-ins for the two kinds of port: one that greets in plaintext (587's kind) and one
that expects a TLS handshake first (465's kind); the real Postfix ports are tried in
tests/integration/test_first_hour.py.
"""
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from certbot_email.transport import TlsMode, TransportError, first_bytes, offers_implicit_tls, smtp
from certbot_email_smtpext.capability_state import write_throwaway_certificate

Handler = Callable[[socket.socket], None]


@pytest.fixture(name="serve")
def fixture_serve() -> Iterator[Callable[[Handler], int]]:
    """Start a loopback server running ``handler`` for each connection; returns its port."""
    listeners: list[socket.socket] = []

    def serve(handler: Handler) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=_handle, args=(handler, conn), daemon=True).start()
        threading.Thread(target=accept, daemon=True).start()
        return int(listener.getsockname()[1])
    yield serve
    for listener in listeners:
        listener.close()


def _handle(handler: Handler, conn: socket.socket) -> None:
    with conn:
        try:
            handler(conn)
        except OSError:
            pass


def plaintext_submission(delay: float = 0.0) -> Handler:
    """Greets (after ``delay``), answers EHLO without STARTTLS or AUTH, then waits for QUIT."""
    def handler(conn: socket.socket) -> None:
        time.sleep(delay)
        conn.sendall(b"220 fake.example ESMTP\r\n")
        reader = conn.makefile("rb")
        for line in reader:
            if line.upper().startswith((b"EHLO", b"HELO")):
                conn.sendall(b"250 fake.example\r\n")
            elif line.upper().startswith(b"QUIT"):
                conn.sendall(b"221 bye\r\n")
                return
    return handler


def implicit_tls(context: ssl.SSLContext) -> Handler:
    """Waits for a TLS handshake and then for the client to go, as port 465 does."""
    def handler(conn: socket.socket) -> None:
        conn.settimeout(5)
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)
    return handler


@pytest.fixture(name="server_tls")
def fixture_server_tls(tmp_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*write_throwaway_certificate(str(tmp_path), "localhost"))
    return context


def settings(port: int, tls: TlsMode) -> smtp.SmtpSettings:
    return smtp.SmtpSettings("127.0.0.1", port, tls, "alice", "secret", timeout=10)


def test_starttls_on_an_implicit_tls_port_is_named_after_the_greeting_wait(
        serve: Callable[[Handler], int], server_tls: ssl.SSLContext,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp, "GREETING_SECONDS", 0.3)
    port = serve(implicit_tls(server_tls))
    with pytest.raises(TransportError) as raised:
        smtp.check_login(settings(port, TlsMode.STARTTLS))
    assert str(raised.value) == (
        f"SMTP submission server 127.0.0.1:{port} sent no greeting within 0.3 s but completed "
        f"a TLS handshake at once, so it expects implicit TLS, not STARTTLS: set smtp_tls = "
        f"implicit (or smtp_port to a STARTTLS port, usually 587)")


def test_implicit_tls_on_a_plaintext_port_is_named(serve: Callable[[Handler], int]) -> None:
    port = serve(plaintext_submission())
    with pytest.raises(TransportError, match=r"127\.0\.0\.1:\d+ greets in plaintext, so it "
                       r"expects STARTTLS, not implicit TLS: set smtp_tls = starttls"):
        smtp.submit(settings(port, TlsMode.IMPLICIT), b"Subject: x\r\n\r\nx\r\n", "a@b.c", "d@e.f")


def test_a_slow_greeting_is_waited_for_and_not_taken_for_tls(
        serve: Callable[[Handler], int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp, "GREETING_SECONDS", 0.2)
    port = serve(plaintext_submission(delay=0.6))
    with pytest.raises(TransportError) as raised:
        smtp.check_login(settings(port, TlsMode.STARTTLS))
    # It got past the greeting on the second try: what stops it now is the EHLO reply.
    assert "does not offer STARTTLS" in str(raised.value)


def test_a_port_without_auth_is_said_not_to_be_submission(
        serve: Callable[[Handler], int], server_tls: ssl.SSLContext) -> None:
    def tls_without_auth(conn: socket.socket) -> None:
        conn.settimeout(5)
        with server_tls.wrap_socket(conn, server_side=True) as tls:
            plaintext_submission()(tls)
    port = serve(tls_without_auth)
    unverified = settings(port, TlsMode.IMPLICIT)
    with pytest.raises(TransportError, match="offers no login \\(AUTH\\), so it is not a "
                       "submission port"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(smtp, "tls_context", lambda ca_file: _unverified())
            smtp.check_login(unverified)


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_probes_tell_the_two_kinds_of_port_apart(serve: Callable[[Handler], int],
                                                 server_tls: ssl.SSLContext) -> None:
    plaintext, implicit = serve(plaintext_submission()), serve(implicit_tls(server_tls))
    assert first_bytes("127.0.0.1", plaintext, 2).startswith(b"220 ")
    assert first_bytes("127.0.0.1", implicit, 0.3) == b""
    assert offers_implicit_tls("127.0.0.1", implicit, 2)
    assert not offers_implicit_tls("127.0.0.1", plaintext, 2)
