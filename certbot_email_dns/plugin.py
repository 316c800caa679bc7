"""certbot plugin layer of ``email-dns``: dns-01 and dns-email-00 TXT records over RFC 2136.

certbot imports every plugin module on every run, nginx renewals included, so the DNS layers
(dnspython, about 40 ms) are imported only inside the methods that talk DNS.
"""
import dataclasses
import logging
import re
import time
from typing import TYPE_CHECKING, Callable, Iterable, Optional, cast

import josepy as jose
from acme import challenges
from certbot import achallenges, configuration, errors
from certbot.display import util as display_util
from certbot.plugins import dns_common

from certbot_email import certbot_compat, preflight
from certbot_email.protocol import csr
from certbot_email.protocol.challenges import SERVICE_PORTS, DNSEmail00, DNSEmail00Response

if TYPE_CHECKING:
    import dns.name

    from certbot_email_dns import rfc2136

certbot_compat.install()

logger = logging.getLogger(__name__)

TTL = 60
DEFAULT_PROPAGATION_TIMEOUT = 120
DNS_PORT = 53
#: RFC 6335 §5.1 service names: 1-15 letters, digits and inner hyphens.
_SERVICE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,13}[a-z0-9])?$")
_CREDENTIALS_REQUIRED = {
    "server": "the DNS server to send updates to: an IP address or hostname, optionally :port",
    "name": "the TSIG key name, e.g. acme-key.",
    "secret": "the TSIG key secret (base64)",
}


@dataclasses.dataclass(frozen=True)
class Scope:
    """One service on one port that a dns-email-00 proof is for."""

    service: str
    port: int


@dataclasses.dataclass(frozen=True)
class Published:
    """A TXT value we added, and where, so cleanup deletes exactly it."""

    zone: "dns.name.Name"
    name: str
    value: str


def parse_scopes(services_text: Optional[str], ports_text: Optional[str],
                 arrays: bool) -> list[Scope]:
    """The (service, port) pairs from ``--email-dns-service``/``--email-dns-port``."""
    services = [part.strip().lower() for part in (services_text or "").split(",") if part.strip()]
    ports = [part.strip() for part in (ports_text or "").split(",") if part.strip()]
    if ports and not services:
        raise errors.MisconfigurationError("--email-dns-port needs --email-dns-service")
    if ports and len(ports) != len(services):
        raise errors.MisconfigurationError(
            f"--email-dns-port {ports_text!r} gives {len(ports)} port(s) for {len(services)} "
            f"service(s) in --email-dns-service {services_text!r}; give one port per service, "
            "in the same order, or none for the IANA defaults")
    if len(services) > 1 and not arrays:
        raise errors.MisconfigurationError(
            f"--email-dns-service {services_text!r} names several services: add "
            "--email-dns-arrays (the draft's experimental services/ports arrays; the CA must "
            "support them) or issue one certificate per service")
    scopes = []
    for index, service in enumerate(services):
        if not _SERVICE_NAME.match(service):
            raise errors.MisconfigurationError(
                f"--email-dns-service {service!r} is not an IANA service name (e.g. imaps, "
                "submission, smtp)")
        scopes.append(Scope(service, _scope_port(service, ports[index] if ports else None)))
    return scopes


def _scope_port(service: str, port_text: Optional[str]) -> int:
    """The given port, or the service's IANA port; MisconfigurationError if neither works."""
    if port_text is None:
        if service not in SERVICE_PORTS:
            raise errors.MisconfigurationError(
                f"--email-dns-service {service!r} has no known default port; give it with "
                "--email-dns-port")
        return SERVICE_PORTS[service]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise errors.MisconfigurationError(
            f"--email-dns-port {port_text!r} is not a TCP port (1-65535)")
    return int(port_text)


def parse_servers(text: str, option: str) -> list["rfc2136.Endpoint"]:
    """``host[:port],...`` as Endpoints; PluginError naming the option and the bad entry."""
    from certbot_email_dns import rfc2136
    servers = []
    for part in (part for part in text.split(",") if part.strip()):
        try:
            servers.append(rfc2136.resolve_endpoint(*rfc2136.parse_endpoint(part, DNS_PORT)))
        except (ValueError, rfc2136.RFC2136Error) as error:
            raise errors.PluginError(f"--email-dns-{option} {text!r}: {error}") from None
    return servers


