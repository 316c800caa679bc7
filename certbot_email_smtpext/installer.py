"""certbot installers `postfix`, `dovecot` and `mailserver`: deploy, reload, prove, roll back.

certbot calls deploy_cert/save/restart on `run` and `install` (and rolls back the last checkpoint
and calls restart again when restart fails), but only restart on `certonly -i` and `renew`. So
restart() is where the work that every run needs happens: check the files the config names,
config-test, reload, then connect to every TLS listener until it serves the certificate its
config names. It never reloads onto files that fail the checks, so a daemon keeps its old
certificate rather than failing every handshake.
"""
import abc
import concurrent.futures
import datetime
import glob
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from certbot import errors, util
from certbot.plugins import common
from certbot.plugins import util as plugin_util
from cryptography import x509

from certbot_email_smtpext.checks import (
    KeyAndChain,
    check_pair,
    covers,
    describe,
    dns_names,
    key_algorithm,
    leaf_certificate,
    server_certificate_problem,
)
from certbot_email_smtpext.dovecot import DEFAULT_CONFIG, Dovecot
from certbot_email_smtpext.listeners import SniEntry, TlsListener
from certbot_email_smtpext.postfix import DEFAULT_CONFIG_DIR, Postfix

logger = logging.getLogger(__name__)

#: How long a listener that gives no TLS handshake after the reload is waited for: a busy host,
#: or Postfix throttling a service for 60 s (service_throttle_time) after an smtpd failed to
#: start, e.g. because it met Dovecot's SASL socket away during Dovecot's reload.
VERIFY_SECONDS = 90.0
#: How long a listener may still serve its certificate from before the reload (old processes
#: finishing); after that the reload did not reach it. Any other certificate fails at once.
RELOAD_GRACE_SECONDS = 15.0
_POLL_SECONDS = 0.05
#: Handshakes run at once: each listener is probed in parallel, every round.
_PROBE_THREADS = 16
_RELOAD_ONLY_HELP = ("Touch no config file: deploy and renewal only check the configured "
                     "certificate files, reload and verify what is served.")
_ALT_CERT_NAME_HELP = ("A second lineage (certbot --cert-name) with another key type, e.g. RSA "
                       "beside ECDSA: served beside this one, and re-read on every reload.")
_DANE_HELP = ("What to do when TLSA records (usage 3) pin a key the new certificate does not "
              "have: warn, refuse (no edit, no reload), or off (no TLSA lookups).")
_DANE_RESOLVER_HELP = ("The DNS server (IP, IP:port or [IPv6]:port) asked for TLSA records; "
                       "default: the system resolver.")
_TAKE_OVER_SNI_HELP = ("When the certificate's names already have SNI entries of your own "
                       "(Dovecot local_name blocks, tables in tls_server_sni_maps), serve the "
                       "new certificate to those clients from certbot-email's own SNI entries, "
                       "which win over yours, instead of refusing. Yours stay as they are.")
DANE_MODES = ("warn", "refuse", "off")
#: A probe: a listener, and the key type the client restricts itself to (None: any).
Probe = tuple[TlsListener, str | None]


class MailDaemon(Protocol):
    """What an installer needs from one daemon (postfix.Postfix, dovecot.Dovecot)."""

    name: str
    executables: tuple[str, ...]
    config_dir: str
    config_file: str

    def names(self) -> set[str]:
        """Host names the daemon's config declares."""

    def deploy(self, key_path: str, fullchain_path: str, before_edit: Callable[[str], None],
               created: Callable[[str], None], server_names: Sequence[str] = (),
               alternates: Sequence[KeyAndChain] = ()) -> list[str]:
        """Point the config (for server_names: SNI) at the pairs; return a line per change."""

    def config_test(self) -> None:
        """Raise PluginError when the daemon's own config test fails."""

    def tls_listeners(self) -> list[TlsListener]:
        """Listeners that offer TLS, with the key/chain pairs they serve."""

    def reload(self) -> None:
        """Reload the running daemon, or start it."""

    def sni_entries(self, server_names: Iterable[str]) -> dict[str, SniEntry]:
        """name -> the SNI entry (ours or the admin's) clients asking for it get."""

    def prune(self, apply: bool) -> list[str]:
        """Our entries (SNI, or a default pair beside another) whose files are gone; removed
        when apply. A line per missing file."""


