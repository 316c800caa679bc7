"""certbot installers `postfix`, `dovecot` and `mailserver`: deploy, reload, prove, roll back.

certbot calls deploy_cert/save/restart on `run` and `install` (and rolls back the last checkpoint
and calls restart again when restart fails), but only restart on `certonly -i` and `renew`. So
restart() is where the work that every run needs happens: check the files the config names,
config-test, reload, then connect to every TLS listener until it serves the certificate its
config names. It never reloads onto files that fail the checks, so a daemon keeps its old
certificate rather than failing every handshake.
"""
import abc
import datetime
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from certbot import errors, util
from certbot.plugins import common
from certbot.plugins import util as plugin_util
from cryptography import x509

from certbot_email_smtpext import tls_probe
from certbot_email_smtpext.checks import (
    KeyAndChain,
    check_pair,
    covers,
    describe,
    leaf_certificate,
)
from certbot_email_smtpext.dovecot import DEFAULT_CONFIG, Dovecot
from certbot_email_smtpext.listeners import TlsListener
from certbot_email_smtpext.postfix import DEFAULT_CONFIG_DIR, Postfix

logger = logging.getLogger(__name__)

#: How long a reloaded daemon may take before every listener serves the configured certificate.
VERIFY_SECONDS = 15.0
_POLL_SECONDS = 0.2
_RELOAD_ONLY_HELP = ("Touch no config file: deploy and renewal only check the configured "
                     "certificate files, reload and verify what is served.")


class MailDaemon(Protocol):
    """What an installer needs from one daemon (postfix.Postfix, dovecot.Dovecot)."""

    name: str
    executables: tuple[str, ...]
    config_dir: str

    def names(self) -> set[str]:
        """Host names the daemon's config declares."""

    def deploy(self, key_path: str, fullchain_path: str, before_edit: Callable[[str], None],
               created: Callable[[str], None]) -> list[str]:
        """Point the config at the key and chain; return a line per change."""

    def config_test(self) -> None:
        """Raise PluginError when the daemon's own config test fails."""

    def tls_listeners(self) -> list[TlsListener]:
        """Listeners that offer TLS, with the key/chain pairs they serve."""

    def reload(self) -> None:
        """Reload the running daemon, or start it."""


