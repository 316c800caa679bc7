"""Postfix: read main.cf and master.cf through postconf, set the certificate, test, reload.

The parsing and deciding functions at the top are pure (they take postconf's output); the
`Postfix` class below runs postconf and postfix for one config directory.
"""
import dataclasses
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence

from certbot import errors

from certbot_email_smtpext import commands
from certbot_email_smtpext.checks import (
    KeyAndChain,
    default_without_gone,
    gone_files,
    pair_chain_files,
    read_text,
    without_missing,
)
from certbot_email_smtpext.listeners import SniEntry, TlsListener, TlsStart, connect_address

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = "/etc/postfix"
#: Postfix reads key and chain from one list since 3.4; older ones need cert_file and key_file.
CHAIN_FILES_SINCE = (3, 4)
#: The main.cf keys that decide which certificate smtpd serves; a master.cf -o of one wins.
CERTIFICATE_KEYS = ("smtpd_tls_chain_files", "smtpd_tls_cert_file", "smtpd_tls_key_file")
SECURITY_LEVEL = "smtpd_tls_security_level"
SNI_MAPS = "tls_server_sni_maps"
#: Our SNI table, in the config directory: `name key, chain[, key, chain]` per line. Postfix
#: reads it as a hash: table built with `postmap -F`, which copies the files' contents into the
#: .db, so every reload rebuilds it.
SNI_MAP_NAME = "certbot-email-sni"
_SNI_MAP_HEADER = ("# Written by certbot-email (certbot installer): SNI name, then key and chain "
                   "files.\n# Built into the .db with postmap -F on every deploy and renewal.\n")
#: Commands that answer SMTP on an inet service (postscreen hands STARTTLS to tlsproxy).
_SMTP_SERVERS = ("smtpd", "postscreen")
_PARAMETER_LINE = re.compile(r"^(\S+) =(.*)$")
#: Table types whose source file has one `key value` line per entry.
_KEYED_SOURCES = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash")


@dataclasses.dataclass(frozen=True)
class MasterService:
    """One master.cf entry: `service type ... command`, with its -o overrides."""

    service: str
    type: str
    command: str
    overrides: Mapping[str, str]


def parse_parameters(postconf_output: str) -> dict[str, str]:
    """`name = value` lines (postconf, postconf -x, postconf -P) as a dict."""
    parameters = {}
    for line in postconf_output.splitlines():
        match = _PARAMETER_LINE.match(line)
        if match:
            parameters[match.group(1)] = match.group(2).strip()
    return parameters


def parse_version(mail_version: str) -> tuple[int, ...]:
    """`3.7.11` -> (3, 7, 11); a snapshot's `3.9-20231012` -> (3, 9)."""
    match = re.match(r"(\d+(?:\.\d+)*)", mail_version.strip())
    if match is None:
        raise errors.PluginError(
            f"cannot read the Postfix version from mail_version = {mail_version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def parse_services(master_output: str, override_output: str) -> list[MasterService]:
    """master.cf entries from `postconf -M` joined with their -o overrides from `postconf -P`."""
    overrides: dict[tuple[str, str], dict[str, str]] = {}
    for name, value in parse_parameters(override_output).items():
        service, service_type, parameter = name.rsplit("/", 2)
        overrides.setdefault((service, service_type), {})[parameter] = value
    services = []
    for line in master_output.splitlines():
        fields = line.split()
        if len(fields) >= 8:
            service, service_type, command = fields[0], fields[1], fields[7]
            services.append(MasterService(service, service_type, command,
                                          overrides.get((service, service_type), {})))
    return services


def chain_files_value(pairs: Sequence[KeyAndChain]) -> str:
    """`key, chain, key, chain`: the smtpd_tls_chain_files (and SNI table) form of the pairs."""
    return ", ".join(path for pair in pairs
                     for path in dict.fromkeys((pair.key_file, pair.chain_file)))


def certificate_settings(version: tuple[int, ...], key_path: str, fullchain_path: str,
                         main: Mapping[str, str],
                         alternates: Sequence[KeyAndChain] = ()) -> dict[str, str]:
    """main.cf values that make smtpd serve this key and full chain (and offer TLS if off).

    alternates: more pairs with other key types (RSA beside ECDSA), served from the same list.
    """
    if version >= CHAIN_FILES_SINCE:
        pairs = [KeyAndChain(key_path, fullchain_path), *alternates]
        settings = {"smtpd_tls_chain_files": chain_files_value(pairs)}
    elif alternates:
        raise errors.PluginError(_needs_chain_files(version, "a second key type"))
    else:
        settings = {"smtpd_tls_cert_file": fullchain_path, "smtpd_tls_key_file": key_path}
    return _changed({**settings, **_tls_on(main)}, main)


def split_tables(value: str) -> list[str]:
    """A list of lookup tables (`hash:/a, inline:{ x=y, z=w }`) as one string per table."""
    return [table for table in re.findall(r"[^\s,{]+(?:\{[^}]*\})?", value) if table]


def lookup_keys(name: str) -> list[str]:
    """What Postfix looks up for an SNI name: the name, then each parent with a leading dot."""
    labels = name.lower().rstrip(".").split(".")
    return [".".join(labels)] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]


