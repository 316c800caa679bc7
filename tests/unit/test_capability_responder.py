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
from tests.lab.ports import free_port

VALUES = ("ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8",
          "gfj9Xq-Rg85nM_second-value_0123456789abcd")


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


# -- relay mode -------------------------------------------------------------------------------

def test_ehlo_merge_puts_the_values_after_the_first_line_and_keeps_the_rest():
    merged = capability_responder.merge_ehlo([b"250-real.example\r\n", b"250-PIPELINING\r\n",
                                              b"250 STARTTLS\r\n"], VALUES)
    assert merged == (f"250-real.example\r\n250-ACME {VALUES[0]}\r\n250-ACME {VALUES[1]}\r\n"
                      "250-PIPELINING\r\n250 STARTTLS\r\n").encode()
    assert capability_responder.merge_ehlo([b"250 real.example\r\n"], VALUES[:1]) == (
        f"250-real.example\r\n250 ACME {VALUES[0]}\r\n").encode()
    refusal = [b"550-no\r\n", b"550 really not\r\n"]
    assert capability_responder.merge_ehlo(refusal, VALUES) == b"".join(refusal)


def test_proxy_header_names_client_then_server():
    assert capability_responder.proxy_header(("127.0.0.5", 40000), ("127.0.0.1", 25)) == (
        b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 25\r\n")
    assert capability_responder.proxy_header(("::1", 40000, 0, 0), ("::1", 587, 0, 0)) == (
        b"PROXY TCP6 ::1 ::1 40000 587\r\n")
    assert capability_responder.proxy_header("", "") == b"PROXY UNKNOWN\r\n"


class FakeSmtpd:
    """A hidden smtpd stand-in: banner, one EHLO reply, STARTTLS, then echoes until EOF."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            self.received += lines.readline()  # PROXY
            conn.sendall(b"220 real.example ESMTP\r\n")
            for reply in (b"250-real.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
                          b"220 2.0.0 Ready to start TLS\r\n"):
                self.received += lines.readline()
                conn.sendall(reply)
            while line := lines.readline():
                self.received += line
                conn.sendall(b"echo " + line)
                if line.startswith(b"QUIT"):
                    return

    def join(self) -> bytes:
        self._thread.join(10)
        self.listener.close()
        return self.received


def spawned_relay(tmp_path: Path, backend_port: int) -> tuple[socket.socket, int,
                                                                 subprocess.Popen]:
    """A client from 127.0.0.5 whose accepted socket is the relay's fd 0, as with spawn."""
    values = write_values(str(tmp_path), VALUES)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10,
                                          source_address=("127.0.0.5", 0))
        accepted, _ = listener.accept()
    with accepted:
        relay = subprocess.Popen(
            [sys.executable, "-I", capability_responder.__file__, "--protocol", "smtp",
             "--values-file", values, "--relay", f"127.0.0.1:{backend_port}"],
            stdin=accepted.fileno(), stdout=accepted.fileno())
        server_port = int(accepted.getsockname()[1])
    return client, server_port, relay


def test_relay_sends_proxy_header_merges_ehlo_then_passes_everything_through(tmp_path):
    smtpd = FakeSmtpd()
    client, server_port, relay = spawned_relay(tmp_path, smtpd.port)
    after_starttls = [b"\x16\x03\x01 binary-looking EHLO again\r\n", b"QUIT\r\n"]
    client_port = client.getsockname()[1]
    with client, client.makefile("rb") as replies:
        banner = replies.readline()
        client.sendall(b"EHLO client.example\r\n")
        ehlo = [replies.readline() for _ in range(5)]
        client.sendall(b"STARTTLS\r\n")
        ready = replies.readline()
        echoed = []
        for line in after_starttls:
            client.sendall(line)
            echoed.append(replies.readline())
        closed = replies.read()
    assert relay.wait(10) == 0
    received = smtpd.join()
    assert banner == b"220 real.example ESMTP\r\n"
    assert b"".join(ehlo) == (f"250-real.example\r\n250-ACME {VALUES[0]}\r\n"
                              f"250-ACME {VALUES[1]}\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
                              ).encode()
    assert ready == b"220 2.0.0 Ready to start TLS\r\n"
    assert echoed == [b"echo " + line for line in after_starttls]  # nothing merged any more
    assert closed == b""
    assert received.startswith(
        f"PROXY TCP4 127.0.0.5 127.0.0.1 {client_port} {server_port}\r\n".encode())
    assert received.split(b"\r\n", 1)[1] == b"EHLO client.example\r\nSTARTTLS\r\n" + b"".join(
        after_starttls)


def test_relay_without_its_smtpd_refuses_temporarily(tmp_path):
    client, _, relay = spawned_relay(tmp_path, free_port())
    with client, client.makefile("rb") as replies:
        assert replies.read().startswith(b"421 4.3.2")
    assert relay.wait(10) == 0


def open_idle(port: int, source: str, count: int) -> list[socket.socket]:
    """``count`` connections from ``source`` that never say a word."""
    held = []
    for _ in range(count):
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5,
                                             source_address=(source, 0)))
    return held


def closed_by_the_server(sock: socket.socket) -> bool:
    """Whether the responder hung up on this silent connection (a greeting may come first)."""
    sock.settimeout(5)
    try:
        while data := sock.recv(4096):
            del data
    except (TimeoutError, ConnectionResetError) as error:
        return isinstance(error, ConnectionResetError)
    return True


@pytest.fixture(name="many_files")
def fixture_many_files() -> Iterator[None]:
    """Room for a flood in this process: the soft limit of open files raised to the hard one."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["plain", "implicit-tls"])
def test_a_flood_of_idle_connections_from_one_peer_does_not_lock_out_the_ca(
        context, many_files, implicit_tls):
    responder, port = serve("pop3", context, implicit_tls)
    flood = []
    try:
        flood = open_idle(port, "127.0.0.5", 1000)
        assert capability_probe.advertised_values("pop3", "127.0.0.1", port,
                                                  implicit_tls) == list(VALUES)
        assert closed_by_the_server(flood[-1])  # over the peer's cap: turned away at once
        assert len(responder.limit.open.get("127.0.0.5", [])) \
            <= capability_responder.MAX_SESSIONS_PER_PEER
    finally:
        for sock in flood:
            sock.close()
        responder.stop()


def test_a_flood_from_many_peers_makes_room_for_the_ca(context, many_files):
    responder, port = serve("smtp", context, False)
    flood = []
    try:
        for peer in range(2, 2 + capability_responder.MAX_SESSIONS + 20):
            flood += open_idle(port, f"127.0.{peer // 250}.{peer % 250 + 2}", 2)
        assert capability_probe.advertised_values("smtp", "127.0.0.1", port,
                                                  False) == list(VALUES)
        assert sum(map(len, responder.limit.open.values())) <= capability_responder.MAX_SESSIONS
        assert closed_by_the_server(flood[0])  # the oldest of a busiest peer made room
    finally:
        for sock in flood:
            sock.close()
        responder.stop()


def test_a_silent_client_is_dropped(context, monkeypatch):
    monkeypatch.setattr(capability_responder, "IDLE_SECONDS", 0.2)
    responder, port = serve("imap", context, True)
    try:
        [silent] = open_idle(port, "127.0.0.1", 1)  # not even a TLS handshake
        assert closed_by_the_server(silent)
        silent.close()
    finally:
        responder.stop()
