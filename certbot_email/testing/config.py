"""Every setting of the test CA in one value, so the CLI, the server and tests share one shape."""
import dataclasses
import enum
from pathlib import Path
from typing import Optional


class ReplyJoining(enum.Enum):
    """Which RFC 8823 token joining the CA accepts (spec A1); ``EITHER`` is the default."""

    EITHER = "either"
    STRING = "string"
    BYTES = "bytes"


@dataclasses.dataclass
class MailSettings:
    """Where the CA sends challenge mail, signs it, and reads replies (email-reply-00)."""

    sender: str = "acme@example.test"
    reply_to: Optional[str] = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    local_hostname: str = "testca.localhost"
    dkim_selector: str = "testca"
    dkim_key: Optional[Path] = None
    imap_host: str = "127.0.0.1"
    imap_port: int = 143
    imap_tls: bool = False
    imap_user: Optional[str] = None
    imap_password: Optional[str] = None
    poll_seconds: float = 1.0
    token_lifetime_seconds: int = 24 * 3600
    send_on_post: bool = False
    joining: ReplyJoining = ReplyJoining.EITHER
    unsigned: bool = False
    omit_auto_submitted: bool = False
    smime: bool = False


@dataclasses.dataclass
class CAConfig:
    """Options of one test CA instance; see ``cli.build_parser`` for what each one means."""

    state_dir: Path
    listen_address: str = "127.0.0.1"
    port: int = 14000
    validity_days: int = 7
    dns_server: Optional[str] = None
    dns_port: int = 53
    http01_port: int = 80
    default_ports_only: bool = True
    dns_email_arrays: bool = False
    srv_for_any_method: bool = False
    service_port_overrides: dict[str, int] = dataclasses.field(default_factory=dict)
    retry_after_seconds: int = 1
    mail: MailSettings = dataclasses.field(default_factory=MailSettings)