def sni_map_settings(version: tuple[int, ...], map_reference: str,
                     main: Mapping[str, str]) -> dict[str, str]:
    """main.cf values that add our SNI table in front of any the admin has (and offer TLS)."""
    if version < CHAIN_FILES_SINCE:
        raise errors.PluginError(_needs_chain_files(version, "per-name (SNI) certificates"))
    tables = split_tables(main.get(SNI_MAPS, ""))
    settings = {} if map_reference in tables else {SNI_MAPS: ", ".join([map_reference, *tables])}
    return _changed({**settings, **_tls_on(main)}, main)


def _needs_chain_files(version: tuple[int, ...], feature: str) -> str:
    """Why an old Postfix cannot take what we were asked to deploy."""
    return (f"Postfix {'.'.join(map(str, version))} cannot serve {feature}: that needs "
            f"Postfix {'.'.join(map(str, CHAIN_FILES_SINCE))} or later; upgrade Postfix, or "
            "deploy one certificate for the server's own names")


def _tls_on(main: Mapping[str, str]) -> dict[str, str]:
    """smtpd_tls_security_level = may when TLS is off, so the certificate is offered at all."""
    return {SECURITY_LEVEL: "may"} if _security_level(main) == "none" else {}


def _changed(settings: Mapping[str, str], main: Mapping[str, str]) -> dict[str, str]:
    """The settings whose value differs from main.cf's."""
    return {key: value for key, value in settings.items() if main.get(key) != value}


def parse_sni_map(text: str) -> dict[str, tuple[KeyAndChain, ...]]:
    """Our SNI table's source: `name key, chain[, key, chain]` lines, `#` comments."""
    entries = {}
    for line in text.splitlines():
        fields = [field for field in re.split(r"[\s,]+", line.split("#", 1)[0]) if field]
        if len(fields) >= 2:
            entries[fields[0].lower()] = tuple(pair_chain_files(fields[1:]))
    return entries


def render_sni_map(entries: Mapping[str, Sequence[KeyAndChain]]) -> str:
    """Our SNI table's source, one line per name, sorted so rewriting it changes nothing."""
    for pairs in entries.values():
        for path in (path for pair in pairs for path in (pair.key_file, pair.chain_file)):
            if re.search(r"[\s,#]", path):
                raise errors.PluginError(f"a Postfix SNI table cannot name the file {path!r}: "
                                         "move the certbot config directory to a path without "
                                         "spaces, commas or #")
    return _SNI_MAP_HEADER + "".join(f"{name} {chain_files_value(pairs)}\n"
                                     for name, pairs in sorted(entries.items()))


def certificate_overrides(services: Sequence[MasterService]) -> list[str]:
    """master.cf -o overrides of the certificate keys: those listeners keep their own."""
    return [f"master.cf service {service.service}/{service.type} sets -o {key}={value}"
            for service in services if service.command in _SMTP_SERVERS
            for key, value in service.overrides.items() if key in CERTIFICATE_KEYS]


