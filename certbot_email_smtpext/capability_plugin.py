"""certbot authenticator ``email-capability``: the mail server itself shows the ACME proof.

draft-ietf-acme-email-tls capability-smtp-00 / -imap-00 / -pop-00: for the length of one
validation the service advertises ``ACME <v>`` in EHLO, ``ACME=<v>`` in its IMAP capabilities
or ``ACME <v>`` in POP3 CAPA. Three backends: ``dovecot`` (IMAP: a snippet and a reload),
``postfix`` (SMTP: the master.cf service's command swapped to spawn our responder), and
``standalone`` (anything else: the real listener lets go of the port and our responder holds
it). Every change is recorded before it is made and undone in ``cleanup()``, or, after a crash,
by the next certbot run of any kind (``repair_at_startup``). certbot imports this module on every
run, so the backends load lazily.
"""
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Iterable, Optional, Protocol, Sequence

from acme import challenges
from certbot import achallenges, errors, interfaces
from certbot.plugins import common

from certbot_email import certbot_compat, preflight
from certbot_email.protocol import csr
from certbot_email.protocol.challenges import (
    IMPLICIT_TLS_SERVICES,
    SERVICE_PORTS,
    CapabilityIMAP00,
    CapabilityPOP00,
    CapabilitySMTP00,
)
from certbot_email_smtpext import dovecot, postfix  # the installers load them on every run too

if TYPE_CHECKING:
    from certbot_email_smtpext.capability_standalone import ListenerRelease
    from certbot_email_smtpext.capability_state import ValidationState

certbot_compat.install()

logger = logging.getLogger(__name__)

PROTOCOL_OF_SERVICE = {"smtp": "smtp", "submission": "smtp", "submissions": "smtp",
                       "imap": "imap", "imaps": "imap", "pop3": "pop3", "pop3s": "pop3"}
CHALLENGE_OF_PROTOCOL: dict[str, type[challenges.Challenge]] = {
    "smtp": CapabilitySMTP00, "imap": CapabilityIMAP00, "pop3": CapabilityPOP00}
#: The backend ``auto`` picks: the one that changes the least for each protocol.
AUTO_BACKEND = {"smtp": "postfix", "imap": "dovecot", "pop3": "standalone"}
BACKENDS = ("auto", "dovecot", "postfix", "standalone")
POSTFIX_MODES = ("responder", "relay")
#: RFC 7817 and RFC 6186 define no SRV-ID for MTA-to-MTA smtp, so --srv-names skips it.
NO_SRV_NAME = frozenset({"smtp"})
DEFAULT_PROBE_TIMEOUT = 10.0
STATE_DIR_NAME = "email-capability"


def repair_at_startup(config: Any) -> None:
    """Every certbot run, before its command: restore a mail server that a killed validation
    left changed. Only a stat call or two when no validation ever ran here."""
    default_dir = os.path.join(config.work_dir, STATE_DIR_NAME)
    given = getattr(config, "email_capability_state_dir", None)
    if os.geteuid() != 0 or not (given or os.path.isdir(default_dir)):
        return
    from certbot import reverter

    from certbot_email_smtpext import capability_state
    for state_dir in capability_state.recorded_state_dirs(default_dir, given):
        capability_state.repair(capability_state.ValidationState(
            state_dir, reverter.Reverter(config), default_dir))


certbot_compat.run_at_startup(repair_at_startup)


class Backend(Protocol):
    """What perform needs from a backend: make the service show these values, recorded."""

    def advertise(self, state: "ValidationState", values: Sequence[str]) -> None:
        """Record in ``state``, then change the server so that it shows every value."""

    def settle(self) -> None:
        """Before the restore: wait until the daemon may be reloaded again without harm."""


