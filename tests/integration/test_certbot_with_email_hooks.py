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
from cryptography import x509

CERTBOT = [str(Path(sys.executable).with_name("certbot"))]

#: certbot with one hook target taken away: ``certbot.util.enforce_domain_sanity`` (the name
#: certbot's SAN module already bound at import keeps DNS names working, as in a certbot whose
#: internals moved).
CERTBOT_WITHOUT_A_HOOK_TARGET = [sys.executable, "-c", textwrap.dedent("""
    import sys
    import certbot._internal.san, certbot.util
    del certbot.util.enforce_domain_sanity
    from certbot.main import main
    sys.exit(main(sys.argv[1:]))
""")]


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
    # --prepare: email-dns needs no option to prepare, so only a certbot whose internals our
    # hooks do not fit makes it refuse (the others want options or the system's servers).
    result = subprocess.run(
        [*CERTBOT, "plugins", "--prepare", "--config-dir", str(tmp_path / "config"),
         "--work-dir", str(tmp_path / "work"), "--logs-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    listed = dict(re.findall(r"^\* (\S+)\n(.*?)(?=^\* |\Z)", result.stdout,
                             re.MULTILINE | re.DOTALL))
    assert {"email-reply", "email-dns", "email-capability", "postfix", "dovecot",
            "mailserver"} <= listed.keys(), result.stdout
    assert "Obtain S/MIME certificates for email addresses" in \
        listed["email-reply"].replace("\n", " ")
    assert "Prep: True" in listed["email-dns"], listed["email-dns"]


def test_standalone_issuance_of_a_dns_name_is_unaffected(lab, tmp_path):
    cert = standalone_issue(lab, tmp_path, "mail.example.test")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert names.get_values_for_type(x509.RFC822Name) == []
    assert new_order_payloads(tmp_path)[-1]["identifiers"] == \
        [{"type": "dns", "value": "mail.example.test"}]
    listing = run_certbot(lab, tmp_path, "certificates")
    assert "Identifiers: mail.example.test\n" in listing.stdout


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
    assert "enforce_domain_sanity" in output


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
