"""Postfix: read main.cf and master.cf through postconf, set the certificate, test, reload.

The parsing and deciding functions at the top are pure (they take postconf's output); the
`Postfix` class below runs postconf and postfix for one config directory.
"""
import dataclasses
import logging
import os
import re
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence

from certbot import errors

from certbot_email_smtpext.checks import KeyAndChain, pair_chain_files
from certbot_email_smtpext.listeners import TlsListener, TlsStart, connect_address

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = "/etc/postfix"
#: Postfix reads key and chain from one list since 3.4; older ones need cert_file and key_file.
CHAIN_FILES_SINCE = (3, 4)
#: The main.cf keys that decide which certificate smtpd serves; a master.cf -o of one wins.
CERTIFICATE_KEYS = ("smtpd_tls_chain_files", "smtpd_tls_cert_file", "smtpd_tls_key_file")
SECURITY_LEVEL = "smtpd_tls_security_level"
#: Commands that answer SMTP on an inet service (postscreen hands STARTTLS to tlsproxy).
_SMTP_SERVERS = ("smtpd", "postscreen")
_PARAMETER_LINE = re.compile(r"^(\S+) =(.*)$")


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


def certificate_settings(version: tuple[int, ...], key_path: str, fullchain_path: str,
                         main: Mapping[str, str]) -> dict[str, str]:
    """main.cf values that make smtpd serve this key and full chain (and offer TLS if off)."""
    if version >= CHAIN_FILES_SINCE:
        settings = {"smtpd_tls_chain_files": f"{key_path}, {fullchain_path}"}
    else:
        settings = {"smtpd_tls_cert_file": fullchain_path, "smtpd_tls_key_file": key_path}
    if _security_level(main) == "none":
        settings[SECURITY_LEVEL] = "may"
    return {key: value for key, value in settings.items() if main.get(key) != value}


def certificate_overrides(services: Sequence[MasterService]) -> list[str]:
    """master.cf -o overrides of the certificate keys: those listeners keep their own."""
    return [f"master.cf service {service.service}/{service.type} sets -o {key}={value}"
            for service in services if service.command in _SMTP_SERVERS
            for key, value in service.overrides.items() if key in CERTIFICATE_KEYS]


def tls_listeners(main: Mapping[str, str], services: Sequence[MasterService]) -> list[TlsListener]:
    """Every inet SMTP service that offers TLS (wrapper mode or STARTTLS), with its certificate."""
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
        listeners.append(TlsListener("postfix", service.service, host, port, start,
                                     _credentials(parameters)))
    return listeners


def _security_level(parameters: Mapping[str, str]) -> str:
    """The effective smtpd_tls_security_level, honouring the legacy use_tls/enforce_tls switches."""
    level = parameters.get(SECURITY_LEVEL, "")
    if level:
        return level
    if parameters.get("smtpd_enforce_tls") == "yes":
        return "encrypt"
    return "may" if parameters.get("smtpd_use_tls") == "yes" else "none"


def _service_address(service: str, parameters: Mapping[str, str]) -> tuple[str, int]:
    """Where to connect to a master.cf inet service: `[host]:port`, `host:port` or `port`."""
    host, _, port_name = service.rpartition(":")
    if not host:
        host = re.split(r"[\s,]+", parameters.get("inet_interfaces", "all").strip())[0]
        if host in ("all", "loopback-only") and parameters.get("inet_protocols") == "ipv6":
            host = "::"
    if port_name.isdigit():
        return connect_address(host), int(port_name)
    try:
        return connect_address(host), socket.getservbyname(port_name, "tcp")
    except OSError:
        raise errors.PluginError(f"master.cf service {service!r}: {port_name!r} is not a port "
                                 "number or a service name in /etc/services") from None


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
    executables: tuple[str, ...] = ("postconf", "postfix")

    def __init__(self, config_dir: str) -> None:
        self.config_dir = config_dir
        self.main_cf = os.path.join(config_dir, "main.cf")

    def _run(self, argv: list[str]) -> str:
        """Run a Postfix tool; a failure becomes a PluginError that shows its output."""
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              check=False)
        if done.returncode != 0:
            raise errors.PluginError(f"`{' '.join(argv)}` failed with exit status "
                                     f"{done.returncode}: {(done.stderr or done.stdout).strip()}")
        for line in done.stderr.splitlines():
            logger.info("%s: %s", argv[0], line)
        return done.stdout

    def _postconf(self, *arguments: str) -> str:
        """postconf for our config directory."""
        return self._run(["postconf", "-c", self.config_dir, *arguments])

    def main_parameters(self) -> dict[str, str]:
        """Every main.cf parameter with defaults and $name expansion (postconf -x)."""
        return parse_parameters(self._postconf("-x"))

    def services(self) -> list[MasterService]:
        """master.cf entries with their -o overrides."""
        return parse_services(self._postconf("-M"), self._postconf("-x", "-P"))

    def version(self) -> tuple[int, ...]:
        """The running Postfix's version, from mail_version."""
        return parse_version(self._postconf("-h", "mail_version"))

    def names(self) -> set[str]:
        """myhostname and mydomain, the names a certificate for this server should carry."""
        main = self.main_parameters()
        return {main[key] for key in ("myhostname", "mydomain") if main.get(key)}

    def deploy(self, key_path: str, fullchain_path: str,
               before_edit: Callable[[str], None], created: Callable[[str], None]) -> list[str]:
        """Point main.cf at the key and full chain through postconf -e; return what changed."""
        del created  # main.cf always exists
        main = self.main_parameters()
        for override in certificate_overrides(self.services()):
            logger.warning("%s: that listener keeps its own certificate and is verified against it",
                           override)
        settings = certificate_settings(self.version(), key_path, fullchain_path, main)
        if settings:
            before_edit(self.main_cf)
            self._postconf("-e", *(f"{key} = {value}" for key, value in settings.items()))
        return [f"{self.main_cf}: {key} = {value}" for key, value in settings.items()]

    def config_test(self) -> None:
        """postfix check: catches a broken master.cf, not missing certificates (see checks)."""
        self._run(["postfix", "-c", self.config_dir, "check"])

    def tls_listeners(self) -> list[TlsListener]:
        """The listeners whose served certificate we verify after a reload."""
        return tls_listeners(self.main_parameters(), self.services())

    def reload(self) -> None:
        """postfix reload when the master runs, postfix start when it does not."""
        status = subprocess.run(["postfix", "-c", self.config_dir, "status"], capture_output=True,
                                stdin=subprocess.DEVNULL, check=False)
        command = "reload" if status.returncode == 0 else "start"
        self._run(["postfix", "-c", self.config_dir, command])
