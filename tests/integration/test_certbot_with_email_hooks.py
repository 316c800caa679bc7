"""Stock certbot CLI with certbot-email installed, against the lab's Pebble.

DNS names must be unaffected by our hooks; a name with ``@`` must reach the CA as an RFC 8823
``email`` identifier (Pebble refuses that type, which proves what was sent); and a certbot
whose internals our hooks do not fit must keep working for everyone else.
"""
import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import certbot
from acme import crypto_util as acme_crypto_util
from cryptography import x509

CERTBOT = [str(Path(sys.executable).with_name("certbot"))]

#: certbot whose internals moved under one hook: acme's ``make_csr`` renamed its first
#: parameter (certbot passes it by position, so DNS names keep working).
CERTBOT_WITHOUT_A_HOOK_TARGET = [sys.executable, "-c", textwrap.dedent("""
    import sys
    from acme import crypto_util
    original = crypto_util.make_csr
    def make_csr(key_pem, domains=None, must_staple=False, ipaddrs=None):
        return original(key_pem, domains, must_staple, ipaddrs)
    crypto_util.make_csr = make_csr
    from certbot.main import main
    sys.exit(main(sys.argv[1:]))
""")]
#: The same certbot as if certbot-email were not installed: our entry points are not found.
CERTBOT_WITHOUT_US = [sys.executable, "-c", textwrap.dedent("""
    import importlib.metadata, sys
    every = importlib.metadata.entry_points
    def entry_points(**selection):
        return importlib.metadata.EntryPoints(
            point for point in every(**selection) if not point.value.startswith("certbot_email"))
    importlib.metadata.entry_points = entry_points
    from certbot.main import main
    sys.exit(main(sys.argv[1:]))
""")]
#: How ``certbot certificates`` labels a lineage's names (``Domains:`` before certbot 5.3).
NAMES_LABEL = r"(?:Identifiers|Domains): "


def run_certbot(lab, root: Path, *args: str, command=CERTBOT) -> subprocess.CompletedProcess:
    """One certbot run against the lab's Pebble with all state below root."""
    return subprocess.run([*command, *args, *lab.pebble.certbot_options(root), "-vv"],
                          env=lab.pebble.certbot_environment(), capture_output=True, text=True,
                          timeout=180, check=False)


def new_order_payloads(root: Path) -> list[dict]:
    """The JWS payloads certbot logged for its newOrder requests."""
    log = (root / "logs" / "letsencrypt.log").read_text()
    payloads = [json.loads(ast.literal_eval(literal) or b"null")
                for literal in re.findall(r"JWS payload:\n(b'.*?')\n", log)]
    return [p for p in payloads if isinstance(p, dict) and "identifiers" in p]


