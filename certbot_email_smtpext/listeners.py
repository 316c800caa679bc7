"""TLS listeners of a mail daemon, read from its config: where to connect, what it should serve."""
import dataclasses
import enum

from certbot_email_smtpext.checks import KeyAndChain


class TlsStart(enum.Enum):
    """How a client starts TLS on a listener: at once, or with the protocol's STARTTLS command."""

    IMPLICIT = "implicit TLS"
    SMTP = "SMTP STARTTLS"
    IMAP = "IMAP STARTTLS"
    POP3 = "POP3 STLS"


@dataclasses.dataclass(frozen=True)
class TlsListener:
    """One TCP listener that offers TLS, and the key/chain pairs the daemon serves on it.

    server_name: the SNI name a client sends to get these pairs; None for the default pairs.
    """

    daemon: str
    service: str
    host: str
    port: int
    start: TlsStart
    credentials: tuple[KeyAndChain, ...]
    server_name: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        sni = f", SNI {self.server_name}" if self.server_name else ""
        return f"{self.daemon} {self.service} on {host}:{self.port} ({self.start.value}{sni})"

    def for_server_name(self, server_name: str,
                        credentials: tuple[KeyAndChain, ...]) -> "TlsListener":
        """The same listener as reached with SNI server_name, which selects other pairs."""
        return dataclasses.replace(self, credentials=credentials, server_name=server_name)


@dataclasses.dataclass(frozen=True)
class SniEntry:
    """The SNI entry a client asking for `name` gets: one of ours, or one the admin wrote.

    where: the file and line (or table) that holds it; fix: what the admin changes there, with
    `{key}` and `{chain}` standing for the files being deployed.
    shadowable: whether an entry of ours for the name would win over the admin's.
    """

    name: str
    ours: bool
    where: str
    fix: str = ""
    shadowable: bool = True


def connect_address(listen_address: str) -> str:
    """The loopback address to reach a listener bound to a wildcard, else the bound address."""
    address = listen_address.strip().strip("[]")
    if address in ("", "*", "0.0.0.0", "all", "loopback-only"):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address
