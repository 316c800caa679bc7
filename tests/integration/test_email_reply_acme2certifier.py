"""Stock certbot with email-reply against acme2certifier, an RFC 8823 CA we did not write.

acme2certifier mails its challenge as ca@example.test through the lab's submission port (so
OpenDKIM signs it) but without Auto-Submitted, so the run uses exactly one documented
relaxation, --email-reply-allow-no-auto-submitted; DKIM stays checked. ``certbot renew`` must
work from the saved configuration alone; the renewed certificate must be the S/MIME profile that
CA was configured with, and must sign mail that openssl accepts.
"""
import importlib.util
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.integration.a2c_server import running_acme2certifier
from tests.integration.smime import assert_signs_verifiable_mail
from tests.integration.test_email_reply_mail import ALICE
from tests.integration.test_email_reply_pkcs12 import email_reply_arguments, run_certbot
from tests.lab.lab import Lab
from tests.lab.testca import mailbox_credentials

#: The session's mailboxes are shared: start each test with empty INBOXes.
pytestmark = pytest.mark.usefixtures("fresh_mailboxes")



@pytest.fixture(name="acme2certifier_installed", autouse=True)
def fixture_acme2certifier_installed() -> None:
    """Without the test extra's acme2certifier: skip locally, fail in CI, as for lab servers."""
    if importlib.util.find_spec("acme2certifier") is None:
        reason = "acme2certifier is not installed: pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def test_certbot_certonly_gets_an_smime_certificate_from_acme2certifier(
        lab: Lab, tmp_path: Path) -> None:
    environment = {**os.environ, "REQUESTS_CA_BUNDLE": str(lab.ca_file)}
    with running_acme2certifier(lab, tmp_path / "acme2certifier") as a2c:
        credentials = mailbox_credentials(lab, "alice", tmp_path / "email-reply.ini")
        issued = run_certbot(tmp_path, tmp_path / "work", environment,
                             *email_reply_arguments(lab, credentials, a2c.directory_url),
                             "--email-reply-allow-no-auto-submitted")
        assert issued.returncode == 0, f"{issued.stderr}\n{a2c.log.read_text()[-4000:]}"
        lineage = tmp_path / "config" / "live" / ALICE
        first = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
        renewed = run_certbot(tmp_path, tmp_path / "work", environment, "renew",
                              "--force-renewal", "--no-random-sleep-on-renew")
        assert renewed.returncode == 0, f"{renewed.stderr}\n{a2c.log.read_text()[-4000:]}"
    assert "Auto-Submitted" in issued.stderr  # the relaxation is used, and said so
    renewal_conf = (tmp_path / "config" / "renewal" / f"{ALICE}.conf").read_text()
    assert "email_reply_allow_no_auto_submitted = True" in renewal_conf
    assert "allow_unsigned" not in renewal_conf  # DKIM was checked on both runs
    certificate = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    assert certificate.serial_number != first.serial_number
    issuer = x509.load_pem_x509_certificate(a2c.issuing_ca.read_bytes())
    certificate.verify_directly_issued_by(issuer)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.RFC822Name) == [ALICE]
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION])
    assert_signs_verifiable_mail(lineage, a2c.issuing_ca)
