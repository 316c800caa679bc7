"""Dovecot: one drop-in file with the certificate settings, doveconf -x, reload, TLS listeners.

The parsing and deciding functions at the top are pure (they take doveconf's output); the
`Dovecot` class below runs doveconf, doveadm and dovecot for one dovecot.conf.
"""
import dataclasses
import fnmatch
import glob
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from certbot import errors

from certbot_email_smtpext import commands
from certbot_email_smtpext.checks import (
    KeyAndChain,
    default_without_gone,
    gone_files,
    read_text,
    without_missing,
)
from certbot_email_smtpext.listeners import SniEntry, TlsListener, TlsStart, connect_address

DEFAULT_CONFIG = "/etc/dovecot/dovecot.conf"
#: The file we own, next to dovecot.conf; the admin's dovecot.conf only gains one include of it.
DROPIN_NAME = "certbot-email.conf"
#: Dovecot 2.4's new config syntax: ssl_cert/ssl_key renamed, no `<` to read a file, etc.
SYNTAX_2_4_SINCE = (2, 4)
#: Login services that speak a protocol with STARTTLS, for listeners without ssl = yes.
_STARTTLS_BY_SERVICE = {"imap-login": TlsStart.IMAP, "pop3-login": TlsStart.POP3,
                        "submission-login": TlsStart.SMTP}
_SSL_ON = "ssl = yes"
_SETTING_LINE = re.compile(r"^\s*(\S+) =(.*)$")
_BLOCK_START = re.compile(r"^\s*(\S+)(?:\s+(.+?))?\s*\{$")
_INCLUDE = re.compile(r"^!include(?:_try)?\s+\"?([^\"]+?)\"?$")
#: doveconf's warning that a global setting (ours) does not reach a filter that set it earlier.
_EARLIER_FILTER = re.compile(
    r"won't change the setting inside an earlier filter at (\S+) line (\d+)")


@dataclasses.dataclass
class ConfigBlock:
    """A `kind name { ... }` section of doveconf output: its settings and nested blocks."""

    kind: str
    name: str
    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    blocks: list["ConfigBlock"] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class SettingNames:
    """What differs between Dovecot versions in the settings we write and read back (the one
    place that knows; setting_names() picks them by the installed version)."""

    cert: str
    key: str
    #: What precedes a file name in a certificate value: 2.3 reads `<file`, 2.4 a plain path.
    file_prefix: str
    alt_cert: str = "ssl_alt_cert"
    alt_key: str = "ssl_alt_key"
    #: doveconf -h path of a certificate setting: 2.4 files ssl_server_* under ssl_server/.
    query_prefix: str = ""
    #: doveconf -f key that applies a `local_name NAME { }` block.
    local_name_filter: str = "lname"
    #: 2.4 made imap_capability a boolean list (`"ATOM" = yes`) instead of a string.
    capability_boollist: bool = False


@dataclasses.dataclass
class Dropin:
    """What our drop-in sets: default pairs (a second one of another key type), SNI names' pairs."""

    default: tuple[KeyAndChain, ...] = ()
    local_names: dict[str, tuple[KeyAndChain, ...]] = dataclasses.field(default_factory=dict)
    enable_ssl: bool = False


@dataclasses.dataclass
class SourceBlock:
    """A `kind args { ... }` section as written in a config file: where, and what it sets."""

    file: str
    line: int
    end: int
    kind: str
    names: tuple[str, ...]
    enclosing: tuple[str, ...]
    settings: set[str]

    def __str__(self) -> str:
        return f"{self.file} line {self.line} (`{' '.join((self.kind, *self.names))} {{`)"


def scan_blocks(config_file: str, skip: Iterable[str] = ()) -> list[SourceBlock]:
    """Every block of dovecot.conf and the files it !includes (but skip), with file and line:
    doveconf shows the merged settings, not where they are written."""
    blocks: list[SourceBlock] = []
    _scan_file(config_file, {os.path.realpath(path) for path in skip}, [], blocks)
    return blocks


