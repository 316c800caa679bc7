"""Pebble (Debian's /usr/bin/pebble): a real RFC 8555 ACME CA, validating via the lab's DNS."""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from pathlib import Path

from .ports import HOST, Ports
from .process import Daemon, poll_until

# Deterministic tests: no random validation sleeps, no rejected nonces, no reused authorizations.
ENVIRONMENT = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}


class Pebble(Daemon):
    """pebble -dnsserver <lab BIND>; without it, Pebble would ask the system resolver."""

    name = "pebble"

    def __init__(
        self,
        workdir: Path,
        ports: Ports,
        cert: tuple[Path, Path],
        ca_file: Path,
        client_tls: ssl.SSLContext,
        validity_seconds: int,
        always_valid: bool,
    ) -> None:
        super().__init__(workdir)
        self.ports = ports
        self.cert_file, self.key_file = cert
        self.ca_bundle = ca_file  # for REQUESTS_CA_BUNDLE: this CA signed Pebble's HTTPS listener
        self.client_tls = client_tls
        self.validity_seconds = validity_seconds
        self.always_valid = always_valid
        self.directory_url = f"https://{HOST}:{ports.acme}/dir"
        self.management_url = f"https://{HOST}:{ports.acme_management}"

    def configure(self) -> None:
        config = {
            "pebble": {
                "listenAddress": f"{HOST}:{self.ports.acme}",
                "managementListenAddress": f"{HOST}:{self.ports.acme_management}",
                "certificate": str(self.cert_file),
                "privateKey": str(self.key_file),
                "httpPort": self.ports.http01,
                "tlsPort": self.ports.tlsalpn01,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": self.validity_seconds,
            }
        }
        (self.dir / "pebble.json").write_text(json.dumps(config, indent=2))

    def launch(self) -> None:
        env = dict(ENVIRONMENT)
        if self.always_valid:
            env["PEBBLE_VA_ALWAYS_VALID"] = "1"
        config, dns_server = str(self.dir / "pebble.json"), f"{HOST}:{self.ports.dns}"
        self._spawn(["pebble", "-config", config, "-dnsserver", dns_server], env)

    def wait_ready(self, deadline: float) -> None:
        poll_until(f"pebble {self.directory_url}", self._serves_directory, deadline, self.alive)

    def _serves_directory(self) -> bool:
        return "newOrder" in self.directory()

    def _get(self, url: str) -> bytes:
        # no proxy handler: an https_proxy in the environment must not divert lab traffic
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.client_tls)
        )
        with opener.open(url, timeout=2) as response:
            body: bytes = response.read()
            return body

    def directory(self) -> dict[str, object]:
        """The ACME directory object."""
        directory: dict[str, object] = json.loads(self._get(self.directory_url))
        return directory

    def root_pem(self) -> str:
        """Pebble's root (a new one on every start), to verify the chains it issues."""
        return self._get(f"{self.management_url}/roots/0").decode()

    def intermediate_pem(self) -> str:
        """Pebble's intermediate certificate."""
        return self._get(f"{self.management_url}/intermediates/0").decode()

    def certbot_options(self, root: Path) -> list[str]:
        """certbot options for a non-interactive run against this Pebble, all state below root."""
        return [
            "--server", self.directory_url,
            "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
            "--config-dir", str(root / "config"),
            "--work-dir", str(root / "work"),
            "--logs-dir", str(root / "logs"),
        ]

    def certbot_environment(self) -> dict[str, str]:
        """os.environ for a certbot child: trusts Pebble's listener; no proxy can divert it."""
        env = {key: val for key, val in os.environ.items() if not key.lower().endswith("_proxy")}
        env["REQUESTS_CA_BUNDLE"] = str(self.ca_bundle)
        return env
