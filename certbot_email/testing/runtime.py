"""Assembling one running test CA from a ``CAConfig``: used by the CLI and by tests alike."""
import ipaddress
import logging
import ssl
from typing import Optional

from certbot_email.testing import issuance, mailer, validators
from certbot_email.testing.authority import TestCA
from certbot_email.testing.config import CAConfig
from certbot_email.testing.mailbox import MailboxReader
from certbot_email.testing.model import Store
from certbot_email.testing.server import CAServer, RunningServer

logger = logging.getLogger(__name__)
SERVER_CERT_FILE, SERVER_KEY_FILE = "https-chain.pem", "https-key.pem"
DKIM_RECORD_FILE = "dkim-record.txt"
DKIM_RECORD_TTL = 300
#: RFC 1035 §3.3: one <character-string> of a TXT record holds at most 255 bytes.
TXT_STRING_BYTES = 255
SMIME_CERT_FILE, SMIME_KEY_FILE = "smime-sender.pem", "smime-sender-key.pem"


class LaunchedCA:
    """A serving CA with its optional mailbox reader; ``stop()`` ends both."""

    def __init__(self, ca: TestCA, running: RunningServer,
                 reader: Optional[MailboxReader], dkim_record: str) -> None:
        self.ca = ca
        self.running = running
        self.reader = reader
        self.dkim_record = dkim_record

    @property
    def directory_url(self) -> str:
        """Where ACME clients start."""
        return self.running.directory_url

    @property
    def root_path(self) -> str:
        """The root certificate file clients trust (HTTPS and issued certificates)."""
        return str(self.ca.authority.root_path)

    def stop(self) -> None:
        """Stop the reader, the HTTP server and the workers."""
        if self.reader is not None:
            self.reader.stop()
        self.running.stop()
        self.ca.shutdown()


def _tls_context(authority: issuance.Authority, config: CAConfig) -> ssl.SSLContext:
    """Server TLS context with a certificate for the listen address from the CA's own root."""
    chain, key = authority.server_certificate(config.listen_address)
    chain_path = config.state_dir / SERVER_CERT_FILE
    key_path = config.state_dir / SERVER_KEY_FILE
    chain_path.write_bytes(chain)
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_path, key_path)
    return context


def _smime_signer(authority: issuance.Authority, config: CAConfig) -> mailer.SmimeSigner:
    """Issue the sender's own S/MIME certificate and write what openssl needs to sign with it."""
    cert, key = authority.mailbox_identity(config.mail.sender)
    signer = mailer.SmimeSigner(config.state_dir / SMIME_CERT_FILE,
                                config.state_dir / SMIME_KEY_FILE,
                                config.state_dir / issuance.INTERMEDIATE_FILE)
    signer.certificate.write_bytes(cert)
    signer.key.write_bytes(key)
    signer.key.chmod(0o600)
    return signer


def txt_record_line(owner: str, value: str) -> str:
    """``owner TTL IN TXT "..." "..."``: a zone-file line that nsupdate's ``update add`` takes
    as it is, the value split into strings of at most 255 bytes (DKIM joins them, RFC 6376
    §3.6.2.2). The value must be plain ASCII without quotes, as a DKIM key record is."""
    strings = " ".join(f'"{value[start:start + TXT_STRING_BYTES]}"'
                       for start in range(0, len(value), TXT_STRING_BYTES))
    return f"{owner} {DKIM_RECORD_TTL} IN TXT {strings}\n"


def require_loopback(config: CAConfig) -> None:
    """Refuse any server address that is not loopback: the test CA never leaves this host."""
    hosts = {"--listen-address": config.listen_address, "--dns-server": config.dns_server,
             "--smtp-host": config.mail.smtp_host, "--imap-host": config.mail.imap_host}
    for option, host in hosts.items():
        if host is None or host == "localhost":
            continue
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{option} {host!r} is not a loopback address; the test CA only "
                             "talks to servers on this host")


def launch(config: CAConfig) -> LaunchedCA:
    """Create or load the CA's keys, bind the HTTPS listener, start the mailbox reader."""
    require_loopback(config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    authority = issuance.Authority(config.state_dir, config.validity_days)
    network = validators.Network(config.dns_server, config.dns_port,
                                 config.service_port_overrides, config.http01_port,
                                 config.mail.local_hostname)
    key_pem = mailer.load_or_create_dkim_key(config.state_dir, config.mail.dkim_key)
    record = mailer.dkim_txt_record(key_pem)
    owner = f"{config.mail.dkim_selector}._domainkey.{config.mail.sender.rpartition('@')[2]}."
    (config.state_dir / DKIM_RECORD_FILE).write_text(txt_record_line(owner, record))
    outgoing = mailer.Mailer(config.mail, key_pem, _smime_signer(authority, config)
                             if config.mail.smime else None)
    ca = TestCA(config, Store(), authority, network, outgoing.send)
    server = CAServer((config.listen_address, config.port), ca, _tls_context(authority, config))
    reader = None
    if config.mail.imap_user:
        reader = MailboxReader(config.mail, ca.handle_reply)
        reader.start()
    logger.info("test CA serving on %s:%d", *server.server_address[:2])
    return LaunchedCA(ca, RunningServer(server), reader, record)