def _scan_file(path: str, skip: set[str], stack: list[SourceBlock],
               blocks: list[SourceBlock]) -> None:
    """Read one file into blocks; stack holds the blocks open where it was included (their
    settings are gathered in place, end is set on the closing brace)."""
    if os.path.realpath(path) in skip:
        return
    skip = skip | {os.path.realpath(path)}  # an include loop ends here
    for number, raw in enumerate((read_text(path) or "").splitlines(), 1):
        line = re.sub(r'(^|\s)#(?=(?:[^"]*"[^"]*")*[^"]*$).*$', "", raw).strip()  # not in ""
        include = _INCLUDE.match(line)
        if include:
            pattern = os.path.join(os.path.dirname(os.path.abspath(path)), include.group(1))
            for included in sorted(glob.glob(pattern)):
                _scan_file(included, skip, stack, blocks)
        elif line == "}" and stack:
            blocks.append(dataclasses.replace(stack.pop(), end=number))
        elif (start := _BLOCK_START.match(line)) and "=" not in line:
            names = tuple((start.group(2) or "").replace('"', " ").lower().split())
            enclosing = tuple(" ".join((block.kind, *block.names)) for block in stack)
            stack.append(SourceBlock(path, number, 0, start.group(1), names, enclosing, set()))
        elif stack and (setting := re.match(r"^([A-Za-z_]\w*)\s*=", line)):
            stack[-1].settings.add(setting.group(1))


def matches(pattern: str, name: str) -> bool:
    """Whether a local_name pattern (`*` a wildcard, as Dovecot matches) covers the name."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def _all_blocks(config: ConfigBlock) -> list[ConfigBlock]:
    """Every block of the tree, nested ones included."""
    return [block for child in config.blocks for block in (child, *_all_blocks(child))]


def parse_version(version_output: str) -> tuple[int, ...]:
    """`2.3.19.1 (9b53102964)` -> (2, 3, 19, 1)."""
    match = re.match(r"(\d+(?:\.\d+)*)", version_output.strip())
    if match is None:
        raise errors.PluginError(f"cannot read the Dovecot version from {version_output!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def setting_names(version: tuple[int, ...]) -> SettingNames:
    """ssl_cert = </path on 2.3, ssl_server_cert_file = /path on 2.4 and later."""
    if version >= SYNTAX_2_4_SINCE:
        return SettingNames("ssl_server_cert_file", "ssl_server_key_file", "",
                            "ssl_server_alt_cert_file", "ssl_server_alt_key_file",
                            query_prefix="ssl_server/", local_name_filter="local_name",
                            capability_boollist=True)
    return SettingNames("ssl_cert", "ssl_key", "<")


def parse_config(doveconf_output: str) -> ConfigBlock:
    """doveconf output (one setting or block opening per line) as a tree of blocks."""
    root = ConfigBlock("", "")
    stack = [root]
    for line in doveconf_output.splitlines():
        if line.strip() == "}":
            if len(stack) > 1:
                stack.pop()
            continue
        block = _BLOCK_START.match(line)
        if block:
            child = ConfigBlock(block.group(1), block.group(2) or "")
            stack[-1].blocks.append(child)
            stack.append(child)
            continue
        setting = _SETTING_LINE.match(line)
        if setting:
            stack[-1].settings[setting.group(1)] = setting.group(2).strip()
    return root


def render_dropin(names: SettingNames, dropin: Dropin) -> str:
    """The drop-in: default pairs, a `local_name` block per SNI name, ssl = yes if it was off."""
    lines = ["# Written by certbot-email (certbot installer); certbot rollback removes it."]
    lines += _pair_lines(names, dropin.default, "")
    for name, pairs in sorted(dropin.local_names.items()):
        if not re.fullmatch(r"[A-Za-z0-9*][A-Za-z0-9.*-]*", name):
            raise errors.PluginError(f"Dovecot cannot take {name!r} as a local_name: use the "
                                     "certificate's DNS names (IDNA A-labels)")
        lines += [f"local_name {name} {{", *_pair_lines(names, pairs, "  "), "}"]
    if dropin.enable_ssl:
        lines.append(_SSL_ON)
    return "\n".join(lines) + "\n"


def _pair_lines(names: SettingNames, pairs: Sequence[KeyAndChain], indent: str) -> list[str]:
    """cert/key settings for the first pair, alt_cert/alt_key for a second of another key type."""
    if len(pairs) > 2:
        raise errors.PluginError(f"Dovecot serves at most two certificates per name (ssl_cert and "
                                 f"ssl_alt_cert), not {len(pairs)}: name one alternate lineage")
    settings = zip(((names.cert, names.key), (names.alt_cert, names.alt_key)), pairs, strict=False)
    lines = []
    for (cert_setting, key_setting), pair in settings:
        for path in (pair.key_file, pair.chain_file):
            if "\n" in path or path != path.strip():
                raise errors.PluginError(f"Dovecot cannot read a file named {path!r}: rename the "
                                         "certbot config directory")
        lines += [f"{indent}{cert_setting} = {names.file_prefix}{pair.chain_file}",
                  f"{indent}{key_setting} = {names.file_prefix}{pair.key_file}"]
    return lines


def parse_dropin(text: str, names: SettingNames) -> Dropin:
    """Read our own drop-in back, so a deploy for one name keeps the others' settings."""
    config = parse_config(text)
    local_names = {block.name: credentials(block.settings, names) for block in config.blocks
                   if block.kind == "local_name"}
    return Dropin(credentials(config.settings, names), local_names,
                  config.settings.get("ssl") == "yes")


