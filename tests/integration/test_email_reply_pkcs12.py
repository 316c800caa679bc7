"""certbot-email-pkcs12 as certbot's deploy hook: a bundle on issue, a new bundle on renewal.

The real certbot CLI gets alice's certificate from the project's test CA through the lab's mail
servers, with the hook given on the command line; ``certbot renew`` must run it again from the
renewal configuration alone.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from certbot_email.pkcs12_hook import BUNDLE_NAME
from tests.integration.test_email_reply_mail import ALICE, CERTBOT, LOOKBACK
from tests.lab.lab import Lab
from tests.lab.ports import HOST
from tests.lab.testca import mailbox_credentials, running_test_ca

#: The session's mailboxes are shared: start each test with empty INBOXes.
pytestmark = pytest.mark.usefixtures("fresh_mailboxes")

HOOK = "certbot-email-pkcs12"
PASSWORD = "bundle-secret"
CERTBOT_TIMEOUT = 180


def run_certbot(config_root: Path, work_dir: Path, environment: dict[str, str],
                *arguments: str) -> subprocess.CompletedProcess[str]:
    """certbot non-interactively, with every directory under this test's own root."""
    return subprocess.run(
        [CERTBOT, *arguments, "--non-interactive", "--config-dir", str(config_root / "config"),
         "--work-dir", str(work_dir), "--logs-dir", str(config_root / "logs")],
        env=environment, capture_output=True, text=True, timeout=CERTBOT_TIMEOUT, check=False)


def email_reply_arguments(lab: Lab, credentials: Path, directory: str) -> list[str]:
    """certonly for alice with the email-reply plugin reading her lab mailbox."""
    return ["certonly", "-a", "email-reply", "-d", ALICE, "--server", directory, "--agree-tos",
            "--register-unsafely-without-email", "--email-reply-credentials", str(credentials),
            "--email-reply-dkim-dns-server", f"{HOST}:{lab.dns.port}",
            "--email-reply-lookback-seconds", str(int(LOOKBACK.total_seconds()))]


def bundled_certificate(lineage: Path) -> x509.Certificate:
    """The certificate in the lineage's bundle, which must open with the password."""
    bundle = pkcs12.load_pkcs12((lineage / BUNDLE_NAME).read_bytes(), PASSWORD.encode())
    assert bundle.key is not None and bundle.cert is not None
    return bundle.cert.certificate


def test_deploy_hook_writes_the_bundle_on_issue_and_renewal(lab: Lab, tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    password_file = tmp_path / "p12-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    hook = f"{HOOK} --password-file {password_file}"
    with running_test_ca(lab, tmp_path / "testca") as test_ca:
        environment = {**os.environ,
                       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                       "REQUESTS_CA_BUNDLE": str(test_ca.root)}
        credentials = mailbox_credentials(lab, "alice", tmp_path / "email-reply.ini")
        issued = run_certbot(tmp_path, work_dir, environment,
                             *email_reply_arguments(lab, credentials, test_ca.directory_url),
                             "--deploy-hook", hook)
        assert issued.returncode == 0, issued.stderr
        lineage = tmp_path / "config" / "live" / ALICE
        first = bundled_certificate(lineage)
        assert first == x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
        assert (lineage / BUNDLE_NAME).stat().st_mode & 0o777 == 0o600
        renewed = run_certbot(tmp_path, work_dir, environment, "renew", "--force-renewal",
                              "--no-random-sleep-on-renew")
        assert renewed.returncode == 0, renewed.stderr
    second = bundled_certificate(lineage)
    assert second != first
    assert second == x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    renewal_conf = (tmp_path / "config" / "renewal" / f"{ALICE}.conf").read_text()
    assert f"renew_hook = {hook}" in renewal_conf