class MailInstaller(common.Installer):
    """Shared glue for one or more mail daemons that serve the certificate of one lineage."""

    #: The option that names each daemon's config, for messages.
    config_options: dict[str, str] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemons = self.make_daemons(self.conf)
        self._deployed: KeyAndChain | None = None  # certbot calls deploy_cert once per name
        self._warned: set[str] = set()  # deploy_cert and restart judge the same pins, SNI
        self._tested: dict[str, tuple[tuple[str, int, int, int], ...]] = {}

    @classmethod
    @abc.abstractmethod
    def make_daemons(cls, conf: Callable[[str], Any]) -> list[MailDaemon]:
        """The daemons this installer drives, from its options (conf: option -> value, None
        for an option a renewal configuration leaves out because it has its default)."""

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """--<name>-reload-only, -alt-cert-name, -dane and -dane-resolver: every installer's."""
        add("reload-only", action="store_true", default=False, help=_RELOAD_ONLY_HELP)
        add("alt-cert-name", default=None, metavar="CERT_NAME", help=_ALT_CERT_NAME_HELP)
        add("dane", default="warn", choices=DANE_MODES, help=_DANE_HELP)
        add("dane-resolver", default=None, metavar="ADDRESS", help=_DANE_RESOLVER_HELP)
        add("take-over-sni", action="store_true", default=False, help=_TAKE_OVER_SNI_HELP)

    def _reload_only(self) -> bool:
        """Whether this run must leave every config file alone."""
        return bool(self.conf("reload-only"))

    def prepare(self) -> None:
        """Find the tools and config, undo a crashed run's half-made edits, lock, drop SNI
        entries of deleted lineages, and test the configs."""
        for daemon in self.daemons:
            for executable in daemon.executables:
                if not util.exe_exists(executable) and not plugin_util.path_surgery(executable):
                    raise errors.NoInstallationError(
                        f"{executable} not found: install {daemon.name} or put it on PATH")
            if not os.path.isfile(daemon.config_file):
                raise errors.NoInstallationError(
                    f"{daemon.config_file} does not exist, so {daemon.name} is not configured "
                    f"there: configure {daemon.name} first, or name its config with "
                    f"{self.config_options.get(daemon.name, 'the config option')}")
        if not self._reload_only():
            for daemon in self.daemons:
                util.lock_dir_until_exit(daemon.config_dir)
        self.recovery_routine()
        self._prune()
        for daemon in self.daemons:
            try:
                self._test_unless_tested(daemon)
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
        """The daemons' host names and SNI names, for certbot's name prompt."""
        names = {name for daemon in self.daemons for name in daemon.names()}
        names |= {listener.server_name for listener in self._listeners() if listener.server_name}
        return util.get_filtered_names(names)

    def deploy_cert(self, domain: str, cert_path: str, key_path: str,
                    chain_path: str | None = None, fullchain_path: str | None = None) -> None:
        """Check the lineage's files, then (unless reload-only) point every daemon at them.

        A daemon whose own names the certificate does not cover keeps its default certificate
        and gets this one for the certificate's names, by SNI.
        """
        del domain, cert_path, chain_path  # one certificate for the whole server; fullchain has all
        if fullchain_path is None:
            raise errors.PluginError("the mail installers need the full chain: use a certbot "
                                     "that passes fullchain_path, or --fullchain-path")
        lineage = KeyAndChain(key_path, fullchain_path)
        if lineage == self._deployed:
            return
        alternates = self._alternates(lineage)
        problems = [problem for pair in (lineage, *alternates)
                    for problem in check_pair(pair, _now())]
        if problems:
            raise errors.PluginError(f"not deploying {fullchain_path}: " + "; ".join(problems))
        leaf = leaf_certificate(lineage)
        refusal = server_certificate_problem(leaf)
        if refusal:
            raise errors.PluginError(
                f"not deploying {fullchain_path}: {refusal}. The {self.name} installer gives "
                "mail servers their TLS certificate, so it takes only server certificates (a DNS "
                "name, and serverAuth if the certificate restricts its use); get a certificate "
                "for an email address with `certbot certonly`, without -i")
        self._refuse_one_key_type_twice(lineage, alternates)
        leaves = {leaf_certificate(pair) for pair in (lineage, *alternates)}
        server_names = {daemon.name: self._server_names(daemon, leaf) for daemon in self.daemons}
        self._judge_dane(self._planned_owners(server_names, leaf, leaves))
        if self._reload_only():
            self._warn_unless_configured(lineage)
            self._deployed = lineage
            return
        sni_names = _sni_names(leaf)
        updates = {daemon.name: self._sni_updates(daemon, sni_names, lineage)
                   for daemon in self.daemons}
        for daemon in self.daemons:
            names = server_names[daemon.name]
            changes = daemon.deploy(key_path, fullchain_path, self._before_edit, self._created,
                                    names, alternates)
            if not names and updates[daemon.name]:
                changes += daemon.deploy(key_path, fullchain_path, self._before_edit,
                                         self._created, updates[daemon.name], alternates)
            for change in changes:
                logger.info("%s: %s", daemon.name, change)
            self._refuse_admin_sni(daemon, daemon.sni_entries(sni_names), lineage, after=True)
        self._deployed = lineage

    def _sni_updates(self, daemon: MailDaemon, names: Sequence[str],
                     lineage: KeyAndChain) -> tuple[str, ...]:
        """The names whose SNI entries must get the new pairs: ours, and with
        --<name>-take-over-sni the admin's; refuse (before any edit) for the admin's otherwise."""
        entries = daemon.sni_entries(names)
        self._refuse_admin_sni(daemon, entries, lineage)
        return tuple(entries)

    def _refuse_admin_sni(self, daemon: MailDaemon, entries: dict[str, SniEntry],
                          lineage: KeyAndChain, after: bool = False) -> None:
        """Refuse when an SNI entry of the admin's would keep serving another certificate to
        clients asking for one of the names (after: once ours were written, none may be left)."""
        take_over = self.conf("take-over-sni")
        refused = [entry for entry in entries.values() if not entry.ours
                   and (after or not take_over or not entry.shadowable)]
        if not refused:
            return
        option = f"--{self.name}-take-over-sni"
        reasons = []
        for entry in refused:
            fix = entry.fix.replace("{key}", lineage.key_file).replace(
                "{chain}", lineage.chain_file)
            cannot = (f"; {option} cannot win over it, so edit it yourself"
                      if after or not entry.shadowable else
                      f", or rerun with {option} to serve the new certificate to those clients "
                      "from certbot-email's own SNI entry instead")
            reasons.append(f"{entry.where} gives clients that ask for {entry.name} (SNI) a "
                           f"certificate of its own: {fix}{cannot}")
        raise errors.PluginError(f"{daemon.name}: not deploying {lineage.chain_file}, since "
                                 "clients that send SNI would keep the old certificate: "
                                 + "; ".join(reasons))

    def _prune(self) -> None:
        """Drop our entries whose files are gone (certbot delete removes a lineage without
        telling any installer) before a config test or postmap fails on them."""
        for daemon in self.daemons:
            stale = daemon.prune(apply=not self._reload_only())
            if stale and self._reload_only():
                raise errors.MisconfigurationError(
                    "; ".join(stale) + f". --{self.name}-reload-only touches no file: remove "
                    "that entry yourself (the local_name block; the table's line, then `postmap "
                    "-F hash:<table>`; the deleted lineage's key and chain from the default "
                    "settings), or run this command once without the option")
            for line in stale:
                logger.warning("%s: removed that entry, since its lineage is gone", line)

    def _alternates(self, lineage: KeyAndChain) -> tuple[KeyAndChain, ...]:
        """The --<name>-alt-cert-name lineage's pair, served beside lineage's; () without one."""
        cert_name = self.conf("alt-cert-name")
        if not cert_name:
            return ()
        live = os.path.join(self.config.config_dir, "live", cert_name)
        pair = KeyAndChain(os.path.join(live, "privkey.pem"), os.path.join(live, "fullchain.pem"))
        if not os.path.isfile(pair.chain_file):
            raise errors.PluginError(
                f"--{self.name}-alt-cert-name {cert_name}: there is no lineage {live}; obtain it "
                f"first (certbot certonly --key-type rsa --cert-name {cert_name} -d ...) or drop "
                "the option")
        if os.path.realpath(pair.chain_file) == os.path.realpath(lineage.chain_file):
            return ()
        return (pair,)

    def _refuse_one_key_type_twice(self, lineage: KeyAndChain,
                                   alternates: Sequence[KeyAndChain]) -> None:
        """A daemon serves one certificate per key type: the alternate must have another."""
        kind = key_algorithm(leaf_certificate(lineage))
        if any(key_algorithm(leaf_certificate(pair)) == kind for pair in alternates):
            raise errors.PluginError(
                f"--{self.name}-alt-cert-name {self.conf('alt-cert-name')} has a {kind} key like "
                f"the lineage being deployed; a daemon serves one certificate per key type, so "
                f"name a lineage with another key type (certbot --key-type rsa or ecdsa)")

    def _server_names(self, daemon: MailDaemon, leaf: x509.Certificate) -> tuple[str, ...]:
        """() to deploy as the default; else the certificate's names, to deploy for by SNI."""
        names = daemon.names()
        if not names or covers(leaf, names):
            return ()
        sni_names = tuple(_sni_names(leaf))
        if sni_names and not self._reload_only():
            logger.info("%s: %s covers none of %s, the server's own names: keeping its default "
                        "certificate and serving this one to clients that ask for %s (SNI)",
                        daemon.name, describe(leaf), ", ".join(sorted(names)),
                        ", ".join(sni_names))
            return sni_names
        logger.warning("%s: the certificate %s covers none of %s, the names its config gives "
                       "the server; clients that connect by those names will see a name "
                       "mismatch", daemon.name, describe(leaf), ", ".join(sorted(names)))
        return ()

    def _before_edit(self, path: str) -> None:
        """Back up a file into the in-progress checkpoint before the first edit."""
        self.add_to_checkpoint({path}, f"certbot-email edits {path}\n")

    def _created(self, path: str) -> None:
        """Record a file we are about to create, so rollback deletes it."""
        try:
            self.reverter.register_file_creation(False, path)
        except errors.ReverterError as error:
            raise errors.PluginError(str(error)) from error

    def _planned_owners(self, server_names: dict[str, tuple[str, ...]], leaf: x509.Certificate,
                        leaves: set[x509.Certificate]) -> dict[str, set[x509.Certificate]]:
        """TLSA owner -> the leaves a deploy would serve there, on the ports listening now."""
        owners: dict[str, set[x509.Certificate]] = {}
        for daemon in self.daemons:
            hosts = set(server_names[daemon.name]) or daemon.names() | set(dns_names(leaf))
            for port in {listener.port for listener in daemon.tls_listeners()}:
                for owner in _tlsa_owners(port, hosts):
                    owners.setdefault(owner, set()).update(leaves)
        return owners

    def _served_owners(self, listeners: Sequence[TlsListener]) -> dict[str, set[x509.Certificate]]:
        """TLSA owner -> the leaves the configured listeners serve there."""
        default_names = {daemon.name: daemon.names() for daemon in self.daemons}
        owners: dict[str, set[x509.Certificate]] = {}
        for listener in listeners:
            leaves = {leaf_certificate(pair) for pair in listener.credentials}
            hosts = {listener.server_name} if listener.server_name else (
                default_names.get(listener.daemon, set())
                | {name for leaf in leaves for name in dns_names(leaf)})
            for owner in _tlsa_owners(listener.port, hosts):
                owners.setdefault(owner, set()).update(leaves)
        return owners

    def _judge_dane(self, owners: dict[str, set[x509.Certificate]]) -> None:
        """Warn (or, with --<name>-dane refuse, stop) when TLSA records pin another key."""
        mode = self.conf("dane")
        if mode == "off" or not owners:
            return
        from certbot_email_smtpext import dane  # dnspython: only when DANE is checked
        lookup = dane.find_pins(dane.resolver(self.conf("dane-resolver")), sorted(owners))
        if lookup.failures and mode == "refuse":
            raise errors.PluginError(
                "; ".join(lookup.failures) + f"; --{self.name}-dane refuse deploys nothing it "
                f"cannot check: fix DNS or --{self.name}-dane-resolver")
        problems = [f"{pin} pins a key that {describe(leaf)} does not have; publish "
                    f"`{dane.suggested_record(leaf)}` there beside the old record and wait two "
                    "TTLs before deploying, or renew with --reuse-key to keep the old key"
                    for pin in lookup.pins for leaf in owners[pin.owner] if not pin.match(leaf)]
        if problems and mode == "refuse":
            raise errors.PluginError(
                "DANE: not deploying or reloading, since senders that check TLSA records would "
                "refuse to deliver: " + "; ".join(problems)
                + f" (--{self.name}-dane warn deploys anyway)")
        warnings = [f"DANE not checked: {failure}" for failure in lookup.failures] + [
            f"DANE: senders that check TLSA records will refuse to deliver: {problem}"
            for problem in problems]
        for warning in warnings:
            if warning not in self._warned:
                self._warned.add(warning)
                logger.warning("%s", warning)

    def _warn_unless_configured(self, lineage: KeyAndChain) -> None:
        """Reload-only: say which listeners the lineage does not reach, since we will not edit."""
        wanted = os.path.realpath(lineage.chain_file)
        for listener in self._listeners():
            if all(os.path.realpath(pair.chain_file) != wanted for pair in listener.credentials):
                logger.warning("reload-only: %s serves %s, not %s; renewals will reload it but not "
                               "change its certificate", listener,
                               ", ".join(p.chain_file for p in listener.credentials) or "nothing",
                               lineage.chain_file)

    def _by_own_names(self, listeners: Sequence[TlsListener]) -> list[TlsListener]:
        """Each default listener as reached with SNI set to each name of its certificates,
        which must serve them too, unless an SNI entry gives that name its own (those of ours
        are listed already; the admin's are named in a warning)."""
        named = {(listener.daemon, listener.service, listener.server_name)
                 for listener in listeners if listener.server_name}
        by_name = []
        for daemon in self.daemons:
            defaults = [listener for listener in listeners
                        if listener.daemon == daemon.name and not listener.server_name]
            wanted = {listener: [name for pair in listener.credentials
                                 for name in _sni_names(leaf_certificate(pair))
                                 if (daemon.name, listener.service, name) not in named]
                      for listener in defaults}
            entries = daemon.sni_entries(sorted({name for names in wanted.values()
                                                 for name in names}))
            for entry in entries.values():
                warning = (f"{daemon.name}: clients that ask for {entry.name} (SNI) get the "
                           f"certificate of {entry.where}, not the default one; not verified")
                if not entry.ours and warning not in self._warned:
                    self._warned.add(warning)
                    logger.warning("%s", warning)
            by_name += [listener.for_server_name(name, listener.credentials)
                        for listener, names in wanted.items()
                        for name in dict.fromkeys(names) if name not in entries]
        return by_name

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

    def _test_unless_tested(self, daemon: MailDaemon) -> None:
        """The daemon's config test, unless its config dir is as it was when the test last
        passed in this run: `certbot renew` prepares the installer just before restart(), and a
        second `postfix check` would take seconds on a busy host."""
        fingerprint = _fingerprint(daemon.config_dir)
        if self._tested.get(daemon.name) != fingerprint:
            daemon.config_test()
            self._tested[daemon.name] = fingerprint

    def _listeners(self) -> list[TlsListener]:
        """Every TLS listener of every daemon, read from the config as it is now (the daemons'
        tools run at once: each takes tens of milliseconds on a busy host)."""
        with concurrent.futures.ThreadPoolExecutor(len(self.daemons)) as pool:
            found = list(pool.map(lambda daemon: daemon.tls_listeners(), self.daemons))
        return [listener for listeners in found for listener in listeners]

    def restart(self) -> None:
        """Check what the configs name, reload, and wait until every listener serves it, with
        and without SNI for each of the certificate's names."""
        if not self._reload_only():
            self._prune()
        for daemon in self.daemons:
            self._test_unless_tested(daemon)
        listeners = self._listeners()
        problems = _credential_problems(listeners)
        if problems:
            raise errors.PluginError(
                "not reloading, so the running daemons keep their current certificate: "
                + "; ".join(problems))
        self._judge_dane(self._served_owners(listeners))
        expected = _probes(listeners + self._by_own_names(listeners))
        before = _served_now(expected)
        started = time.monotonic()
        for daemon in self.daemons:  # one after the other: Postfix smtpd processes that start
            daemon.reload()         # while Dovecot reloads find its SASL socket away, and fail
        _wait_until_served(expected, before, started)
        logger.info("%d TLS listeners serve the configured certificate %.2f s after the reload",
                    len(listeners), time.monotonic() - started)