def tls_listeners(main: Mapping[str, str], services: Sequence[MasterService],
                  sni: Mapping[str, tuple[KeyAndChain, ...]] | None = None) -> list[TlsListener]:
    """Every inet SMTP service that offers TLS (wrapper mode or STARTTLS), with its certificate.

    sni: name -> pairs of our SNI table; each listener is then also listed once per name.
    """
    listeners = []
    for service in services:
        if service.type != "inet" or service.command not in _SMTP_SERVERS:
            continue
        parameters = {**main, **service.overrides}
        if parameters.get("smtpd_tls_wrappermode") == "yes":
            start = TlsStart.IMPLICIT
        elif _security_level(parameters) != "none":
            start = TlsStart.SMTP
        else:
            continue
        host, port = _service_address(service.service, parameters)
        listener = TlsListener("postfix", service.service, host, port, start,
                               _credentials(parameters))
        listeners.append(listener)
        listeners += [listener.for_server_name(name, pairs)
                      for name, pairs in sorted((sni or {}).items())]
    return listeners


def _security_level(parameters: Mapping[str, str]) -> str:
    """The effective smtpd_tls_security_level, honouring the legacy use_tls/enforce_tls switches."""
    level = parameters.get(SECURITY_LEVEL, "")
    if level:
        return level
    if parameters.get("smtpd_enforce_tls") == "yes":
        return "encrypt"
    return "may" if parameters.get("smtpd_use_tls") == "yes" else "none"


def service_port(service: str) -> int | None:
    """The TCP port of a master.cf inet service (`25`, `smtp`, `[::1]:2525`); None if unknown."""
    port_name = service.rpartition(":")[2]
    if port_name.isdigit():
        return int(port_name)
    try:
        return socket.getservbyname(port_name, "tcp")
    except OSError:
        return None


def _service_address(service: str, parameters: Mapping[str, str]) -> tuple[str, int]:
    """Where to connect to a master.cf inet service: `[host]:port`, `host:port` or `port`."""
    host, _, port_name = service.rpartition(":")
    if not host:
        host = re.split(r"[\s,]+", parameters.get("inet_interfaces", "all").strip())[0]
        if host in ("all", "loopback-only") and parameters.get("inet_protocols") == "ipv6":
            host = "::"
    port = service_port(service)
    if port is None:
        raise errors.PluginError(f"master.cf service {service!r}: {port_name!r} is not a port "
                                 "number or a service name in /etc/services")
    return connect_address(host), port


def _credentials(parameters: Mapping[str, str]) -> tuple[KeyAndChain, ...]:
    """The key/chain pairs smtpd reads: smtpd_tls_chain_files if set, else cert_file/key_file."""
    chain_files = [path for path in re.split(r"[\s,]+", parameters.get("smtpd_tls_chain_files", ""))
                   if path]
    if chain_files:
        return tuple(pair_chain_files(chain_files))
    cert_file = parameters.get("smtpd_tls_cert_file", "")
    if not cert_file:
        return ()
    return (KeyAndChain(parameters.get("smtpd_tls_key_file") or cert_file, cert_file),)


