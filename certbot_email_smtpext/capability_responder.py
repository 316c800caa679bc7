"""A mail-protocol responder that advertises ACME capability values and refuses everything else.

It speaks just enough SMTP, IMAP and POP3 for a CA's capability check (draft-ietf-acme-email-tls
§3.4): the greeting, EHLO/CAPABILITY/CAPA with every pending value, STARTTLS, and a temporary
failure for anything else, so that real senders defer instead of bouncing. It uses the standard
library only, because Postfix's spawn(8) runs a copy of this file with any python3 as an
unprivileged user, one process per connection on fd 0; the standalone backend serves it
from a thread of the certbot process instead (``ThreadedResponder``). With ``--relay`` (the
postfix backend's relay mode) it is no responder but a transparent relay to a hidden smtpd that
only adds the ACME lines to EHLO replies (``relay_smtp``), so that real mail keeps flowing.
"""
import argparse
import asyncio
import dataclasses
import errno
import json
import os
import socket
import ssl
import sys
import threading
import time
from typing import Awaitable, Callable, Optional, Sequence

PROTOCOLS = ("smtp", "imap", "pop3")
#: Longest command line we read; SMTP allows 512 octets, IMAP clients send far less here.
LINE_LIMIT = 2048
#: A silent client (or one that never finishes its TLS handshake) is dropped after this long: a
#: CA reads within a second or two.
IDLE_SECONDS = 10.0
#: The standalone responder's open sessions, in all and from one address. A peer at its cap is
#: turned away; at the total cap the busiest peer's oldest session makes room, so a flood of
#: idle connections (and certbot's open files) cannot lock out the CA.
MAX_SESSIONS = 128
MAX_SESSIONS_PER_PEER = 8
#: How long accepting pauses when the process is out of file descriptors.
_ACCEPT_RETRY_SECONDS = 0.1
#: How long a standalone responder keeps trying to bind while the real server lets go.
BIND_SECONDS = 5.0
_BIND_RETRY_SECONDS = 0.005
#: A relayed client that says nothing for this long is dropped (smtpd_timeout's default).
RELAY_IDLE_SECONDS = 300.0
#: After these commands the relay only copies bytes: TLS, SASL exchanges, mail transactions.
PASS_THROUGH_AFTER = frozenset({b"STARTTLS", b"AUTH", b"MAIL", b"DATA", b"BDAT"})
#: Each protocol's temporary failure: senders and mail clients retry later, nothing bounces.
UNAVAILABLE = {"smtp": "421 4.3.2 Service temporarily unavailable, try again later",
               "imap": "* BYE [UNAVAILABLE] Temporarily unavailable, try again later",
               "pop3": "-ERR [SYS/TEMP] Temporarily unavailable, try again later"}


@dataclasses.dataclass(frozen=True)
class Advertised:
    """What one listener shows: the protocol, every pending value, its name, STARTTLS if any."""

    protocol: str
    values: tuple[str, ...]
    hostname: str
    starttls: Optional[ssl.SSLContext] = None


