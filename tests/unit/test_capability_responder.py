"""The capability responder as the CA and real clients meet it, read through our probe.

No mail servers: the responder runs from a thread on a free loopback port, and the spawned
(fd 0) mode runs over a socketpair.
"""
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from certbot_email_smtpext import capability_probe, capability_responder
from certbot_email_smtpext.capability_state import write_throwaway_certificate, write_values

VALUES = ("ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8",
          "gfj9Xq-Rg85nM_second-value_0123456789abcd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(name="context")
def fixture_context(tmp_path: Path) -> ssl.SSLContext:
    return capability_responder.tls_context(*write_throwaway_certificate(str(tmp_path),
                                                                        "mail.example.test"))


def serve(protocol: str, context: ssl.SSLContext, implicit_tls: bool
          ) -> tuple[capability_responder.ThreadedResponder, int]:
    port = free_port()
    responder = capability_responder.ThreadedResponder(
        capability_responder.Advertised(protocol, VALUES, "mail.example.test", context),
        implicit_tls)
    responder.start(["127.0.0.1"], port)
    return responder, port


@pytest.fixture(name="running")
def fixture_running(request: pytest.FixtureRequest, context: ssl.SSLContext
                    ) -> Iterator[tuple[str, int, bool]]:
    protocol, implicit_tls = request.param
    responder, port = serve(protocol, context, implicit_tls)
    yield protocol, port, implicit_tls
    responder.stop()


@pytest.mark.parametrize("running", [(p, tls) for p in ("smtp", "imap", "pop3")
                                     for tls in (False, True)], indirect=True,
                         ids=lambda param: f"{param[0]}-{'implicit' if param[1] else 'plain'}")
def test_every_pending_value_is_advertised(running):
    protocol, port, implicit_tls = running
    assert capability_probe.advertised_values(protocol, "127.0.0.1", port,
                                              implicit_tls) == list(VALUES)


def dialogue(port: int, lines: list[bytes], wrap_after: bytes = b"") -> list[str]:
    """Send ``lines`` one by one, collecting replies; switch to TLS after ``wrap_after``."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=5)
    replies = [sock.recv(4096).decode()]
    for line in lines:
        sock.sendall(line)
        replies.append(sock.recv(4096).decode())
        if line == wrap_after:
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
            sock = client.wrap_socket(sock)
    rest = sock.recv(4096)
    sock.close()
    return [*replies, rest.decode()]


def test_smtp_starttls_then_ehlo_still_shows_the_values_without_starttls(context):
    responder, port = serve("smtp", context, False)
    try:
        replies = dialogue(port, [b"EHLO ca.test\r\n", b"STARTTLS\r\n", b"EHLO ca.test\r\n",
                                  b"QUIT\r\n"], wrap_after=b"STARTTLS\r\n")
    finally:
        responder.stop()
    assert "250-STARTTLS" in replies[1] or "250 STARTTLS" in replies[1]
    assert replies[2].startswith("220 ")
    assert f"250-ACME {VALUES[0]}" in replies[3] and "STARTTLS" not in replies[3]
    assert replies[4].startswith("221")


def test_stop_ends_sessions_that_are_still_open(context):
    responder, port = serve("imap", context, True)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with client.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
        assert sock.recv(4096).startswith(b"* OK [CAPABILITY IMAP4rev1 ACME=")
        responder.stop()
        try:
            after_stop = sock.recv(4096)
        except (ConnectionError, ssl.SSLError):
            after_stop = b""
    assert after_stop == b""


@pytest.mark.parametrize("protocol, command, refusal", [
    ("smtp", b"MAIL FROM:<a@example.net>\r\n", "421 4.3.2"),
    ("smtp", b"AUTH PLAIN AGFAYg==\r\n", "421 4.3.2"),
    ("imap", b"a1 LOGIN alice secret\r\n", "* BYE [UNAVAILABLE]"),
    ("pop3", b"USER alice\r\n", "-ERR [SYS/TEMP]"),
])
def test_anything_else_gets_a_temporary_failure_and_the_connection_closes(
        context, protocol, command, refusal):
    responder, port = serve(protocol, context, False)
    try:
        replies = dialogue(port, [command])
    finally:
        responder.stop()
    assert replies[1].startswith(refusal)
    assert replies[2] == ""  # closed by the responder


def test_stop_gives_the_port_back(context):
    responder, port = serve("pop3", context, False)
    responder.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_bind_waits_for_the_port_then_gives_up_naming_the_error(context):
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    responder = capability_responder.ThreadedResponder(
        capability_responder.Advertised("smtp", VALUES, "h", context), False)
    try:
        with pytest.raises(OSError):
            responder.start(["127.0.0.1"], port, bind_seconds=0.05)
    finally:
        holder.close()


def spawned(tmp_path: Path, *extra: str, values: bool = True) -> list[str]:
    """Run the responder file the way spawn(8) does and say EHLO on the other end."""
    ours, theirs = socket.socketpair()
    values_file = write_values(str(tmp_path), VALUES) if values else str(tmp_path / "gone")
    process = subprocess.Popen(
        [sys.executable, "-I", capability_responder.__file__, "--protocol", "smtp",
         "--values-file", values_file, "--hostname", "mail.example.test", *extra],
        stdin=theirs.fileno(), stdout=theirs.fileno())
    theirs.close()
    ours.settimeout(10)
    try:
        reader = ours.makefile("rb")
        lines = [reader.readline().decode()]
        if lines[0].startswith("220"):
            ours.sendall(b"EHLO ca.test\r\nQUIT\r\n")
            lines += [line.decode() for line in reader]
    finally:
        ours.close()
        process.wait(10)
    return lines


def test_spawned_responder_serves_the_socket_on_fd_0(tmp_path):
    lines = spawned(tmp_path)
    assert lines[0] == "220 mail.example.test ESMTP\r\n"
    assert [f"250-ACME {value}\r\n" for value in VALUES] == [
        line for line in lines if "ACME" in line]
    assert lines[-1].startswith("221")


def test_spawned_responder_without_its_files_refuses_temporarily(tmp_path):
    assert spawned(tmp_path, values=False) == [capability_responder.UNAVAILABLE["smtp"] + "\r\n"]


def scripted_server(script: list[tuple[bytes, bytes]]) -> tuple[socket.socket, int]:
    """A one-connection server that sends a greeting, then answers each expected line."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            reader = conn.makefile("rb")
            for expected, answer in script:
                if expected:
                    assert reader.readline().startswith(expected)
                conn.sendall(answer)
    threading.Thread(target=serve, daemon=True).start()
    return listener, int(listener.getsockname()[1])


def test_probe_reads_capability_when_the_greeting_has_none_and_multiline_smtp_greetings():
    listener, port = scripted_server([
        (b"", b"* OK ready\r\n"),
        (b"p1 CAPABILITY", b"* CAPABILITY IMAP4rev1 acme=Case-Kept STARTTLS\r\np1 OK done\r\n")])
    with listener:
        assert capability_probe.advertised_values("imap", "127.0.0.1", port, False) == [
            "Case-Kept"]
    listener, port = scripted_server([
        (b"", b"220-mx.example ESMTP\r\n220 second line\r\n"),
        (b"EHLO ", b"250-mx.example\r\n250-ACME one\r\n250-acme two\r\n250 ACME bad extra\r\n")])
    with listener:
        assert capability_probe.advertised_values("smtp", "127.0.0.1", port, False) == [
            "one", "two"]


def test_wait_until_reports_what_it_saw_last():
    port = free_port()
    done, seen = capability_probe.wait_until("pop3", "127.0.0.1", port, False,
                                             capability_probe.shows_all(VALUES), 0.1)
    assert not done and "ConnectionRefusedError" in seen