def turns_ssl_on(ssl_setting: str, current_dropin: str | None) -> bool:
    """Whether our drop-in sets ssl = yes: TLS was off, or our drop-in is what turned it on."""
    return ssl_setting == "no" or (current_dropin is not None
                                   and _SSL_ON in current_dropin.splitlines())


def includes(config_text: str, dropin_path: str) -> bool:
    """Whether dovecot.conf has an !include (or !include_try) line naming our drop-in."""
    names = {dropin_path, os.path.basename(dropin_path)}
    return any(match.group(2) in names for match in
               re.finditer(r"^\s*!include(_try)?\s+(\S+)\s*$", config_text, re.MULTILINE))


def credentials(settings: Mapping[str, str], names: SettingNames) -> tuple[KeyAndChain, ...]:
    """The key and chain files, then the alt ones; none when inline PEM or unset."""
    prefix = names.file_prefix
    pairs = []
    for cert_setting, key_setting in ((names.cert, names.key), (names.alt_cert, names.alt_key)):
        cert, key = settings.get(cert_setting, ""), settings.get(key_setting, "")
        if not all(value and value.startswith(prefix) for value in (cert, key)):
            break
        pairs.append(KeyAndChain(key[len(prefix):], cert[len(prefix):]))
    return tuple(pairs)


def tls_listeners(config: ConfigBlock, pairs: Sequence[KeyAndChain],
                  local_names: Mapping[str, tuple[KeyAndChain, ...]] | None = None,
                  ) -> list[TlsListener]:
    """inet listeners of enabled protocols with ssl = yes (implicit) or a STARTTLS-capable login.

    local_names: SNI name -> pairs (local_name blocks); each listener is also listed per name.
    """
    settings = config.settings
    if settings.get("ssl", "yes") == "no":
        return []
    protocols = enabled_protocols(config)
    default_host = re.split(r"[\s,]+", settings.get("listen", "*").strip())[0]
    listeners = []
    for service in config.blocks:
        protocol = service.settings.get("protocol", "")
        if service.kind != "service" or (protocol and protocol not in protocols):
            continue
        for listener in service.blocks:
            port = listener.settings.get("port", "0")
            if listener.kind != "inet_listener" or not port.isdigit() or int(port) == 0:
                continue
            if listener.settings.get("ssl") == "yes":
                start = TlsStart.IMPLICIT
            elif service.name in _STARTTLS_BY_SERVICE:
                start = _STARTTLS_BY_SERVICE[service.name]
            else:
                continue
            # an inet_listener's address is `address` in 2.3, `listen` in 2.4
            bound = listener.settings.get("listen", listener.settings.get("address", ""))
            address = re.split(r"[\s,]+", bound.strip())[0]
            default = TlsListener("dovecot", f"{service.name}/{listener.name}",
                                  connect_address(address or default_host), int(port), start,
                                  tuple(pairs))
            listeners.append(default)
            listeners += [default.for_server_name(name, named_pairs)
                          for name, named_pairs in sorted((local_names or {}).items())]
    return listeners


def enabled_protocols(config: ConfigBlock) -> list[str]:
    """`protocols = imap pop3`, or 2.4's boolean list `protocols { imap = yes }`."""
    listed = config.settings.get("protocols", "").split()
    return listed + [name for block in config.blocks if block.kind == "protocols"
                     for name, value in block.settings.items() if value == "yes"]