class Postfix:
    """One Postfix instance, named by its config directory (postconf -c, postfix -c)."""

    name = "postfix"
    executables: tuple[str, ...] = ("postconf", "postfix", "postmap")

    def __init__(self, config_dir: str) -> None:
        self.config_dir = config_dir
        self.main_cf = self.config_file = os.path.join(config_dir, "main.cf")
        self.sni_map = os.path.join(config_dir, SNI_MAP_NAME)
        self.sni_map_reference = f"hash:{self.sni_map}"

    def postconf(self, *arguments: str) -> str:
        """postconf for our config directory: the one reader and writer of main.cf/master.cf."""
        return commands.run(["postconf", "-c", self.config_dir, *arguments])

    def main_parameters(self) -> dict[str, str]:
        """Every main.cf parameter with defaults and $name expansion (postconf -x)."""
        return parse_parameters(self.postconf("-x"))

    def services(self) -> list[MasterService]:
        """master.cf entries with their -o overrides."""
        return parse_services(self.postconf("-M"), self.postconf("-x", "-P"))

    def version(self) -> tuple[int, ...]:
        """The running Postfix's version, from mail_version."""
        return parse_version(self.postconf("-h", "mail_version"))

    def names(self) -> set[str]:
        """myhostname and mydomain, the names a certificate for this server should carry."""
        main = self.main_parameters()
        return {main[key] for key in ("myhostname", "mydomain") if main.get(key)}

    def deploy(self, key_path: str, fullchain_path: str,
               before_edit: Callable[[str], None], created: Callable[[str], None],
               server_names: Sequence[str] = (),
               alternates: Sequence[KeyAndChain] = ()) -> list[str]:
        """Point main.cf (or, for server_names, our SNI table) at the pairs; return what changed.

        Without server_names the key and full chain (and alternates) become smtpd's default.
        """
        main = self.main_parameters()
        if server_names:
            return self._deploy_sni(main, [KeyAndChain(key_path, fullchain_path), *alternates],
                                    server_names, before_edit, created)
        for override in certificate_overrides(self.services()):
            logger.warning("%s: that listener keeps its own certificate and is verified against it",
                           override)
        settings = certificate_settings(self.version(), key_path, fullchain_path, main, alternates)
        return self._set(settings, before_edit)

    def _set(self, settings: Mapping[str, str], before_edit: Callable[[str], None]) -> list[str]:
        """postconf -e the settings (backing main.cf up first); return a line per change."""
        if settings:
            before_edit(self.main_cf)
            self.postconf("-e", *(f"{key} = {value}" for key, value in settings.items()))
        return [f"{self.main_cf}: {key} = {value}" for key, value in settings.items()]

    def _deploy_sni(self, main: Mapping[str, str], pairs: Sequence[KeyAndChain],
                    server_names: Sequence[str], before_edit: Callable[[str], None],
                    created: Callable[[str], None]) -> list[str]:
        """Give each name the pairs in our SNI table, and name the table in main.cf."""
        settings = sni_map_settings(self.version(), self.sni_map_reference, main)
        current = read_text(self.sni_map)
        entries = parse_sni_map(current or "")
        entries.update({name.lower(): tuple(pairs) for name in server_names})
        text = render_sni_map(entries)
        changes = []
        if text != current:
            for path in (self.sni_map, self.sni_map + ".db"):
                (before_edit if os.path.exists(path) else created)(path)
            _write_private(self.sni_map, text)
            self.rebuild_sni_map()
            changes.append(f"{self.sni_map}: {', '.join(server_names)} -> "
                           f"{chain_files_value(pairs)}")
        return changes + self._set(settings, before_edit)

    def our_sni_entries(self, main: Mapping[str, str]) -> dict[str, tuple[KeyAndChain, ...]]:
        """Our SNI table's entries when main.cf uses it; other tables are the admin's."""
        if self.sni_map_reference not in split_tables(main.get(SNI_MAPS, "")):
            return {}
        return parse_sni_map(read_text(self.sni_map) or "")

    def sni_entries(self, server_names: Iterable[str]) -> dict[str, SniEntry]:
        """name -> the tls_server_sni_maps entry smtpd picks for clients asking for it (the
        name, then its parent domains with a leading dot, each in every table in order)."""
        tables = split_tables(self.main_parameters().get(SNI_MAPS, ""))
        entries = {}
        for name in server_names:
            found = next(((key, table) for key in lookup_keys(name) for table in tables
                          if self._lookup(key, table)), None)
            if found is None:
                continue
            key, table = found
            if table == self.sni_map_reference:
                entries[name] = SniEntry(name, True, self.sni_map)
                continue
            source = table.partition(":")[2]
            rebuild = f" and run `postmap -F {table}`" if table.startswith(
                _KEYED_SOURCES[:-1]) else ""
            entries[name] = SniEntry(
                name, False, f"{self._where(key, table)}: the entry for {key} in {table}",
                f"change it to `{key} {{key}}, {{chain}}`{rebuild}, or remove it"
                if source.startswith("/") else "point it at {key} and {chain}, or remove it")
        return entries

    def _lookup(self, key: str, table: str) -> bool:
        """postmap -q: whether the table has the key (exit status 1 without fatal: it has not)."""
        done = commands.status(["postmap", "-c", self.config_dir, "-q", key, table])
        if done.returncode != 0 and "fatal" in done.stderr:
            raise errors.PluginError(f"cannot look up {key} in {table} ({SNI_MAPS}): "
                                     f"{done.stderr.strip()}")
        return done.returncode == 0

    def _where(self, key: str, table: str) -> str:
        """The file and line of a table's entry, as far as its type tells."""
        kind, _, path = table.partition(":")
        if kind == "inline":
            return f"{self.main_cf} ({SNI_MAPS})"
        if kind not in _KEYED_SOURCES or not path.startswith("/"):
            return path if path.startswith("/") else table
        for number, line in enumerate((read_text(path) or "").splitlines(), 1):
            fields = line.split(None, 1)
            if fields and fields[0].lower() == key:
                return f"{path} line {number}"
        return path

    def prune(self, apply: bool) -> list[str]:
        """Our SNI table's entries and main.cf's default pairs that name files that are gone (a
        lineage removed by certbot delete), on which postmap -F and smtpd's file check would
        fail; dropped when apply (the table's .db rebuilt, a default pair served beside another
        taken out of smtpd_tls_chain_files)."""
        entries = parse_sni_map(read_text(self.sni_map) or "")
        stale_entries = gone_files(self.sni_map, entries)
        try:
            default_pairs = _credentials(self.main_parameters())
        except errors.PluginError:  # postconf cannot read the config: the config test says why
            default_pairs = ()
        default = default_without_gone(default_pairs)
        stale_default = gone_files(self.main_cf, {"smtpd_tls_chain_files": default_pairs}) \
            if default else []
        if apply and stale_entries:
            _write_private(self.sni_map, render_sni_map(without_missing(entries)))
            self.rebuild_sni_map()
        if apply and default:
            self.postconf("-e", f"smtpd_tls_chain_files = {chain_files_value(default)}")
        return stale_entries + stale_default

    def rebuild_sni_map(self) -> None:
        """postmap -F into a new .db, renamed over the old: smtpd never opens a half-built one."""
        building = self.sni_map + ".new"
        with open(self.sni_map, encoding="utf-8") as source:
            _write_private(building, source.read())
        try:
            commands.run(["postmap", "-c", self.config_dir, "-F", f"hash:{building}"])
            os.chmod(building + ".db", 0o600)  # it holds the private keys' contents
            os.replace(building + ".db", self.sni_map + ".db")
        finally:
            for leftover in (building, building + ".db"):
                if os.path.exists(leftover):
                    os.unlink(leftover)

    def config_test(self) -> None:
        """postfix check: catches a broken master.cf, not missing certificates (see checks)."""
        commands.run(["postfix", "-c", self.config_dir, "check"])

    def tls_listeners(self) -> list[TlsListener]:
        """The listeners whose served certificate we verify after a reload."""
        main = self.main_parameters()
        return tls_listeners(main, self.services(), self.our_sni_entries(main))

    def reload(self) -> None:
        """Rebuild our SNI table (renewed files), then postfix reload, or start when stopped."""
        if self.our_sni_entries(self.main_parameters()):
            self.rebuild_sni_map()
        running = commands.status(["postfix", "-c", self.config_dir, "status"]).returncode == 0
        command = "reload" if running else "start"
        commands.run(["postfix", "-c", self.config_dir, command])



def _write_private(path: str, text: str) -> None:
    """Write a file only root reads: our SNI table names keys, its .db holds them."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as text_file:
        text_file.write(text)
