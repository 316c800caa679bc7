"""certbot-email-testca wired to a running Lab: it mails challenges as ca@example.test through
the port-25 listener, signs them with its own DKIM key (published in the lab zone), and reads
the replies from ca's mailbox. Used by the integration tests, the benchmarks and the demo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.query
import dns.rdata
import dns.update

from .lab import Lab
from .ports import HOST
from .process import LabError

TESTCA = str(Path(sys.executable).with_name("certbot-email-testca"))
CA_MAILBOX = "ca"
START_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class RunningTestCA:
    """What a client needs: the directory URL and the root to trust (REQUESTS_CA_BUNDLE)."""

    directory_url: str
    root: Path
    log: Path


def _relative(lab: Lab, name: str) -> str:
    """An owner name relative to the lab zone, whether given absolute (with or without the
    final dot) or relative."""
    return name.removesuffix(".").removesuffix(f".{lab.domain}")


def _send_update(lab: Lab, update: dns.update.UpdateMessage, what: str) -> None:
    if dns.query.tcp(update, HOST, port=lab.dns.port, timeout=10).rcode() != 0:
        raise LabError(f"the lab DNS refused to {what}")


def publish_txt(lab: Lab, name: str, value: str) -> None:
    """Replace the TXT record at name by TSIG update, in 250-byte strings."""
    update = dns.update.UpdateMessage(lab.domain, keyring=lab.dns.keyring())
    update.replace(_relative(lab, name), 60, "TXT",
                   " ".join(f'"{value[i:i + 250]}"' for i in range(0, len(value), 250)))
    _send_update(lab, update, f"publish {name}")


def remove_txt(lab: Lab, name: str) -> None:
    """Delete every TXT record at name, so that the session's zone stays as the lab made it."""
    update = dns.update.UpdateMessage(lab.domain, keyring=lab.dns.keyring())
    update.delete(_relative(lab, name), "TXT")
    _send_update(lab, update, f"remove {name}")


def _publish_dkim_record(lab: Lab, record_file: Path) -> None:
    """Publish the record the CA wrote: ``<selector>._domainkey.<domain>. TTL IN TXT "..."``."""
    owner, _ttl, _class, _type, strings = record_file.read_text(encoding="utf-8").split(None, 4)
    rdata = dns.rdata.from_text("IN", "TXT", strings)
    publish_txt(lab, owner, b"".join(rdata.strings).decode("ascii"))  # type: ignore[attr-defined]


@contextlib.contextmanager
def running_test_ca(lab: Lab, state: Path, *options: str) -> Iterator[RunningTestCA]:
    """Run the test CA's command line against the lab until the block ends."""
    ca = lab.user(CA_MAILBOX)
    state.mkdir(parents=True, exist_ok=True)
    password_file = state / "ca-imap-password"
    password_file.write_text(ca.password, encoding="utf-8")
    password_file.chmod(0o600)
    log = state / "testca.log"
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(
            [TESTCA, "--state-dir", str(state / "ca"), "--port", "0",
             "--dns-server", HOST, "--dns-port", str(lab.dns.port), "--mail-from", ca.address,
             "--smtp-port", str(lab.ports.smtp), "--imap-port", str(lab.ports.imaps),
             "--imap-tls", "--imap-user", ca.address,
             "--imap-password-file", str(password_file), *options],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (found := re.search(r"^directory: (\S+)$", log.read_text(), re.MULTILINE)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"certbot-email-testca did not start:\n{log.read_text()}")
            time.sleep(0.1)
        _publish_dkim_record(lab, state / "ca" / "dkim-record.txt")
        yield RunningTestCA(found.group(1), state / "ca" / "root.pem", log)
    finally:
        process.terminate()
        process.wait(timeout=START_TIMEOUT)


def mailbox_credentials(lab: Lab, user: str, path: Path,
                        transport: str = "imaps+submission", ca_file: bool = True) -> Path:
    """An email-reply credentials file for user's lab mailbox; ``transport`` picks the TLS
    modes, ``ca_file`` whether the lab's private CA is trusted."""
    account = lab.user(user)
    protocol = "pop3" if transport.startswith("pop3") else "imap"
    keys = {"mailbox_protocol": protocol, f"{protocol}_host": HOST,
            f"{protocol}_user": account.address, f"{protocol}_password": account.password}
    keys.update({
        "imaps+submission": {"imap_port": str(lab.ports.imaps),
                             "smtp_port": str(lab.ports.submission), "smtp_tls": "starttls"},
        "imap-starttls+submissions": {"imap_port": str(lab.ports.imap), "imap_tls": "starttls",
                                      "smtp_port": str(lab.ports.submissions)},
        "pop3s+submission": {"pop3_port": str(lab.ports.pop3s),
                             "smtp_port": str(lab.ports.submission), "smtp_tls": "starttls"},
        "pop3-stls+submissions": {"pop3_port": str(lab.ports.pop3), "pop3_tls": "starttls",
                                  "smtp_port": str(lab.ports.submissions)},
    }[transport])
    if ca_file:
        keys["ca_file"] = str(lab.ca_file)
    path.write_text("".join(f"{key} = {value}\n" for key, value in keys.items()))
    path.chmod(0o600)
    return path