class Authenticator(dns_common.DNSAuthenticator):
    """TXT records through RFC 2136 for dns-01 and scoped dns-email-00, checked before answering."""

    description = ("Obtain certificates with dns-01 or the scoped dns-email-00 (email TLS) by "
                   "RFC 2136 dynamic DNS updates, waiting until every nameserver serves them")

    def __init__(self, config: configuration.NamespaceConfig, name: str) -> None:
        super().__init__(config, name)
        self.credentials: Optional[dns_common.CredentialsConfiguration] = None
        self._client: Optional[rfc2136.RFC2136Client] = None
        self._scopes: list[Scope] = []
        self._published: dict[str, list[Published]] = {}

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None],  # pylint: disable=arguments-differ
                             default_propagation_seconds: int = 0) -> None:
        """Options; persisted in the renewal conf, so every one has a real type."""
        add("credentials", help="RFC 2136 credentials INI file (server, TSIG key name, secret, "
                                "algorithm); see README.rst, email-dns")
        add("propagation-timeout", type=int, default=DEFAULT_PROPAGATION_TIMEOUT,
            help="Seconds to wait for every nameserver of the zone to serve the new records")
        add("propagation-seconds", type=int, default=default_propagation_seconds,
            help="Extra seconds to wait after every nameserver serves the records (for anycast "
                 "or hidden secondaries)")
        add("check-servers", type=str, default=None,
            help="Comma-separated host[:port] list to check instead of the zone's NS records")
        add("nameserver-port", type=int, default=DNS_PORT,
            help="Port to query the zone's nameservers (from its NS records) on")
        add("cname-resolver", type=str, default=None,
            help="host[:port] of a resolver to look up CNAMEs of challenge names that the "
                 "update server does not serve (default: follow only the server's own CNAMEs)")
        add("service", type=str, default=None,
            help="dns-email-00: the service the certificate is for (e.g. imaps, submission); "
                 "comma-separated with --email-dns-arrays")
        add("port", type=str, default=None,
            help="dns-email-00: the service's port (default: its IANA port); comma-separated "
                 "with --email-dns-arrays")
        add("arrays", action="store_true", default=False,
            help="dns-email-00: prove several services in one response (the draft's open "
                 "'services'/'ports' arrays; experimental, the CA must support it)")
        add("srv-names", action="store_true", default=False,
            help="Also ask for RFC 4985 SRVName SANs (_service.host) for the services proven")

    def more_info(self) -> str:
        """Shown by ``certbot plugins``."""
        return ("Publishes dns-01 or dns-email-00 TXT records with TSIG-signed RFC 2136 updates, "
                "follows CNAMEs to the delegated name, and polls every authoritative server "
                "instead of sleeping.")

    def prepare(self) -> None:
        """Check the options, and ask for SRVName SANs before certbot makes the CSR."""
        certbot_compat.require_support()
        preflight.check_request(self.config, self.name, for_mailboxes=False)
        self._scopes = parse_scopes(self.conf("service"), self.conf("port"), self.conf("arrays"))
        if self.conf("srv-names"):
            if not self._scopes:
                raise errors.MisconfigurationError(
                    "--email-dns-srv-names needs --email-dns-service")
            hosts = csr.srv_name_hosts(str(name) for name in self.config.domains or ())
            certbot_compat.csr_profile.srv_names = [
                (scope.service, host) for host in hosts for scope in self._scopes]

    def get_chall_pref(self, identifier: str) -> Iterable[type[challenges.Challenge]]:
        """dns-email-00 first when a service is configured; dns-01 always."""
        return [DNSEmail00, challenges.DNS01] if self._scopes else [challenges.DNS01]

    def auth_hint(self, failed_achalls: list[achallenges.AnnotatedChallenge]) -> str:
        """Shown when the CA could not see our records."""
        return ("The CA could not see the TXT records that --authenticator email-dns published "
                "and checked on every nameserver of the zone. If the CA resolves the name "
                "differently (split-horizon DNS, anycast), raise --email-dns-propagation-seconds "
                "or list the servers the CA uses with --email-dns-check-servers.")

    def perform(self, achalls: list[achallenges.AnnotatedChallenge]
                ) -> list[challenges.ChallengeResponse]:
        """Publish every record, wait until every nameserver serves them, then answer."""
        from certbot_email_dns import rfc2136
        self._setup_credentials()
        try:
            responses = [self._publish(achall) for achall in achalls]
            self._wait_until_served()
        except rfc2136.RFC2136Error as error:
            raise errors.PluginError(str(error)) from None
        delay = self.conf("propagation-seconds")
        if delay:
            display_util.notify(f"Waiting {delay} more seconds (--email-dns-propagation-seconds)")
            time.sleep(delay)
        return responses

    def cleanup(self, achalls: list[achallenges.AnnotatedChallenge]) -> None:
        """Delete exactly the values we added for these challenges, even after a failure."""
        if self._client is None:
            return
        from certbot_email_dns import rfc2136
        for achall in achalls:
            for record in self._published.pop(achall.validation(achall.account_key), []):
                try:
                    self._client.delete_txt(record.zone, record.name, record.value)
                except rfc2136.RFC2136Error as error:
                    logger.error("Could not remove TXT %r at %s: %s; remove it by hand",
                                 record.value, record.name, error)

    def _publish(self, achall: achallenges.AnnotatedChallenge) -> challenges.ChallengeResponse:
        """Add the challenge's TXT record(s) at the (CNAME-followed) owner names."""
        from certbot_email_dns import rfc2136
        assert self._client is not None
        identifier = certbot_compat.challenge_identifier(achall)
        value = achall.validation(achall.account_key)
        chall = achall.chall
        if isinstance(chall, DNSEmail00):
            owners = [chall.validation_domain_name(identifier, scope.service, scope.port)
                      for scope in self._scopes]
            response = self._scoped_response(chall, achall.account_key)
        else:
            owners = [achall.validation_domain_name(identifier)]
            response = achall.response(achall.account_key)
        for owner in owners:
            name = self._client.follow_cnames(owner)
            zone = self._zone_for(name)
            # Remembered first: an update the server applied but whose answer was lost must
            # still be deleted; only a refusal says for sure that nothing was added.
            record = Published(zone, name, value)
            self._published.setdefault(value, []).append(record)
            try:
                self._client.add_txt(zone, name, value, TTL)
            except rfc2136.RFC2136RefusedError:
                self._published[value].remove(record)
                raise
            logger.info("Added TXT %r at %s (zone %s)", value, name, zone)
        return response

    def _scoped_response(self, chall: DNSEmail00, account_key: jose.JWK) -> DNSEmail00Response:
        """``{"service", "port"}``, or ``{"services", "ports"}`` with --email-dns-arrays."""
        if not self.conf("arrays"):
            scope = self._scopes[0]
            return cast(DNSEmail00Response,
                        chall.scoped_response(account_key, scope.service, scope.port))
        return DNSEmail00Response(
            key_authorization=chall.key_authorization(account_key),
            services=tuple(scope.service for scope in self._scopes),
            ports=tuple(scope.port for scope in self._scopes))

    def _zone_for(self, name: str) -> "dns.name.Name":
        """The zone from the credentials (for servers whose SOA answers mislead), else by SOA."""
        import dns.name
        assert self._client is not None and self.credentials is not None
        configured = self.credentials.conf("zone")
        if configured:
            return dns.name.from_text(configured)
        return self._client.find_zone(name)

    def _wait_until_served(self) -> None:
        """Poll the nameservers of each zone we changed until they serve our values."""
        from certbot_email_dns import propagation
        assert self._client is not None
        by_zone: dict[dns.name.Name, list[tuple[str, str]]] = {}
        for published in self._published.values():
            for record in published:
                by_zone.setdefault(record.zone, []).append((record.name, record.value))
        check_servers = self.conf("check-servers")
        port = self.conf("nameserver-port")
        if check_servers:
            hint = (f"Check the servers and ports in --email-dns-check-servers "
                    f"{check_servers!r}.")
        else:
            hint = (f"The servers come from the zone's NS records, asked on port {port}: if "
                    f"they listen on another port, give it with --email-dns-nameserver-port; "
                    f"to check other servers (a hidden primary, split horizon), list them with "
                    f"--email-dns-check-servers HOST[:PORT],...")
        for zone, pairs in by_zone.items():
            servers = (parse_servers(check_servers, "check-servers") if check_servers else
                       propagation.zone_nameservers(self._client, zone, port))
            display_util.notify(f"Waiting for {len(servers)} nameserver(s) of {zone} to serve "
                                f"{len(pairs)} record(s)")
            propagation.wait_until_served(servers, pairs, self.conf("propagation-timeout"),
                                          exchange=self._client.exchange,
                                          unreachable_hint=hint)

    def _setup_credentials(self) -> None:
        """Read the credentials INI (permission-checked) and build the update client."""
        self.credentials = self._configure_credentials(
            "credentials", "RFC 2136 credentials INI file", _CREDENTIALS_REQUIRED,
            self._validate_credentials)
        self._client = client_from_credentials(self.credentials, self.dest)
        resolver_text = self.conf("cname-resolver")
        if resolver_text:
            resolvers = parse_servers(resolver_text, "cname-resolver")
            if len(resolvers) != 1:
                raise errors.PluginError(f"--email-dns-cname-resolver {resolver_text!r}: give "
                                         "exactly one host[:port]")
            self._client.cname_resolver = resolvers[0]

    def _validate_credentials(self, credentials: dns_common.CredentialsConfiguration) -> None:
        """Reject a bad INI when certbot asks for it, before any DNS traffic."""
        client_from_credentials(credentials, self.dest, resolve=False)

    def _perform(self, domain: str, validation_name: str, validation: str) -> None:
        """Unused: perform() is overridden to check propagation instead of sleeping."""
        raise NotImplementedError

    def _cleanup(self, domain: str, validation_name: str, validation: str) -> None:
        """Unused: cleanup() is overridden to delete exactly what was published."""
        raise NotImplementedError


