"""BIND 9, authoritative for example.test, accepting TSIG-signed RFC 2136 updates of TXT records."""

from __future__ import annotations

import re
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig

from .config import render
from .ports import HOST
from .process import Daemon, LabError, poll_until, run

KEY_NAME = "acme-key"
KEY_ALGORITHM = "hmac-sha256"


class Bind(Daemon):
    """named -g, staying root: BIND drops CAP_DAC_OVERRIDE, so its dir must remain root's."""

    name = "bind"

    def __init__(self, workdir: Path, port: int, zone: str, extra_records: list[str]) -> None:
        super().__init__(workdir)
        self.host = HOST
        self.port = port
        self.zone = zone
        self.extra_records = extra_records
        self.key_name = KEY_NAME
        self.key_algorithm = KEY_ALGORITHM
        self.key_file = self.dir / f"{KEY_NAME}.conf"  # tsig-keygen's output, for `nsupdate -k`
        self.key_secret = ""  # base64, set by configure()

    def configure(self) -> None:
        self.key_file.touch(mode=0o600)
        self.key_file.write_text(run(["tsig-keygen", "-a", KEY_ALGORITHM, KEY_NAME]))
        match = re.search(r'secret "([^"]+)"', self.key_file.read_text())
        if match is None:
            raise LabError(f"no secret in {self.key_file}")
        self.key_secret = match.group(1)
        values = dict(dir=self.dir, zone=self.zone, port=self.port, key_name=KEY_NAME)
        render("named.conf", self.dir / "named.conf", **values)
        records = "\n".join(self.extra_records)
        render("zone", self.dir / f"{self.zone}.zone", **values, extra_records=records)

    def launch(self) -> None:
        self._spawn(["named", "-g", "-c", str(self.dir / "named.conf")])

    def wait_ready(self, deadline: float) -> None:
        poll_until(f"named on port {self.port}", self._answers_soa, deadline, self.alive)

    def _answers_soa(self) -> bool:
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        try:
            answer = dns.query.udp(query, HOST, port=self.port, timeout=0.5)
        except dns.exception.Timeout:
            return False
        return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        """The TSIG keyring for dns.update.UpdateMessage(zone, keyring=...)."""
        key = dns.tsig.Key(KEY_NAME, self.key_secret, KEY_ALGORITHM)
        return {key.name: key}

    def resolver(self) -> dns.resolver.Resolver:
        """A resolver that asks only this server (never the system resolver), without a cache."""
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [HOST]
        res.port = self.port
        res.lifetime = 5
        return res

    def txt(self, name: str) -> list[str]:
        """The TXT records at name (each one's strings joined), or [] when there is none."""
        try:
            answer = self.resolver().resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [b"".join(record.strings).decode() for record in answer]

    def dkimpy_dnsfunc(self, name: bytes, timeout: float = 5) -> bytes | None:
        """For dkim.verify(message, dnsfunc=...): fetch DKIM key records from this server."""
        try:
            answer = self.resolver().resolve(name.decode(), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)
