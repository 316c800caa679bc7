"""The standalone backend: the real listener lets go of its port, our responder holds it, and back.

For servers that cannot advertise a custom capability themselves (Dovecot POP3 and
submission, Exim, OpenSMTPD, ...). The port is freed by a Dovecot listener snippet
(``port = 0``) or by a command the user names, and given back the same way in ``restore``.
The handover leaves the port without a listener for a few milliseconds each way
(notes/mail-protocol-proof.md §2.2).
"""
from typing import Optional, Sequence

from certbot import errors

from certbot_email_smtpext import commands
from certbot_email_smtpext.capability_dovecot import DovecotSnippet, listener_off_snippet
from certbot_email_smtpext.capability_responder import Advertised, ThreadedResponder, tls_context
from certbot_email_smtpext.capability_state import (
    ValidationState,
    make_runtime_dir,
    write_throwaway_certificate,
)


class ListenerRelease:
    """How the real server lets go of the port and takes it back."""

    def restore_commands(self) -> list[list[str]]:
        """Commands that give the port back once the files are restored."""
        return []

    def release(self, state: ValidationState) -> None:
        """Make the real server stop listening on the port."""

    def settle(self) -> None:
        """Wait until the real server may be reloaded again without harm."""


class DovecotListenerRelease(ListenerRelease):
    """A Dovecot inet listener switched off by our snippet, on again by restoring it."""

    def __init__(self, snippet: DovecotSnippet, service: str, listener: str, port: int) -> None:
        self.snippet = snippet
        self.service = service
        self.listener = listener
        self.port = port

    def restore_commands(self) -> list[list[str]]:
        return [self.snippet.reload_command()]

    def settle(self) -> None:
        self.snippet.settle()

    def release(self, state: ValidationState) -> None:
        found = self.snippet.listener_port(self.service, self.listener)
        if found != self.port:
            raise errors.PluginError(
                f"Dovecot's service {self.service} has no inet_listener {self.listener} on port "
                f"{self.port} (its port: {found or 'none'}); check "
                "--email-capability-dovecot-listener and --email-capability-port")
        self.snippet.install(state, listener_off_snippet(self.service, self.listener))


class CommandRelease(ListenerRelease):
    """User commands (shell syntax) that stop and start the listener."""

    def __init__(self, stop_command: str, start_command: str) -> None:
        self.stop_command = stop_command
        self.start_command = start_command

    def restore_commands(self) -> list[list[str]]:
        return [["/bin/sh", "-c", self.start_command]]

    def release(self, state: ValidationState) -> None:
        try:
            commands.run(["/bin/sh", "-c", self.stop_command])
        except errors.PluginError as error:
            raise errors.PluginError(f"--email-capability-stop-command: {error}") from None


class StandaloneResponder:
    """Our responder on the service's port for the length of one validation."""

    def __init__(self, protocol: str, port: int, implicit_tls: bool, addresses: Sequence[str],
                 hostname: str, release: ListenerRelease) -> None:
        self.protocol = protocol
        self.port = port
        self.implicit_tls = implicit_tls
        self.addresses = list(addresses)
        self.hostname = hostname
        self.release = release
        self._responder: Optional[ThreadedResponder] = None

    def advertise(self, state: ValidationState, values: Sequence[str]) -> None:
        """Record, free the port, bind it and serve every value."""
        runtime_dir = make_runtime_dir("root")
        state.begin("standalone", self.release.restore_commands(), runtime_dir)
        context = tls_context(*write_throwaway_certificate(runtime_dir, self.hostname))
        self.release.release(state)
        responder = ThreadedResponder(
            Advertised(self.protocol, tuple(values), self.hostname, context), self.implicit_tls)
        try:
            responder.start(self.addresses, self.port)
        except OSError as error:
            raise errors.PluginError(
                f"cannot listen on port {self.port} ({error}): the real server did not let go "
                "of it; check --email-capability-dovecot-listener or "
                "--email-capability-stop-command") from None
        self._responder = responder

    def settle(self) -> None:
        """Before the restore: whatever the real server needs between two reloads."""
        self.release.settle()

    def stop(self) -> None:
        """Close our sockets, so that restoring the real listener can bind again."""
        if self._responder is not None:
            self._responder.stop()
            self._responder = None
