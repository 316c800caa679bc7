"""The main job end to end, on loopback: an S/MIME certificate for alice@example.test.

Starts the lab's real BIND, Postfix, Dovecot and OpenDKIM and the project's test CA, runs
`certbot certonly -a email-reply -d alice@example.test` (certbot reads the CA's challenge mail
from alice's mailbox, checks its DKIM signature, replies through submission), then prints what
was issued. Nothing leaves the machine. Run through tools/demo.sh, which installs what it needs.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import HOST, Lab  # noqa: E402
from tests.lab.testca import mailbox_credentials, running_test_ca  # noqa: E402

ADDRESS = "alice@example.test"
CERTBOT = str(Path(sys.executable).with_name("certbot"))
PURPOSES = {ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
            ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
            ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def describe(certificate: x509.Certificate) -> list[str]:
    """The lines a mail admin wants to see: names, key usage, extended key usage, validity."""
    extensions = certificate.extensions
    names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    bits = [bit for bit in ("digital_signature", "content_commitment", "key_encipherment",
                            "key_agreement") if getattr(usage.value, bit)]
    mailboxes = names.get_values_for_type(x509.RFC822Name)
    return [
        f"subjectAltName:   {', '.join(f'rfc822Name:{name}' for name in mailboxes)}",
        f"keyUsage:         {', '.join(bits)}{' (critical)' if usage.critical else ''}",
        f"extendedKeyUsage: {', '.join(PURPOSES.get(p, p.dotted_string) for p in purposes)}",
        f"issuer:           {certificate.issuer.rfc4514_string()}",
        f"valid:            {certificate.not_valid_before_utc:%Y-%m-%d} to "
        f"{certificate.not_valid_after_utc:%Y-%m-%d}",
    ]


def main() -> int:
    """Start everything, issue, show, stop."""
    output = Path(tempfile.mkdtemp(prefix="certbot-email-demo-"))
    print("certbot-email demo: an S/MIME certificate for alice@example.test (RFC 8823)\n"
          "from certbot-email-testca, a local TEST CA, through real mail servers on loopback.")
    lab = Lab().start(pebble=False)
    try:
        print(f"lab up: BIND :{lab.ports.dns}, Postfix :{lab.ports.smtp}/:{lab.ports.submission}, "
              f"Dovecot IMAPS :{lab.ports.imaps}, OpenDKIM signing example.test")
        with running_test_ca(lab, output / "testca") as test_ca:
            print(f"test CA up: {test_ca.directory_url}")
            credentials = mailbox_credentials(lab, "alice", output / "alice-mailbox.ini")
            command = [
                CERTBOT, "certonly", "-a", "email-reply", "-d", ADDRESS,
                "--email-reply-credentials", str(credentials),
                "--email-reply-dkim-dns-server", f"{HOST}:{lab.dns.port}",
                "--server", test_ca.directory_url, "--non-interactive", "--agree-tos",
                "--register-unsafely-without-email", "--config-dir", str(output / "config"),
                "--work-dir", str(output / "work"), "--logs-dir", str(output / "logs")]
            print("$ " + " ".join(command[1:6]) + " ...", flush=True)
            result = subprocess.run(command, check=False,
                                    env={**os.environ, "REQUESTS_CA_BUNDLE": str(test_ca.root)})
            if result.returncode != 0:
                print(f"certbot failed; its log: {output / 'logs' / 'letsencrypt.log'}")
                return 1
    finally:
        lab.stop()
    live = output / "config" / "live" / ADDRESS
    certificate = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    print(f"\nissued {live / 'cert.pem'}:")
    for line in describe(certificate):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