def _comma_list(text: Optional[str]) -> list[str]:
    """``a, b`` -> [a, b]."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


class Authenticator(common.Plugin, interfaces.Authenticator):
    """The mail server advertises base64url(SHA-256(key authorization)) while the CA looks."""

    description = ("Mail server advertises the ACME proof in EHLO, IMAP CAPABILITY or POP3 "
                   "CAPA (draft-ietf-acme-email-tls capability-smtp/imap/pop-00)")

    def __init__(self, config: Any, name: str) -> None:
        super().__init__(config, name)
        self._service = ""
        self._backend: Optional[Backend] = None
        self._state: Optional[ValidationState] = None
        self._values: list[str] = []

    @classmethod
    def add_parser_arguments(cls, add: Any) -> None:
        """Options, each documented in README.rst (email-capability)."""
        add("service", type=str, default=None,
            help="Service to prove: smtp, submission, submissions, imap, imaps, pop3 or pop3s "
                 "(required)")
        add("port", type=int, default=None,
            help="Port the service listens on and the response names (default: its IANA port)")
        add("backend", type=str, default="auto",
            help="dovecot (IMAP), postfix (SMTP), standalone (any), or auto: postfix for SMTP "
                 "services, dovecot for IMAP, standalone for POP3 (default: auto)")
        add("postfix-config-dir", type=str, default=postfix.DEFAULT_CONFIG_DIR,
            help="Postfix config directory (postfix -c)")
        add("dovecot-config", type=str, default=dovecot.DEFAULT_CONFIG,
            help="dovecot.conf of the instance (doveconf -c)")
        add("dovecot-snippet", type=str, default=None,
            help="Our temporary Dovecot snippet (default: certbot-email-capability.conf next "
                 "to dovecot.conf; an !include_try of it is added for the validation if "
                 "dovecot.conf does not include it)")
        add("postfix-mode", type=str, default="responder",
            help="postfix: responder (new sessions get 421 during the validation) or relay "
                 "(they reach a hidden copy of smtpd, which only gains the ACME lines)")
        add("spawn-user", type=str, default="nobody",
            help="postfix: unprivileged user spawn(8) runs the responder as")
        add("spawn-python", type=str, default=None,
            help="postfix: python3 the spawn user may run (default: certbot's, else "
                 "/usr/bin/python3)")
        add("dovecot-listener", type=str, default=None,
            help="standalone: Dovecot SERVICE/LISTENER to switch off while our responder holds "
                 "the port, e.g. pop3-login/pop3")
        add("stop-command", type=str, default=None,
            help="standalone: shell command that makes the real server let go of the port")
        add("start-command", type=str, default=None,
            help="standalone: shell command that gives the port back (also run by the repair "
                 "after a crash)")
        add("listen-address", type=str, default=None,
            help="standalone: comma-separated addresses to bind (default: all)")
        add("probe-address", type=str, default=None,
            help="Comma-separated addresses to check the service on before answering the CA "
                 "(default: the addresses each name resolves to, as the CA connects)")
        add("probe-timeout", type=float, default=DEFAULT_PROBE_TIMEOUT,
            help="Seconds to wait until the service shows the values (and, in cleanup, until "
                 "the real server is back)")
        add("state-dir", type=str, default=None,
            help="Where the record of a running validation is kept (default: "
                 "<work-dir>/email-capability)")
        add("srv-names", action="store_true", default=False,
            help="Also ask for an RFC 4985 SRVName SAN (_service.host) for the service proven "
                 "(none for smtp)")

    def more_info(self) -> str:
        """Shown by ``certbot plugins``."""
        return ("Makes Postfix (spawned responder), Dovecot (imap_capability snippet) or a "
                "standalone responder advertise the capability proof for one validation, "
                "checks it like the CA, and restores the server afterwards.")

    # -- options ------------------------------------------------------------------------------

    @property
    def protocol(self) -> str:
        """smtp, imap or pop3."""
        return PROTOCOL_OF_SERVICE[self._service]

    @property
    def port(self) -> int:
        """The service's port: given, or IANA's."""
        port = self.conf("port")
        return int(port) if port else SERVICE_PORTS[self._service]

    def _backend_name(self) -> str:
        """The backend in force, checked against the protocol."""
        backend = self.conf("backend")
        if backend not in BACKENDS:
            raise errors.MisconfigurationError(
                f"--email-capability-backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend == "auto":
            return AUTO_BACKEND[self.protocol]
        if backend != "standalone" and AUTO_BACKEND[self.protocol] != backend:
            raise errors.MisconfigurationError(
                f"--email-capability-backend {backend} cannot serve {self._service} "
                f"({self.protocol}); use {AUTO_BACKEND[self.protocol]} or standalone")
        return str(backend)

    def _default_state_dir(self) -> str:
        """Below certbot's work dir, where every later run looks."""
        return os.path.join(self.config.work_dir, STATE_DIR_NAME)

    def _state_dir(self) -> str:
        """The state directory: given, or the default."""
        return self.conf("state-dir") or self._default_state_dir()

    def _make_backend(self) -> Backend:
        """The configured backend (its modules are imported only now)."""
        name = self._backend_name()
        implicit_tls = self._service in IMPLICIT_TLS_SERVICES
        if name == "postfix":
            from certbot_email_smtpext.capability_postfix import PostfixSwap
            return PostfixSwap(self.conf("postfix-config-dir"), self.port, implicit_tls,
                               self.conf("spawn-user"), self.conf("spawn-python"),
                               self.conf("postfix-mode"))
        from certbot_email_smtpext import capability_dovecot
        if name == "dovecot":
            return capability_dovecot.DovecotImap(self.conf("dovecot-config"),
                                                  self.conf("dovecot-snippet") or "")
        from certbot_email_smtpext import capability_standalone as standalone
        return standalone.StandaloneResponder(
            self.protocol, self.port, implicit_tls, _comma_list(self.conf("listen-address")),
            str((self.config.domains or ["localhost"])[0]), self._listener_release())

    def _listener_release(self) -> "ListenerRelease":
        """How the standalone backend frees the port: a Dovecot listener, commands, or not."""
        from certbot_email_smtpext import capability_dovecot
        from certbot_email_smtpext import capability_standalone as standalone
        listener, stop, start = (self.conf("dovecot-listener"), self.conf("stop-command"),
                                 self.conf("start-command"))
        if listener and (stop or start):
            raise errors.MisconfigurationError(
                "give either --email-capability-dovecot-listener or the stop/start commands")
        if listener:
            service, listener_name = capability_dovecot.parse_listener(listener)
            snippet = capability_dovecot.DovecotSnippet(self.conf("dovecot-config"),
                                                        self.conf("dovecot-snippet") or "")
            return standalone.DovecotListenerRelease(snippet, service, listener_name, self.port)
        if bool(stop) != bool(start):
            raise errors.MisconfigurationError(
                "--email-capability-stop-command and --email-capability-start-command go "
                "together: the port must be given back")
        if stop:
            return standalone.CommandRelease(stop, start)
        return standalone.ListenerRelease()

    # -- certbot's calls ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Check the options, repair an interrupted run, ask for SRVNames before the CSR."""
        certbot_compat.require_support()
        preflight.check_request(self.config, self.name, for_mailboxes=False)
        service = (self.conf("service") or "").strip().lower()
        if service not in PROTOCOL_OF_SERVICE:
            raise errors.MisconfigurationError(
                f"--email-capability-service {self.conf('service')!r}: name the service to "
                f"prove, one of {', '.join(PROTOCOL_OF_SERVICE)}")
        self._service = service
        if self._backend_name() == "standalone":
            self._listener_release()
        self._check_postfix_mode()
        if os.geteuid() != 0:
            raise errors.MisconfigurationError(
                "email-capability changes and reloads mail servers: run certbot as root")
        self._repair()
        if self.conf("srv-names") and service in NO_SRV_NAME:
            logger.warning("No SRVName for %s: RFC 7817 defines none for MTA-to-MTA SMTP", service)
        elif self.conf("srv-names"):
            hosts = csr.srv_name_hosts(str(name) for name in self.config.domains or ())
            certbot_compat.csr_profile.srv_names = [(service, host) for host in hosts]

    def _check_postfix_mode(self) -> None:
        """Relay mode is postfix-only, and implicit TLS would end at our throwaway key."""
        mode = self.conf("postfix-mode")
        if mode not in POSTFIX_MODES:
            raise errors.MisconfigurationError(
                f"--email-capability-postfix-mode {mode!r}: expected responder or relay")
        if mode == "relay" and (self._backend_name() != "postfix"
                                or self._service in IMPLICIT_TLS_SERVICES):
            raise errors.MisconfigurationError(
                "--email-capability-postfix-mode relay works with the postfix backend for smtp "
                f"and submission (STARTTLS passes through), not for {self._service}")

    def _validation_state(self) -> "ValidationState":
        """The record of this run's changes, over certbot's temporary checkpoint."""
        if self._state is None:
            from certbot import reverter

            from certbot_email_smtpext.capability_state import ValidationState
            self._state = ValidationState(self._state_dir(), reverter.Reverter(self.config),
                                          self._default_state_dir())
        return self._state

    def _repair(self) -> None:
        """Undo what an earlier run left changed, if the startup repair could not; refuse a
        state directory others may write to (even when it holds no record yet)."""
        from certbot_email_smtpext import capability_state
        state = self._validation_state()
        if os.path.isdir(state.state_dir):
            capability_state.check_private(state.state_dir)
        capability_state.repair(state)

    def get_chall_pref(self, identifier: str) -> Iterable[type[challenges.Challenge]]:
        """The capability challenge of the configured service's protocol."""
        return [CHALLENGE_OF_PROTOCOL[self.protocol]]

    def perform(self, achalls: list[achallenges.AnnotatedChallenge]
                ) -> list[challenges.ChallengeResponse]:
        """Advertise every value, wait until the service shows them like the CA sees it."""
        self._values = [achall.validation(achall.account_key) for achall in achalls]
        self._backend = self._make_backend()
        try:
            self._backend.advertise(self._validation_state(), self._values)
            self._wait_for_service(achalls, showing=True)
        except BaseException:
            try:
                self._restore()
                self._validation_state().finish()
            except errors.PluginError as restore_error:
                logger.error("%s", restore_error)
            raise
        return [achall.chall.scoped_response(achall.account_key, self._service, self.port)
                for achall in achalls]

    def cleanup(self, achalls: list[achallenges.AnnotatedChallenge]) -> None:
        """Give the server its configuration back; safe to call twice."""
        if self._restore():
            self._wait_for_service(achalls, showing=False)
        self._validation_state().finish()

    def _restore(self) -> bool:
        """Stop our responder, restore files and reload; whether a real server is behind."""
        from certbot_email_smtpext import capability_standalone as standalone
        backend, self._backend = self._backend, None
        if backend is None:
            return False
        real_server_behind, before_commands = True, None
        backend.settle()
        if isinstance(backend, standalone.StandaloneResponder):
            real_server_behind = bool(backend.release.restore_commands())
            before_commands = backend.stop
        problems = self._validation_state().restore(before_commands)
        if before_commands is not None:
            before_commands()  # idempotent: also when there was no record to restore
        if problems:
            raise errors.PluginError(
                "Could not fully restore the mail server: " + "; ".join(problems) +
                f". The record stays in {self._state_dir()}; the next certbot run retries.")
        return real_server_behind

    def _wait_for_service(self, achalls: Sequence[achallenges.AnnotatedChallenge],
                          showing: bool) -> None:
        """Probe every address the CA may use until the values show (or are gone)."""
        from certbot_email_smtpext import capability_probe
        accept = (capability_probe.shows_all(self._values) if showing
                  else capability_probe.shows_none(self._values))
        for name in dict.fromkeys(map(certbot_compat.challenge_identifier, achalls)):
            for address in self._probe_addresses(name):
                done, seen = capability_probe.wait_until(
                    self.protocol, address, self.port, self._service in IMPLICIT_TLS_SERVICES,
                    accept, self.conf("probe-timeout"), server_name=name)
                if not done:
                    state = "show the ACME values" if showing else "serve again without them"
                    raise errors.PluginError(
                        f"{self._service} on {address} port {self.port} (for {name}) did not "
                        f"{state} within {self.conf('probe-timeout')} s; it showed {seen}. "
                        "Check --email-capability-port and --email-capability-probe-address")

    def _probe_addresses(self, name: str) -> list[str]:
        """The given probe addresses, or every address ``name`` resolves to."""
        given = _comma_list(self.conf("probe-address"))
        if given:
            return given
        try:
            found = socket.getaddrinfo(name, self.port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise errors.PluginError(f"cannot resolve {name} to check the service ({error}); "
                                     "give --email-capability-probe-address") from None
        return list(dict.fromkeys(str(info[4][0]) for info in found))