class Dovecot:
    """One Dovecot instance, named by its dovecot.conf (doveconf -c, doveadm -c, dovecot -c)."""

    name = "dovecot"
    executables: tuple[str, ...] = ("doveconf", "doveadm", "dovecot")

    def __init__(self, config_file: str) -> None:
        self.config_file = config_file
        self.config_dir = os.path.dirname(os.path.abspath(config_file))
        self.dropin = os.path.join(self.config_dir, DROPIN_NAME)

    def doveconf(self, *arguments: str) -> str:
        """doveconf for our dovecot.conf: the one reader of its settings."""
        return commands.run(["doveconf", "-c", self.config_file, *arguments],
                            self._earlier_filter)

    def _earlier_filter(self, warning: str) -> str | None:
        """doveconf's "won't change the setting inside an earlier filter" is a failure: that
        filter keeps its own certificate whatever we deploy. A local_name block is the
        exception: it serves its names by SNI, which deploy_cert and the SNI probes judge."""
        found = _EARLIER_FILTER.search(warning)
        if found is None:
            return None
        path = os.path.realpath(os.path.join(self.config_dir, found.group(1)))
        line = int(found.group(2))
        around = sorted((block for block in scan_blocks(self.config_file)
                         if os.path.realpath(block.file) == path
                         and block.line <= line <= block.end),
                        key=lambda block: block.end - block.line)
        if around and around[0].kind == "local_name":
            return None
        where = str(around[0]) if around else f"{path} line {line}"
        setting = re.search(r"Global setting (\S+)", warning)
        return (f"doveconf: the global {setting.group(1) if setting else 'setting'} of "
                f"{self.dropin} does not reach {where}, which sets its own, so its clients keep "
                "that certificate whatever certbot-email deploys; remove the certificate "
                "settings from that block, or set the certificate there yourself and use the "
                "installer's reload-only option")

    def sni_entries(self, server_names: Iterable[str]) -> dict[str, SniEntry]:
        """name -> the local_name block that clients asking for it (SNI) get, ours or the
        admin's (any file dovecot.conf includes); names without one are left out."""
        names = self.setting_names()
        ours = parse_dropin(read_text(self.dropin) or "", names).local_names
        certificate_settings = {names.cert, names.key, names.alt_cert, names.alt_key}
        admin_blocks = [block for block in scan_blocks(self.config_file, [self.dropin])
                        if block.kind == "local_name" and block.settings & certificate_settings]
        # what doveconf reads, for a block in a file the scan could not follow
        shown = [block.name for block in _all_blocks(parse_config(self.doveconf("-n")))
                 if block.kind == "local_name" and set(block.settings) & certificate_settings]
        fix = (f"set {names.cert} = {names.file_prefix}{{chain}} and {names.key} = "
               f"{names.file_prefix}{{key}} in that block, or delete the block")
        entries = {}
        for name in server_names:
            admin = [block for block in admin_blocks
                     if any(matches(pattern, name) for pattern in block.names)]
            unlocated = [block for block in shown
                         if any(matches(pattern, name) for pattern in block.split())]
            if not admin and name not in ours and unlocated:
                entries[name] = SniEntry(
                    name, False, f"a `local_name {unlocated[0]} {{` block that `doveconf -n` "
                    "shows (in a file not found from dovecot.conf's includes)", fix, False)
            elif admin:
                # only a top-level block of exactly this name merges with ours, and ours is later
                shadowable = not admin[0].enclosing and admin[0].names == (name,)
                if shadowable and name in ours and self._setting(names, names.cert, name) == \
                        f"{names.file_prefix}{ours[name][0].chain_file}":
                    entries[name] = SniEntry(name, True, self.dropin)
                    continue
                nested = f" inside `{' { '.join(admin[0].enclosing)} {{`" if admin[0].enclosing \
                    else ""
                entries[name] = SniEntry(name, False, f"{admin[0]}{nested}", fix, shadowable)
            elif name in ours:
                entries[name] = SniEntry(name, True, self.dropin)
        return entries

    def prune(self, apply: bool) -> list[str]:
        """Our drop-in's pairs that name files that are gone (a lineage removed by certbot
        delete), which would fail doveconf -x: local_name entries, and a default pair served
        beside another; dropped when apply."""
        current = read_text(self.dropin)
        if current is None:
            return []
        names = self.setting_names()
        dropin = parse_dropin(current, names)
        default = default_without_gone(dropin.default)
        stale = gone_files(self.dropin, {
            **{f"local_name {name}": pairs for name, pairs in dropin.local_names.items()},
            **({"the default certificate": dropin.default} if default else {})})
        if stale and apply:
            dropin.local_names = without_missing(dropin.local_names)
            dropin.default = default or dropin.default
            with open(self.dropin, "w", encoding="utf-8") as dropin_file:
                dropin_file.write(render_dropin(names, dropin))
        return stale

    def version(self) -> tuple[int, ...]:
        """The installed Dovecot's version, which decides the setting names and syntax."""
        return parse_version(commands.run(["dovecot", "--version"]))

    def setting_names(self) -> SettingNames:
        """The certificate setting names of the installed Dovecot."""
        return setting_names(self.version())

    def config(self) -> ConfigBlock:
        """The settings in force, as a tree, with every service and listener: 2.4's plain
        doveconf leaves out defaults (such as the standard imap and pop3 listeners), so the
        service blocks and the settings tls_listeners() reads come from a named query."""
        tree = parse_config(self.doveconf())
        full = parse_config(self.doveconf("listen", "protocols", "ssl", "service"))
        tree.settings.update(full.settings)
        tree.blocks = [block for block in tree.blocks
                       if block.kind not in ("service", "protocols")] + full.blocks
        return tree

    def names(self) -> set[str]:
        """The hostname setting, the name the default certificate should carry."""
        hostname = self.doveconf("-h", "hostname").strip()
        return {hostname} if hostname else set()

    def deploy(self, key_path: str, fullchain_path: str,
               before_edit: Callable[[str], None], created: Callable[[str], None],
               server_names: Sequence[str] = (),
               alternates: Sequence[KeyAndChain] = ()) -> list[str]:
        """Write our drop-in and include it from dovecot.conf once; return what changed.

        Without server_names the pairs become the default; with them, local_name blocks.
        """
        names = self.setting_names()
        current = read_text(self.dropin)
        dropin = parse_dropin(current or "", names)
        dropin.enable_ssl = turns_ssl_on(self.doveconf("-h", "ssl").strip(), current)
        pairs = (KeyAndChain(key_path, fullchain_path), *alternates)
        if server_names:
            dropin.local_names.update({name.lower(): pairs for name in server_names})
        else:
            dropin.default = pairs
        text = render_dropin(names, dropin)
        changes = []
        if current != text:
            if current is None:
                created(self.dropin)
            else:
                before_edit(self.dropin)
            with open(self.dropin, "w", encoding="utf-8") as dropin_file:
                dropin_file.write(text)
            what = f"local_name {', '.join(server_names)}" if server_names else names.cert
            changes.append(f"{self.dropin}: {what} -> {fullchain_path}")
        if self.include(self.dropin, before_edit):
            changes.append(f"{self.config_file}: !include_try {self.dropin}")
        scopes: list[str | None] = [*server_names] or [None]
        for name in scopes:
            effective = self._setting(names, names.cert, name)
            if effective != f"{names.file_prefix}{fullchain_path}":
                where = f"local_name {name} {{ {names.cert} }}" if name else names.cert
                raise errors.PluginError(
                    f"{self.config_file} still sets {where} = {effective} after our drop-in "
                    f"{self.dropin}: a later setting overrides it; move the !include_try line "
                    "to the end")
        return changes

    def include(self, path: str, before_edit: Callable[[str], None]) -> bool:
        """Append ``!include_try path`` to dovecot.conf unless it already includes the file
        (the one line of the admin's files we may touch); True when it was added."""
        config_text = read_text(self.config_file) or ""
        if includes(config_text, path):
            return False
        before_edit(self.config_file)
        with open(self.config_file, "a", encoding="utf-8") as config:
            config.write(("" if config_text.endswith("\n") else "\n") + f"!include_try {path}\n")
        return True

    def _setting(self, names: SettingNames, setting: str, local_name: str | None = None) -> str:
        """One certificate setting's value, for connections that ask for local_name by SNI
        when given."""
        scope = ("-f", f"{names.local_name_filter}={local_name}") if local_name else ()
        return self.doveconf(*scope, "-h", names.query_prefix + setting).strip()

    def config_test(self) -> None:
        """doveconf -x: unlike -n it opens every `<file`, so a missing certificate fails here."""
        self.doveconf("-x")

    def tls_listeners(self) -> list[TlsListener]:
        """The listeners whose served certificate we verify after a reload."""
        names = self.setting_names()
        config = self.config()
        local_names = {name: self._credentials(names, name)
                       for block in config.blocks if block.kind == "local_name"
                       for name in block.name.split() if "*" not in name}
        return tls_listeners(config, self._credentials(names), local_names)

    def _credentials(self, names: SettingNames,
                     local_name: str | None = None) -> tuple[KeyAndChain, ...]:
        """The pairs served by default, or to clients asking for local_name."""
        # plain doveconf hides the key settings ("# hidden, use -P"); -h shows a path, no secret
        settings = (names.cert, names.key, names.alt_cert, names.alt_key)
        return credentials({setting: self._setting(names, setting, local_name)
                            for setting in settings}, names)

    def reload(self) -> None:
        """doveadm reload when the master runs, dovecot (start) when it does not."""
        base_dir = self.doveconf("-h", "base_dir").strip()
        if _master_alive(os.path.join(base_dir, "master.pid")):
            commands.run(["doveadm", "-c", self.config_file, "reload"])
        else:
            commands.run(["dovecot", "-c", self.config_file])



def _master_alive(pid_file: str) -> bool:
    """Whether the pid file names a running process."""
    try:
        with open(pid_file, encoding="ascii") as pid_text:
            pid = int(pid_text.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True