def standalone_issue(lab, root: Path, name: str, command=CERTBOT) -> x509.Certificate:
    """certonly --standalone over Pebble's real http-01 validation; returns the certificate."""
    result = run_certbot(lab, root, "certonly", "--standalone", "--preferred-challenges",
                         "http-01", "--http-01-port", str(lab.ports.http01), "-d", name,
                         command=command)
    assert result.returncode == 0, result.stderr
    pem = (root / "config" / "live" / name / "cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


def test_plugins_lists_every_plugin_of_ours_with_no_refusal(tmp_path):
    def plugins(*options: str) -> dict[str, str]:
        result = subprocess.run(
            [*CERTBOT, "plugins", *options, "--config-dir", str(tmp_path / "config"),
             "--work-dir", str(tmp_path / "work"), "--logs-dir", str(tmp_path / "logs")],
            capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0, result.stderr
        return dict(re.findall(r"^\* (\S+)\n(.*?)(?=^\* |\Z)", result.stdout,
                               re.MULTILINE | re.DOTALL))

    listed = plugins()
    assert {"email-reply", "email-dns", "email-capability", "postfix", "dovecot",
            "mailserver"} <= listed.keys(), listed
    assert "Obtain S/MIME certificates for email addresses" in \
        listed["email-reply"].replace("\n", " ")
    # --prepare: email-dns needs no option to prepare, so only a certbot whose internals our
    # hooks do not fit makes it refuse (the others want options, or the system's servers
    # configured: certbot hides an installer whose daemon has no config, such as Postfix
    # without main.cf).
    prepared = plugins("--prepare")
    assert "Prep: True" in prepared["email-dns"], prepared["email-dns"]
    assert "Prep: email-reply needs --email-reply-credentials PATH" in prepared["email-reply"]
    assert "Prep: --email-capability-service None" in prepared["email-capability"]


def test_standalone_issuance_of_a_dns_name_is_unaffected(lab, tmp_path):
    cert = standalone_issue(lab, tmp_path, "mail.example.test")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert names.get_values_for_type(x509.RFC822Name) == []
    assert new_order_payloads(tmp_path)[-1]["identifiers"] == \
        [{"type": "dns", "value": "mail.example.test"}]
    listing = run_certbot(lab, tmp_path, "certificates")
    assert re.search(NAMES_LABEL + "mail.example.test\n", listing.stdout), listing.stdout
    assert listing.stdout == run_certbot(lab, tmp_path, "certificates",
                                         command=CERTBOT_WITHOUT_US).stdout


def test_a_mailbox_is_sent_as_an_email_identifier_with_its_local_part_as_typed(lab, tmp_path):
    result = run_certbot(lab, tmp_path, "certonly", "--manual", "--preferred-challenges",
                         "dns-01", "--manual-auth-hook", "true", "-d", "Alice@Example.TEST")
    assert result.returncode != 0
    assert "unknown identifier type email" in result.stderr + result.stdout
    assert new_order_payloads(tmp_path)[-1]["identifiers"] == \
        [{"type": "email", "value": "Alice@example.test"}]


def test_missing_hook_target_leaves_other_plugins_working(lab, tmp_path):
    plugins = run_certbot(lab, tmp_path, "plugins", command=CERTBOT_WITHOUT_A_HOOK_TARGET)
    assert plugins.returncode == 0, plugins.stderr
    assert "* standalone" in plugins.stdout and "* email-reply" in plugins.stdout

    cert = standalone_issue(lab, tmp_path, "smtp.example.test",
                            command=CERTBOT_WITHOUT_A_HOOK_TARGET)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == ["smtp.example.test"]

    refused = run_certbot(lab, tmp_path, "certonly", "-a", "email-reply",
                          "-d", "alice@example.test", command=CERTBOT_WITHOUT_A_HOOK_TARGET)
    assert refused.returncode != 0
    output = refused.stderr + refused.stdout
    assert "email-reply plugin is not working" in output
    assert f"this is certbot {certbot.__version__}" in output
    assert "make_csr changed its signature" in output


def test_email_reply_is_only_offered_for_mailboxes(lab, tmp_path):
    result = run_certbot(lab, tmp_path, "certonly", "-a", "email-reply",
                         "-d", "mail.example.test")
    assert result.returncode != 0
    # Refused in prepare(), before the order, with the authenticators that do fit (issue 13),
    # instead of certbot's generic "does not support any combination of challenges".
    assert "-a email-reply certifies email addresses (S/MIME, -d alice@example.com), but " \
        "mail.example.test is a host name" in result.stderr + result.stdout
    assert "-a email-dns, -a email-capability" in result.stderr + result.stdout
    assert new_order_payloads(tmp_path) == []


def _replace_certificate(lineage_archive: Path, general_names: list) -> None:
    """Put a certificate with these SANs (same key, a CA of our own) in place of version 1."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = serialization.load_pem_private_key((lineage_archive / "privkey1.pem").read_bytes(),
                                             None)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "odd mail CA")])
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, public_key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=60)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    ca = build(ca_name, ca_key.public_key(), [(x509.BasicConstraints(True, None), True)])
    leaf = build(x509.Name([]), key.public_key(),
                 [(x509.SubjectAlternativeName(general_names), False)])
    (lineage_archive / "cert1.pem").write_bytes(leaf)
    (lineage_archive / "chain1.pem").write_bytes(ca)
    (lineage_archive / "fullchain1.pem").write_bytes(leaf + ca)


def test_a_lineage_with_a_mailbox_we_cannot_read_is_listed_and_renewed_as_without_us(
        lab, tmp_path):
    """Issue 11: an SmtpUTF8Mailbox that is no UTF8String made our name hook raise, and certbot
    skipped the lineage as unparseable, whatever plugin renews it."""
    name = "imap.example.test"
    standalone_issue(lab, tmp_path, name)
    ia5_mailbox = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.5.5.7.8.9"),
                                 b"\x16\x10bob@example.test")
    _replace_certificate(tmp_path / "config" / "archive" / name,
                         [x509.DNSName(name), ia5_mailbox])

    listing = run_certbot(lab, tmp_path, "certificates")
    assert listing.returncode == 0, listing.stderr
    assert "renewal configurations were invalid" not in listing.stdout + listing.stderr
    log = (tmp_path / "logs" / "letsencrypt.log").read_text()
    assert log.count("certbot-email cannot read the email addresses") == 1
    assert listing.stdout == run_certbot(lab, tmp_path, "certificates",
                                         command=CERTBOT_WITHOUT_US).stdout
    if not hasattr(acme_crypto_util, "get_names_from_subject_and_extensions"):
        # certbot <= 3.0 reads names from pyOpenSSL's text dump, which this otherName
        # garbles: certbot itself finds no name, with us or without, and cannot renew.
        assert re.search(NAMES_LABEL + "\n", listing.stdout), listing.stdout
        return
    assert re.search(NAMES_LABEL + re.escape(name) + "\n", listing.stdout), listing.stdout

    renewed = run_certbot(lab, tmp_path, "renew", "--force-renewal",
                          "--no-random-sleep-on-renew")
    assert renewed.returncode == 0, renewed.stderr
    cert = x509.load_pem_x509_certificate(
        (tmp_path / "config" / "archive" / name / "cert2.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == [name]