class MailInstaller(common.Installer):
    """Shared glue for one or more mail daemons that serve the certificate of one lineage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemons = self._make_daemons()
        self._deployed: KeyAndChain | None = None  # certbot calls deploy_cert once per name

    @abc.abstractmethod
    def _make_daemons(self) -> list[MailDaemon]:
        """The daemons this installer drives, from its options."""

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """--<name>-reload-only, shared by every installer here."""
        add("reload-only", action="store_true", default=False, help=_RELOAD_ONLY_HELP)

    def _reload_only(self) -> bool:
        """Whether this run must leave every config file alone."""
        return bool(self.conf("reload-only"))

    def prepare(self) -> None:
        """Find the tools, undo a crashed run's half-made edits, lock and test the configs."""
        for daemon in self.daemons:
            for executable in daemon.executables:
                if not util.exe_exists(executable) and not plugin_util.path_surgery(executable):
                    raise errors.NoInstallationError(
                        f"{executable} not found: install {daemon.name} or put it on PATH")
        if not self._reload_only():
            for daemon in self.daemons:
                util.lock_dir_until_exit(daemon.config_dir)
        self.recovery_routine()
        for daemon in self.daemons:
            try:
                daemon.config_test()
            except errors.PluginError as error:
                raise errors.MisconfigurationError(
                    f"{daemon.name} config test failed, fix it first: {error}") from error

    def more_info(self) -> str:
        """One paragraph for `certbot plugins`."""
        daemons = " and ".join(daemon.name for daemon in self.daemons)
        return (f"Points {daemons} at the lineage's key and full chain, tests the config, "
                "reloads, and verifies every TLS listener serves the new certificate; rolls back "
                "on failure.")

    def get_all_names(self) -> set[str]:
        """The host names the daemons' configs declare, for certbot's name prompt."""
        return util.get_filtered_names({name for daemon in self.daemons for name in daemon.names()})

    def deploy_cert(self, domain: str, cert_path: str, key_path: str,
                    chain_path: str | None = None, fullchain_path: str | None = None) -> None:
        """Check the lineage's files, then (unless reload-only) point every daemon at them."""
        del domain, cert_path, chain_path  # one certificate for the whole server; fullchain has all
        if fullchain_path is None:
            raise errors.PluginError("the mail installers need the full chain: use a certbot "
                                     "that passes fullchain_path, or --fullchain-path")
        lineage = KeyAndChain(key_path, fullchain_path)
        if lineage == self._deployed:
            return
        problems = check_pair(lineage, _now())
        if problems:
            raise errors.PluginError(f"not deploying {fullchain_path}: " + "; ".join(problems))
        self._warn_unless_covered(leaf_certificate(lineage))
        if self._reload_only():
            self._warn_unless_configured(lineage)
            self._deployed = lineage
            return
        for daemon in self.daemons:
            for change in daemon.deploy(key_path, fullchain_path, self._before_edit, self._created):
                logger.info("%s: %s", daemon.name, change)
        self._deployed = lineage

    def _before_edit(self, path: str) -> None:
        """Back up a file into the in-progress checkpoint before the first edit."""
        self.add_to_checkpoint({path}, f"certbot-email edits {path}\n")

    def _created(self, path: str) -> None:
        """Record a file we are about to create, so rollback deletes it."""
        try:
            self.reverter.register_file_creation(False, path)
        except errors.ReverterError as error:
            raise errors.PluginError(str(error)) from error

    def _warn_unless_covered(self, leaf: x509.Certificate) -> None:
        """A default certificate that names none of the server's own names is likely a mistake."""
        for daemon in self.daemons:
            names = daemon.names()
            if names and not covers(leaf, names):
                logger.warning("%s: the certificate %s covers none of %s, the names its config "
                               "gives the server; clients that connect by those names will see "
                               "a name mismatch", daemon.name, describe(leaf),
                               ", ".join(sorted(names)))

    def _warn_unless_configured(self, lineage: KeyAndChain) -> None:
        """Reload-only: say which listeners the lineage does not reach, since we will not edit."""
        wanted = os.path.realpath(lineage.chain_file)
        for listener in self._listeners():
            if all(os.path.realpath(pair.chain_file) != wanted for pair in listener.credentials):
                logger.warning("reload-only: %s serves %s, not %s; renewals will reload it but not "
                               "change its certificate", listener,
                               ", ".join(p.chain_file for p in listener.credentials) or "nothing",
                               lineage.chain_file)

    def enhance(self, domain: str, enhancement: str,
                options: str | list[str] | None = None) -> None:
        """No enhancements exist for mail servers."""
        raise errors.PluginError(
            f"{self.name} supports no enhancement ({enhancement!r} for {domain})")

    def supported_enhancements(self) -> list[str]:
        """None: HSTS, redirects and OCSP stapling are web server features."""
        return []

    def save(self, title: str | None = None, temporary: bool = False) -> None:
        """Edits are written as they are made; a titled save finalizes them as one checkpoint."""
        if title and not temporary:
            self.finalize_checkpoint(title)

    def config_test(self) -> None:
        """Each daemon's own config test (postfix check, doveconf -x)."""
        for daemon in self.daemons:
            daemon.config_test()

    def _listeners(self) -> list[TlsListener]:
        """Every TLS listener of every daemon, read from the config as it is now."""
        return [listener for daemon in self.daemons for listener in daemon.tls_listeners()]

    def restart(self) -> None:
        """Check what the configs name, reload, and wait until every listener serves it."""
        self.config_test()
        listeners = self._listeners()
        problems = _credential_problems(listeners)
        if problems:
            raise errors.PluginError(
                "not reloading, so the running daemons keep their current certificate: "
                + "; ".join(problems))
        expected = {listener: {leaf_certificate(pair) for pair in listener.credentials}
                    for listener in listeners}
        started = time.monotonic()
        for daemon in self.daemons:
            daemon.reload()
        _wait_until_served(expected, started + VERIFY_SECONDS)
        logger.info("%d TLS listeners serve the configured certificate %.2f s after the reload",
                    len(listeners), time.monotonic() - started)