def _sni_names(leaf: x509.Certificate) -> list[str]:
    """The certificate's DNS names a client can send by SNI (wildcards are patterns)."""
    return [name for name in dns_names(leaf) if not name.startswith("*.")]


def _now() -> datetime.datetime:
    """The time the checks compare validity against."""
    return datetime.datetime.now(datetime.timezone.utc)


def _fingerprint(directory: str) -> tuple[tuple[str, int, int, int], ...]:
    """Every file below directory by path, inode, size and modification time (a few stat
    calls): an edit, however it is made, changes it."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                status = os.stat(path)
            except OSError:
                continue
            found.append((path, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(found)


def _credential_problems(listeners: Sequence[TlsListener]) -> list[str]:
    """Every problem of every configured key/chain pair, and listeners with none configured."""
    problems = [f"{listener} offers TLS but no certificate is configured for it"
                for listener in listeners if not listener.credentials]
    pairs = dict.fromkeys(pair for listener in listeners for pair in listener.credentials)
    now = _now()
    return problems + [problem for pair in pairs for problem in check_pair(pair, now)]


def _tlsa_owners(port: int, hosts: Iterable[str]) -> list[str]:
    """`_<port>._tcp.<host>` for the hosts that can have public records (no wildcard, no
    single label such as localhost)."""
    from certbot_email_smtpext import dane  # certbot imports this module on every run
    return [dane.owner_name(port, host) for host in sorted(hosts)
            if not host.startswith("*.") and "." in host.strip(".")]


def _probes(listeners: Sequence[TlsListener]) -> dict[Probe, set[x509.Certificate]]:
    """What to ask each listener and what it must answer: per key type when it holds several."""
    probes: dict[Probe, set[x509.Certificate]] = {}
    for listener in listeners:
        by_type: dict[str, set[x509.Certificate]] = {}
        for pair in listener.credentials:
            leaf = leaf_certificate(pair)
            by_type.setdefault(key_algorithm(leaf), set()).add(leaf)
        if len(by_type) > 1 and set(by_type) <= {"RSA", "EC"}:
            probes.update({(listener, kind): leaves for kind, leaves in by_type.items()})
        else:
            probes[listener, None] = {leaf for leaves in by_type.values() for leaf in leaves}
    return probes


def _served_now(probes: Iterable[Probe]) -> dict[Probe, x509.Certificate | str]:
    """One handshake with each listener, all at once: the leaf it serves, or why it gave none."""
    from certbot_email_smtpext import tls_probe  # mail clients load only when a reload is proven

    def probe(target: Probe) -> x509.Certificate | str:
        listener, kind = target
        try:
            return tls_probe.served_certificate(listener, key_algorithm=kind)
        except tls_probe.ProbeError as error:
            return str(error)
    targets = list(probes)
    if not targets:
        return {}
    with concurrent.futures.ThreadPoolExecutor(min(len(targets), _PROBE_THREADS)) as pool:
        return dict(zip(targets, pool.map(probe, targets), strict=True))


def _wait_until_served(expected: dict[Probe, set[x509.Certificate]],
                       before: dict[Probe, x509.Certificate | str], reloaded: float) -> None:
    """Probe each listener until it serves one of its configured leaves.

    A listener that gives no handshake is slow: it is probed again for VERIFY_SECONDS. One that
    still serves what it served ``before`` the reload, or an earlier certificate for the same
    names (Postfix processes of older reloads finishing), is given RELOAD_GRACE_SECONDS. One
    that serves any other certificate is wrong, and fails at once. The error says which.
    """
    pending = dict(expected)
    last: dict[Probe, str] = {}
    while True:
        wrong, stale = {}, {}
        for probe, served in _served_now(pending).items():
            if isinstance(served, str):
                last[probe] = f"gives no TLS handshake ({served})"
            elif served in pending[probe]:
                del pending[probe]
            elif served == before.get(probe) or _earlier_version(served, pending[probe]):
                stale[probe] = last[probe] = f"serves {describe(served)}"
            else:
                wrong[probe] = f"serves {describe(served)}"
        waited = time.monotonic() - reloaded
        if wrong:
            raise errors.PluginError(
                "after the reload, " + _findings(wrong, expected) + ": a wrong certificate, not "
                "a slow reload (neither the configured one, nor the one served before, nor an "
                "earlier one for the same names). "
                "Look for settings that give these listeners another certificate (Dovecot "
                "local/local_name blocks, Postfix SNI maps).")
        if stale and waited >= RELOAD_GRACE_SECONDS:
            raise errors.PluginError(
                f"{waited:.0f} s after the reload, " + _findings(stale, expected) + ", the "
                "certificate served before the reload: the daemon did not reload, or a setting "
                "keeps that certificate for these listeners (Dovecot local/local_name blocks, "
                "Postfix SNI maps).")
        if not pending:
            return
        if waited >= VERIFY_SECONDS:
            raise errors.PluginError(
                f"{waited:.0f} s after the reload, "
                + _findings({probe: last[probe] for probe in pending}, expected)
                + ". No listener served a wrong certificate: these are slow. Check that the "
                "daemons run and answer (see their logs).")
        time.sleep(_POLL_SECONDS)


def _earlier_version(served: x509.Certificate, leaves: set[x509.Certificate]) -> bool:
    """Whether ``served`` is an older certificate for exactly the names of one of ``leaves``."""
    return any(sorted(dns_names(served)) == sorted(dns_names(leaf))
               and served.not_valid_before_utc <= leaf.not_valid_before_utc for leaf in leaves)


def _findings(found: dict[Probe, str], expected: dict[Probe, set[x509.Certificate]]) -> str:
    """``<listener> <what it did> instead of <leaf>`` for each probe."""
    return "; ".join(
        f"{listener}{f' to a client asking for {kind} keys' if kind else ''} {what} instead of "
        + " or ".join(describe(leaf) for leaf in expected[listener, kind])
        for (listener, kind), what in found.items())


class PostfixInstaller(MailInstaller):
    """Postfix: main.cf through postconf -e (smtpd_tls_chain_files, or cert_file/key_file)."""

    description = "Postfix: deploy the certificate, reload, verify every TLS listener"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """--postfix-config-dir and --postfix-reload-only."""
        super().add_parser_arguments(add)
        add("config-dir", default=DEFAULT_CONFIG_DIR,
            help="Postfix config directory (postconf -c).")

    config_options = {"postfix": "--postfix-config-dir"}

    @classmethod
    def make_daemons(cls, conf: Callable[[str], Any]) -> list[MailDaemon]:
        """One Postfix."""
        return [Postfix(conf("config-dir") or DEFAULT_CONFIG_DIR)]


class DovecotInstaller(MailInstaller):
    """Dovecot: one drop-in file we own, included once from dovecot.conf."""

    description = "Dovecot: deploy the certificate, reload, verify every TLS listener"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """--dovecot-config and --dovecot-reload-only."""
        super().add_parser_arguments(add)
        add("config", default=DEFAULT_CONFIG, help="dovecot.conf of the instance (doveconf -c).")

    config_options = {"dovecot": "--dovecot-config"}

    @classmethod
    def make_daemons(cls, conf: Callable[[str], Any]) -> list[MailDaemon]:
        """One Dovecot."""
        return [Dovecot(conf("config") or DEFAULT_CONFIG)]


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

    config_options = {"postfix": "--mailserver-postfix-config-dir",
                      "dovecot": "--mailserver-dovecot-config"}

    @classmethod
    def make_daemons(cls, conf: Callable[[str], Any]) -> list[MailDaemon]:
        """Postfix first, then Dovecot."""
        return [Postfix(conf("postfix-config-dir") or DEFAULT_CONFIG_DIR),
                Dovecot(conf("dovecot-config") or DEFAULT_CONFIG)]


INSTALLERS: dict[str, type[MailInstaller]] = {
    "postfix": PostfixInstaller, "dovecot": DovecotInstaller, "mailserver": MailServerInstaller}


def prune_for_delete(renewal_file: str) -> Callable[[], list[str]] | None:
    """For `certbot delete` (hook H6), read before the lineage goes: what removes, once it is
    gone, the entries of ours that name its files, so no config test fails on them. The
    daemons are those of the installer its renewal configuration names, and of every lineage
    that serves it beside its own (``<installer>_alt_cert_name``), whose renewal configuration
    then stops naming it, so its next renewal deploys without it. None when there are none, or
    only installers in reload-only mode."""
    renewal_dir, conf_name = os.path.split(renewal_file)
    cert_name = conf_name.removesuffix(".conf")
    siblings = [path for path in sorted(glob.glob(os.path.join(renewal_dir, "*.conf")))
                if path != renewal_file]
    daemons: dict[tuple[str, str], MailDaemon] = {}
    serving_beside: list[tuple[str, str]] = []  # (renewal file, its alt-cert-name key)
    for path in [renewal_file, *siblings]:
        name, conf = _renewal_installer(path)
        if name is None:
            continue
        if path != renewal_file:
            if conf("alt-cert-name") != cert_name:
                continue
            serving_beside.append((path, f"{name}_alt_cert_name"))
        for daemon in INSTALLERS[name].make_daemons(conf):
            daemons.setdefault((daemon.name, daemon.config_file), daemon)
    if not daemons:
        return None

    def prune() -> list[str]:
        for daemon in daemons.values():
            util.lock_dir_until_exit(daemon.config_dir)
        lines = [line for daemon in daemons.values() for line in daemon.prune(apply=True)]
        for path, key in serving_beside:
            _forget_renewal_option(path, key)
            lines.append(f"{path}: {key} = {cert_name}, a lineage that no longer exists")
        return lines
    return prune


def _renewal_installer(renewal_file: str) -> tuple[str | None, Callable[[str], Any]]:
    """The mail installer a renewal configuration names, with its options (option -> value);
    None for another installer, none, one in reload-only mode (which edits no file), or a file
    that cannot be read (another lineage's damaged renewal conf must not stop this delete)."""
    import configobj  # certbot's own parser for renewal configurations
    try:
        params = configobj.ConfigObj(renewal_file, encoding="utf-8").get("renewalparams", {})
    except (configobj.ConfigObjError, OSError, UnicodeDecodeError) as error:
        logger.debug("certbot-email skips %s: %s", renewal_file, error)
        return None, lambda option: None
    name = str(params.get("installer", ""))

    def conf(option: str) -> Any:
        return params.get(f"{name}_{option.replace('-', '_')}")
    if name not in INSTALLERS or str(conf("reload-only")) == "True":
        return None, conf
    return name, conf


def _forget_renewal_option(renewal_file: str, key: str) -> None:
    """Drop one renewal parameter, keeping the rest of the file as certbot wrote it."""
    import configobj
    renewal = configobj.ConfigObj(renewal_file, encoding="utf-8")
    del renewal["renewalparams"][key]
    renewal.write()