def client_from_credentials(credentials: dns_common.CredentialsConfiguration,
                            dest: Callable[[str], str], resolve: bool = True
                            ) -> "rfc2136.RFC2136Client":
    """The update client the INI describes; PluginError naming the bad key and file."""
    import dns.exception
    import dns.name

    from certbot_email_dns import rfc2136
    where = f"in credentials file {credentials.confobj.filename}"
    try:
        host, port = rfc2136.parse_endpoint(credentials.conf("server") or "", rfc2136.DNS_PORT)
    except ValueError as error:
        raise errors.PluginError(f"{dest('server')} {where}: {error}") from None
    port_text = credentials.conf("port")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise errors.PluginError(f"{dest('port')} = {port_text!r} {where} is not a port")
        port = int(port_text)
    algorithm_text = credentials.conf("algorithm") or rfc2136.DEFAULT_ALGORITHM
    try:
        algorithm = rfc2136.parse_algorithm(algorithm_text)
    except ValueError as error:
        raise errors.PluginError(f"{dest('algorithm')} {where}: {error}") from None
    if algorithm == rfc2136.ALGORITHMS["hmac-md5"]:
        logger.warning("%s = %s %s: HMAC-MD5 is obsolete; move the key to hmac-sha256",
                       dest("algorithm"), algorithm_text, where)
    key = rfc2136.TSIGKey(credentials.conf("name") or "", credentials.conf("secret") or "",
                          algorithm)
    try:
        key.keyring()
    except Exception as error:  # dnspython raises binascii/ValueError/DNSException here
        raise errors.PluginError(f"{dest('name')}/{dest('secret')} {where}: not a usable TSIG "
                                 f"key ({error}); the secret must be base64") from None
    zone = credentials.conf("zone")
    if zone:
        try:
            dns.name.from_text(zone)
        except dns.exception.DNSException as error:
            raise errors.PluginError(f"{dest('zone')} = {zone!r} {where}: {error}") from None
    sign_queries = (credentials.conf("sign_query") or "false").lower() in ("true", "yes", "1")
    if not resolve:
        return rfc2136.RFC2136Client(rfc2136.Endpoint(host, port, host), key)
    try:
        server = rfc2136.resolve_endpoint(host, port)
    except rfc2136.RFC2136Error as error:
        raise errors.PluginError(f"{dest('server')} {where}: {error}") from None
    return rfc2136.RFC2136Client(server, key, sign_queries=sign_queries)