def _now() -> datetime.datetime:
    """The time the checks compare validity against."""
    return datetime.datetime.now(datetime.timezone.utc)


def _credential_problems(listeners: Sequence[TlsListener]) -> list[str]:
    """Every problem of every configured key/chain pair, and listeners with none configured."""
    problems = [f"{listener} offers TLS but no certificate is configured for it"
                for listener in listeners if not listener.credentials]
    pairs = dict.fromkeys(pair for listener in listeners for pair in listener.credentials)
    now = _now()
    return problems + [problem for pair in pairs for problem in check_pair(pair, now)]


def _wait_until_served(expected: dict[TlsListener, set[x509.Certificate]], deadline: float) -> None:
    """Probe each listener until it serves one of its configured leaves, or fail at the deadline."""
    pending = dict(expected)
    last_seen: dict[TlsListener, str] = {}
    while True:
        for listener, leaves in list(pending.items()):
            try:
                served = tls_probe.served_certificate(listener)
            except tls_probe.ProbeError as error:
                last_seen[listener] = f"gives no TLS handshake ({error})"
                continue
            if served in leaves:
                del pending[listener]
            else:
                last_seen[listener] = f"serves {describe(served)}"
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise errors.PluginError("after the reload, " + "; ".join(
                f"{listener} {last_seen[listener]} instead of "
                + " or ".join(describe(leaf) for leaf in leaves)
                for listener, leaves in pending.items())
                + ". Look for settings that give these listeners another certificate (Dovecot "
                "local/local_name blocks, Postfix SNI maps) or a daemon that did not reload.")
        time.sleep(_POLL_SECONDS)


class PostfixInstaller(MailInstaller):
    """Postfix: main.cf through postconf -e (smtpd_tls_chain_files, or cert_file/key_file)."""

    description = "Postfix: deploy the certificate, reload, verify every TLS listener"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """--postfix-config-dir and --postfix-reload-only."""
        super().add_parser_arguments(add)
        add("config-dir", default=DEFAULT_CONFIG_DIR,
            help="Postfix config directory (postconf -c).")

    def _make_daemons(self) -> list[MailDaemon]:
        """One Postfix."""
        return [Postfix(self.conf("config-dir"))]


class DovecotInstaller(MailInstaller):
    """Dovecot: one drop-in file we own, included once from dovecot.conf."""

    description = "Dovecot: deploy the certificate, reload, verify every TLS listener"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """--dovecot-config and --dovecot-reload-only."""
        super().add_parser_arguments(add)
        add("config", default=DEFAULT_CONFIG, help="dovecot.conf of the instance (doveconf -c).")

    def _make_daemons(self) -> list[MailDaemon]:
        """One Dovecot."""
        return [Dovecot(self.conf("config"))]


class MailServerInstaller(MailInstaller):
    """Postfix and Dovecot from one lineage: certbot keeps one installer per lineage."""

    description = "Postfix and Dovecot sharing one certificate: deploy, reload both, verify"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """--mailserver-postfix-config-dir, -dovecot-config and -reload-only."""
        super().add_parser_arguments(add)
        add("postfix-config-dir", default=DEFAULT_CONFIG_DIR,
            help="Postfix config directory (postconf -c).")
        add("dovecot-config", default=DEFAULT_CONFIG, help="dovecot.conf of the instance.")

    def _make_daemons(self) -> list[MailDaemon]:
        """Postfix first, then Dovecot."""
        return [Postfix(self.conf("postfix-config-dir")), Dovecot(self.conf("dovecot-config"))]