class _Session:
    """One client connection: line I/O, and the switch to TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 advertised: Advertised, in_tls: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.advertised = advertised
        self.in_tls = in_tls

    @property
    def can_starttls(self) -> bool:
        """STARTTLS is offered with a key, before TLS, on Pythons that upgrade streams (3.11)."""
        return (self.advertised.starttls is not None and not self.in_tls
                and hasattr(self.writer, "start_tls"))

    async def say(self, *lines: str) -> None:
        """Send CRLF-terminated lines."""
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode("utf-8"))
        await self.writer.drain()

    async def read_line(self) -> Optional[str]:
        """The next command line, or None on EOF, timeout or an over-long line."""
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), IDLE_SECONDS)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            return None
        return line.decode("utf-8", "replace").rstrip("\r\n")

    async def start_tls(self) -> None:
        """Upgrade the connection in place (STARTTLS, STLS)."""
        assert self.advertised.starttls is not None
        await self.writer.start_tls(  # type: ignore[attr-defined]
            self.advertised.starttls, ssl_handshake_timeout=IDLE_SECONDS)
        self.in_tls = True


def ehlo_reply(first: str, values: Sequence[str], rest: Sequence[str]) -> list[str]:
    """A 250 reply: its first line (the host name), one ``ACME <v>`` per value, then ``rest``."""
    keywords = [first, *(f"ACME {value}" for value in values), *rest]
    return [*(f"250-{word}" for word in keywords[:-1]), f"250 {keywords[-1]}"]


async def _smtp(session: _Session) -> None:
    """220; EHLO/LHLO with ``ACME <v>`` lines; HELO, NOOP, RSET, STARTTLS, QUIT; else 421."""
    host = session.advertised.hostname
    await session.say(f"220 {host} ESMTP")
    while (line := await session.read_line()) is not None:
        verb = line.split(" ", 1)[0].upper()
        if verb in ("EHLO", "LHLO"):
            await session.say(*ehlo_reply(host, session.advertised.values, [
                "ENHANCEDSTATUSCODES", *(["STARTTLS"] if session.can_starttls else [])]))
        elif verb == "HELO":
            await session.say(f"250 {host}")
        elif verb in ("NOOP", "RSET"):
            await session.say("250 2.0.0 Ok")
        elif verb == "STARTTLS" and session.can_starttls:
            await session.say("220 2.0.0 Ready to start TLS")
            await session.start_tls()
        elif verb == "QUIT":
            await session.say("221 2.0.0 Bye")
            return
        else:
            await session.say(UNAVAILABLE["smtp"])
            return


def _imap_capabilities(session: _Session) -> str:
    """The capability list: IMAP4rev1, every ``ACME=<v>``, STARTTLS when offered."""
    atoms = ["IMAP4rev1", *(f"ACME={value}" for value in session.advertised.values)]
    if session.can_starttls:
        atoms.append("STARTTLS")
    return " ".join([*atoms, "LOGINDISABLED"])


async def _imap(session: _Session) -> None:
    """Greeting with [CAPABILITY]; CAPABILITY, NOOP, STARTTLS, LOGOUT; else BYE [UNAVAILABLE]."""
    await session.say(f"* OK [CAPABILITY {_imap_capabilities(session)}] "
                      f"{session.advertised.hostname} ready")
    while (line := await session.read_line()) is not None:
        tag, _, rest = line.partition(" ")
        command = rest.split(" ", 1)[0].upper()
        if command == "CAPABILITY":
            await session.say(f"* CAPABILITY {_imap_capabilities(session)}",
                              f"{tag} OK CAPABILITY completed")
        elif command == "NOOP":
            await session.say(f"{tag} OK NOOP completed")
        elif command == "STARTTLS" and session.can_starttls:
            await session.say(f"{tag} OK Begin TLS negotiation now")
            await session.start_tls()
        elif command == "LOGOUT":
            await session.say("* BYE Logging out", f"{tag} OK LOGOUT completed")
            return
        else:
            await session.say(UNAVAILABLE["imap"], f"{tag} NO [UNAVAILABLE] Try again later")
            return


async def _pop3(session: _Session) -> None:
    """+OK; CAPA with ``ACME <v>`` lines; STLS, QUIT; else -ERR [SYS/TEMP]."""
    await session.say(f"+OK {session.advertised.hostname} ready")
    while (line := await session.read_line()) is not None:
        command = line.split(" ", 1)[0].upper()
        if command == "CAPA":
            await session.say("+OK Capability list follows",
                              *(f"ACME {value}" for value in session.advertised.values),
                              *(["STLS"] if session.can_starttls else []), ".")
        elif command == "STLS" and session.can_starttls:
            await session.say("+OK Begin TLS negotiation")
            await session.start_tls()
        elif command == "QUIT":
            await session.say("+OK Bye")
            return
        else:
            await session.say(UNAVAILABLE["pop3"])
            return


_DIALOGUES: dict[str, Callable[[_Session], Awaitable[None]]] = {
    "smtp": _smtp, "imap": _imap, "pop3": _pop3}


def connection_handler(advertised: Advertised, implicit_tls: bool
                       ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                     Awaitable[None]]:
    """An asyncio client callback that runs one dialogue and always closes the connection."""
    dialogue = _DIALOGUES[advertised.protocol]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await dialogue(_Session(reader, writer, advertised, implicit_tls))
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            writer.transport.abort()  # the validation is over: no TLS goodbye to wait for
            raise
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
    return handle


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for the throwaway key: the CA does not verify it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


class SessionLimit:
    """The open sessions of each peer address, within MAX_SESSIONS and MAX_SESSIONS_PER_PEER."""

    def __init__(self, total: int = MAX_SESSIONS, per_peer: int = MAX_SESSIONS_PER_PEER) -> None:
        self.total = total
        self.per_peer = per_peer
        self.open: dict[str, list[asyncio.Task[None]]] = {}

    def has_room(self, peer: str) -> bool:
        """Whether ``peer`` may open one more session."""
        return len(self.open.get(peer, ())) < self.per_peer

    def add(self, peer: str, session: asyncio.Task[None]) -> None:
        """Count ``session``; at the total cap, cancel the busiest peer's oldest one first."""
        if sum(map(len, self.open.values())) >= self.total:
            max(self.open.values(), key=len).pop(0).cancel()
        self.open.setdefault(peer, []).append(session)
        session.add_done_callback(lambda done: self._remove(peer, done))

    def _remove(self, peer: str, session: asyncio.Task[None]) -> None:
        sessions = self.open.get(peer, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self.open.pop(peer, None)


def listening_sockets(hosts: Sequence[str], port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets on ``port`` for each host (none: every address)."""
    if not hosts:
        if socket.has_dualstack_ipv6():
            found = [socket.create_server(("", port), family=socket.AF_INET6,
                                          dualstack_ipv6=True, backlog=MAX_SESSIONS)]
        else:
            found = [socket.create_server(("", port), backlog=MAX_SESSIONS)]
    else:
        found = []
        addresses = dict.fromkeys(
            (info[0], info[4]) for host in hosts
            for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE))
        try:
            for family, address in addresses:
                found.append(socket.create_server(address, family=family, backlog=MAX_SESSIONS))
        except BaseException:
            for sock in found:
                sock.close()
            raise
    for sock in found:
        sock.setblocking(False)
    return found


class ThreadedResponder:
    """Serves one port on every given address from a thread of its own, until ``stop()``.

    It accepts connections itself (not ``asyncio.start_server``) so that the session caps and
    the idle timeout hold from the first byte, TLS handshakes of implicit TLS included.
    """

    def __init__(self, advertised: Advertised, implicit_tls: bool) -> None:
        self.advertised = advertised
        self.implicit_tls = implicit_tls
        self.limit = SessionLimit()
        self._loop = asyncio.new_event_loop()
        self._listeners: list[socket.socket] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="email-capability-responder")

    def start(self, addresses: Sequence[str], port: int,
              bind_seconds: float = BIND_SECONDS) -> None:
        """Bind (retrying while the real server lets the port go), then serve."""
        deadline = time.monotonic() + bind_seconds
        while True:
            try:
                self._listeners = listening_sockets(addresses, port)
                break
            except OSError as error:
                if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
                time.sleep(_BIND_RETRY_SECONDS)
        self._thread.start()
        handler = connection_handler(self.advertised, self.implicit_tls)
        for listener in self._listeners:
            asyncio.run_coroutine_threadsafe(self._accept(listener, handler), self._loop)

    async def _accept(self, listener: socket.socket, handler: Callable[
            [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        """Accept for ever; a peer over its cap is closed at once."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError:  # EMFILE and the like: sessions end within IDLE_SECONDS
                await asyncio.sleep(_ACCEPT_RETRY_SECONDS)
                continue
            peer = str(address[0])
            if not self.limit.has_room(peer):
                sock.close()
                continue
            self.limit.add(peer, loop.create_task(self._session(sock, handler)))

    async def _session(self, sock: socket.socket, handler: Callable[
            [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        """One connection: the implicit TLS handshake (bounded by IDLE_SECONDS), the dialogue.

        The dialogue runs as the protocol's server callback (so that STARTTLS knows it is the
        server side); cancelling this task aborts the connection, which ends the dialogue.
        """
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        async def dialogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            finally:
                if not ended.done():
                    ended.set_result(None)

        protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=LINE_LIMIT), dialogue)
        context = self.advertised.starttls if self.implicit_tls else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=context,
                ssl_handshake_timeout=IDLE_SECONDS if context else None)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            sock.close()
            return
        except asyncio.CancelledError:
            sock.close()
            raise
        try:
            await ended
        except asyncio.CancelledError:
            transport.abort()
            raise

    def stop(self) -> None:
        """Close the listeners and every session (the port is free on return); end the thread."""
        if self._thread.is_alive():
            async def close() -> None:
                for listener in self._listeners:
                    listener.close()
                sessions = [task for task in asyncio.all_tasks()
                            if task is not asyncio.current_task()]
                for task in sessions:
                    task.cancel()
                await asyncio.gather(*sessions, return_exceptions=True)
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(IDLE_SECONDS)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        if not self._loop.is_closed():
            self._loop.close()


async def _serve_inetd(advertised: Advertised, implicit_tls: bool) -> None:
    """One session on the socket inherited as fd 0 (spawn(8), inetd)."""
    sock = socket.socket(fileno=os.dup(0))
    done = asyncio.Event()
    handler = connection_handler(advertised, implicit_tls)

    async def handle_then_finish(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            done.set()

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader, handle_then_finish)
    await loop.connect_accepted_socket(
        lambda: protocol, sock, ssl=advertised.starttls if implicit_tls else None)
    await done.wait()


def proxy_header(peer: object, local: object) -> bytes:
    """The PROXY protocol v1 line that tells the hidden smtpd who the client really is."""
    if not isinstance(peer, tuple) or not isinstance(local, tuple):
        return b"PROXY UNKNOWN\r\n"  # not TCP (a socketpair): smtpd uses its own idea
    family = "TCP6" if ":" in peer[0] else "TCP4"
    return f"PROXY {family} {peer[0]} {local[0]} {peer[1]} {local[1]}\r\n".encode("ascii")


async def _reply(backend: asyncio.StreamReader) -> list[bytes]:
    """One complete SMTP reply from the hidden smtpd (continuation lines have ``-`` at 4)."""
    lines = []
    while True:
        line = await backend.readuntil(b"\n")
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def merge_ehlo(reply: Sequence[bytes], values: Sequence[str]) -> bytes:
    """smtpd's EHLO reply with our ``ACME <v>`` lines after its first line (only if 250)."""
    if not reply[0].startswith(b"250"):
        return b"".join(reply)
    words = [line[4:].rstrip(b"\r\n").decode("latin-1") for line in reply]
    return "".join(f"{line}\r\n" for line in ehlo_reply(words[0], values, words[1:])
                   ).encode("latin-1")


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy bytes until ``source`` ends, then half-close ``sink``."""
    while chunk := await source.read(65536):
        sink.write(chunk)
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()


async def relay_smtp(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                     backend: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                     values: Sequence[str]) -> None:
    """Pass a session through; EHLO replies gain the ACME lines until TLS or a transaction."""
    (client_in, client_out), (backend_in, backend_out) = client, backend
    client_out.write(b"".join(await _reply(backend_in)))  # the banner
    await client_out.drain()
    while True:
        line = await asyncio.wait_for(client_in.readuntil(b"\n"), RELAY_IDLE_SECONDS)
        backend_out.write(line)
        verb = line.split(None, 1)[0].upper() if line.strip() else b""
        if verb in PASS_THROUGH_AFTER:
            break
        reply = await _reply(backend_in)
        client_out.write(merge_ehlo(reply, values) if verb in (b"EHLO", b"LHLO")
                         else b"".join(reply))
        await client_out.drain()
    to_backend = asyncio.ensure_future(_pipe(client_in, backend_out))
    await _pipe(backend_in, client_out)  # smtpd hung up: the session is over
    to_backend.cancel()
    await asyncio.gather(to_backend, return_exceptions=True)


async def _relay_inetd(values: Sequence[str], backend: str) -> None:
    """Relay the socket inherited as fd 0 to the hidden smtpd, PROXY header first."""
    sock = socket.socket(fileno=os.dup(0))
    header = proxy_header(sock.getpeername(), sock.getsockname())
    client = await asyncio.open_connection(sock=sock, limit=LINE_LIMIT)
    host, _, port = backend.rpartition(":")
    try:
        hidden = await asyncio.open_connection(host, int(port))
    except OSError:
        client[1].write(f"{UNAVAILABLE['smtp']}\r\n".encode("ascii"))
        await client[1].drain()
        client[1].close()
        return
    hidden[1].write(header)
    try:
        await relay_smtp(client, hidden, values)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
            ConnectionError):
        pass  # either side hung up or went silent: so do we
    finally:
        for _, writer in (client, hidden):
            writer.close()


def read_values(path: str) -> tuple[str, ...]:
    """The pending values, kept as a JSON list so the plugin can add names without a reload."""
    with open(path, encoding="utf-8") as values_file:
        return tuple(str(value) for value in json.load(values_file))


def build_parser() -> argparse.ArgumentParser:
    """Options of the spawned responder (the plugin builds this command line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True)
    parser.add_argument("--values-file", required=True, help="JSON list of values to advertise")
    parser.add_argument("--hostname", default=socket.getfqdn())
    parser.add_argument("--tls-cert", help="throwaway certificate (STARTTLS, implicit TLS)")
    parser.add_argument("--tls-key", help="its key")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte")
    parser.add_argument("--relay", metavar="HOST:PORT",
                        help="smtp: relay to this hidden smtpd (PROXY protocol) instead")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve one spawned connection; never write to stderr, which spawn hands to the client."""
    sys.stderr = open(os.devnull, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    args = build_parser().parse_args(argv)
    try:
        starttls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        values = read_values(args.values_file)
    except (OSError, ValueError, ssl.SSLError):
        # the validation just ended and its files are gone: refuse politely, Postfix is back
        if not args.implicit_tls:
            os.write(1, f"{UNAVAILABLE[args.protocol]}\r\n".encode("ascii"))
        return 1
    if args.relay:
        asyncio.run(_relay_inetd(values, args.relay))
    else:
        asyncio.run(_serve_inetd(Advertised(args.protocol, values, args.hostname, starttls),
                                 args.implicit_tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
