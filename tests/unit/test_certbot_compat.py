"""The hooks that carry mailboxes through stock certbot, and that they leave DNS names alone."""
import datetime
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from acme import crypto_util as acme_crypto_util
from acme import messages
from certbot import errors, util
from certbot._internal import storage
from certbot.tests import util as certbot_test_util
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certbot_email import certbot_compat
from certbot_email.protocol import csr
from certbot_email.protocol.csr import MailboxKeyUsage
from certbot_email.protocol.identifiers import IDENTIFIER_EMAIL

certbot_compat.install()

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())


def _original(name):
    """The certbot/acme function our hook wraps (closure cell of the wrapper)."""
    hook = getattr(acme_crypto_util, name)
    assert getattr(hook, "__certbot_email_hook__", False)
    return next(cell.cell_contents for cell in hook.__closure__
                if callable(cell.cell_contents) and cell.cell_contents.__name__ == name)


#: The acme function this certbot reads every certificate's and CSR's names through (H4).
NAME_READER = next(name for name, _, _ in certbot_compat._NAME_READERS
                   if hasattr(acme_crypto_util, name))


def _read_names(cert_or_csr, reader=None):
    """The DNS names (ours: and mailboxes) this certbot reads from a certificate or CSR, by
    the function certbot calls for that, in its shape."""
    reader = reader or getattr(acme_crypto_util, NAME_READER)
    if NAME_READER == "get_identifiers_from_x509":
        return reader(cert_or_csr.subject, cert_or_csr.extensions)[0]
    if NAME_READER == "get_names_from_subject_and_extensions":
        return reader(cert_or_csr.subject, cert_or_csr.extensions)
    from OpenSSL import crypto
    loaded = (crypto.X509 if isinstance(cert_or_csr, x509.Certificate) else crypto.X509Req)
    return reader(loaded.from_cryptography(cert_or_csr))


def _names_without_us(cert_or_csr):
    """What this certbot reads with H4 taken out."""
    return _read_names(cert_or_csr, _original(NAME_READER))


def _self_signed(general_names, subject=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject or x509.Name([])).issuer_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test issuer")]))
        .public_key(KEY.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False))
    return builder.sign(KEY, hashes.SHA256())


@pytest.fixture(autouse=True)
def fresh_csr_profile(monkeypatch):
    monkeypatch.setattr(certbot_compat, "csr_profile", certbot_compat.CsrProfile())


def test_every_hook_installed_on_this_certbot():
    assert certbot_compat.unsupported_reason() is None
    certbot_compat.require_support()


@pytest.mark.parametrize("domains, must_staple", [
    (["mail.example.test"], False), (["mail.example.test", "*.example.test"], True)])
def test_make_csr_is_byte_identical_for_dns_names(domains, must_staple):
    assert acme_crypto_util.make_csr(KEY_PEM, domains, must_staple) == \
        _original("make_csr")(KEY_PEM, domains, must_staple)


def test_identifiers_from_dns_certificate_are_unchanged():
    cert = _self_signed([x509.DNSName("mail.example.test"), x509.DNSName("example.test")],
                        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                                      "mail.example.test")]))
    assert _read_names(cert) == _names_without_us(cert) == ["mail.example.test", "example.test"]


def test_mailboxes_of_a_certificate_are_read_after_its_dns_names():
    cert = _self_signed([x509.RFC822Name("alice@example.test"), x509.DNSName("example.test")])
    assert _read_names(cert) == ["example.test", "alice@example.test"]


def test_a_mailbox_that_cannot_be_read_leaves_certbot_its_own_names(caplog):
    """Issue 11: an SmtpUTF8Mailbox that is no UTF8String (here an IA5String) made H4 raise,
    so certbot skipped that lineage, whatever plugin it uses."""
    ia5_mailbox = x509.OtherName(csr.OID_SMTP_UTF8_MAILBOX, b"\x16\x10bob@example.test")
    cert = _self_signed([x509.DNSName("mail.example.test"), ia5_mailbox,
                         x509.RFC822Name("alice@example.test")])
    # certbot <= 3.0 parses pyOpenSSL's text dump, which this otherName garbles: it loses all.
    certbots_own = [] if NAME_READER == "_pyopenssl_cert_or_req_all_names" \
        else ["mail.example.test"]
    with caplog.at_level(logging.WARNING, logger="certbot_email.certbot_compat"):
        for _ in range(3):  # renewal reads a lineage's names several times
            assert _read_names(cert) == _names_without_us(cert) == certbots_own
    warnings = [r.getMessage() for r in caplog.records if r.name == "certbot_email.certbot_compat"]
    assert len(warnings) == 1
    assert "cannot read the email addresses of the certificate or CSR with names " \
        f"[{', '.join(certbots_own)}] (ValueError: unexpected ASN.1 type in otherName)" \
        in warnings[0]


def test_mailbox_csr_has_rfc822name_and_no_dns_name():
    pem = acme_crypto_util.make_csr(KEY_PEM, ["alice@example.test"])
    request = x509.load_pem_x509_csr(pem)
    names = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [x509.RFC822Name("alice@example.test")]
    assert request.subject == x509.Name([])
    assert request.is_signature_valid
    with pytest.raises(x509.ExtensionNotFound):
        request.extensions.get_extension_for_class(x509.KeyUsage)


def test_non_ascii_local_part_becomes_smtputf8mailbox_and_reads_back():
    pem = acme_crypto_util.make_csr(KEY_PEM, ["jörg@example.test"])
    request = x509.load_pem_x509_csr(pem)
    names = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [n.type_id for n in names] == [csr.OID_SMTP_UTF8_MAILBOX]
    assert _read_names(request) == ["jörg@example.test"]


def test_key_usage_of_the_profile_is_critical_in_mailbox_csrs(monkeypatch):
    certbot_compat.csr_profile.mailbox_key_usage = \
        lambda key: csr.mailbox_key_usage(MailboxKeyUsage.SIGN, key)
    request = x509.load_pem_x509_csr(acme_crypto_util.make_csr(KEY_PEM, ["alice@example.test"]))
    usage = request.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_encipherment
    dns_only = x509.load_pem_x509_csr(acme_crypto_util.make_csr(KEY_PEM, ["mail.example.test"]))
    with pytest.raises(x509.ExtensionNotFound):
        dns_only.extensions.get_extension_for_class(x509.KeyUsage)


def test_srv_names_of_the_profile_join_hosts_in_the_csr():
    certbot_compat.csr_profile.srv_names = [("imaps", "mail.example.test"),
                                            ("smtp", "other.example.test")]
    request = x509.load_pem_x509_csr(acme_crypto_util.make_csr(KEY_PEM, ["mail.example.test"]))
    names = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert csr.srv_names(names) == ["_imaps.mail.example.test"]


def test_a_profile_serves_one_csr_so_later_lineages_do_not_inherit_it():
    certbot_compat.csr_profile.srv_names = [("imaps", "mail.example.test")]
    certbot_compat.csr_profile.mailbox_key_usage = \
        lambda key: csr.mailbox_key_usage(MailboxKeyUsage.SIGN, key)
    first = x509.load_pem_x509_csr(acme_crypto_util.make_csr(KEY_PEM, ["mail.example.test"]))
    assert csr.srv_names(first.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value) == ["_imaps.mail.example.test"]
    assert acme_crypto_util.make_csr(KEY_PEM, ["mail.example.test"]) == \
        _original("make_csr")(KEY_PEM, ["mail.example.test"])
    mailbox = x509.load_pem_x509_csr(acme_crypto_util.make_csr(KEY_PEM, ["alice@example.test"]))
    with pytest.raises(x509.ExtensionNotFound):
        mailbox.extensions.get_extension_for_class(x509.KeyUsage)


#: A profile for newOrder where this acme has the field (3.3+), so the kwargs pass through.
PROFILE = {"profile": ""} if "profile" in messages.NewOrder._fields else {}


def test_new_order_retypes_only_names_with_at_sign():
    order = messages.NewOrder(identifiers=[
        messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="alice@example.test"),
        messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="mail.example.test"),
        messages.Identifier(typ=messages.IDENTIFIER_IP, value="127.0.0.1")], **PROFILE)
    assert order.to_partial_json()["identifiers"][0].to_json() == \
        {"type": "email", "value": "alice@example.test"}
    assert [i.typ for i in order.identifiers] == \
        [IDENTIFIER_EMAIL, messages.IDENTIFIER_FQDN, messages.IDENTIFIER_IP]


def _san_dns_name(name):
    from certbot._internal import san
    return str(san.DNSName(name))


#: Where certbot checks a typed name: its util, and since 5.2.1 its SAN class as well.
NAME_CHECKS = [util.enforce_domain_sanity] + (
    [_san_dns_name] if importlib.util.find_spec("certbot._internal.san") else [])


@pytest.mark.parametrize("check", NAME_CHECKS)
def test_cli_names_keep_the_mailbox_local_part_but_fold_host_names(check):
    assert check("Alice@Example.TEST") == "Alice@example.test"
    assert check("Mail.Example.TEST.") == "mail.example.test"
    with pytest.raises(errors.ConfigurationError, match="wildcard"):
        check("*@example.test")
    with pytest.raises(errors.ConfigurationError, match="Non-ASCII"):
        check("bücher.example")  # certbot's own rule still applies to host names


def test_a_name_that_is_not_text_gets_certbots_own_answer():
    with pytest.raises(errors.ConfigurationError, match="Non-ASCII"):
        util.enforce_domain_sanity(b"alice@b\xfccher.example")


def _run_isolated(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_missing_hook_target_is_recorded_and_plugin_refuses_naming_the_version():
    out = _run_isolated("""
        import acme.crypto_util
        acme.crypto_util.make_csr = lambda private_key, sans: b""   # an unsupported signature
        import certbot
        from certbot import errors
        from certbot_email import reply_plugin                     # must not raise
        from certbot_email import certbot_compat
        try:
            certbot_compat.require_support()
        except errors.NoInstallationError as error:
            print("REFUSED", error)
        print("OTHER HOOKS", sorted(certbot_compat._failures))
        print("VERSION", certbot.__version__)
    """)
    version = out.split("VERSION ")[1].strip()
    assert f"this is certbot {version}" in out
    assert "REFUSED" in out and "make_csr changed its signature" in out
    assert "OTHER HOOKS ['H3 make_csr']" in out


def test_a_hook_that_raises_while_installing_does_not_break_the_import():
    out = _run_isolated("""
        from certbot_email import certbot_compat
        def explode():
            raise RuntimeError("boom")
        certbot_compat.HOOKS["H4 names read from x509"] = explode
        from certbot_email import reply_plugin
        print(certbot_compat.unsupported_reason())
    """)
    assert "RuntimeError: boom" in out


# ---- courtesy hooks: a hint for CAs without email identifiers, delete removes our bundle ----

def test_a_courtesy_hook_that_cannot_be_installed_costs_only_itself():
    out = _run_isolated("""
        from certbot_email import certbot_compat
        def explode():
            raise RuntimeError("boom")
        certbot_compat.COURTESY_HOOKS["H6 delete_files"] = explode
        from certbot_email import reply_plugin
        from certbot._internal import storage
        print("REASON", certbot_compat.unsupported_reason())
        print("DELETE HOOKED", getattr(storage.delete_files, "__certbot_email_hook__", False))
    """)
    assert "REASON None" in out and "DELETE HOOKED False" in out


def _client_refusing_orders(code):
    """An acme ClientV2 whose CA answers every newOrder with the ACME error ``code``."""
    from acme import client as acme_client
    refusing = acme_client.ClientV2.__new__(acme_client.ClientV2)
    refusing.directory = {"newOrder": "https://ca.example/new-order"}

    def post(*_args, **_kwargs):
        raise messages.Error.with_code(code, detail="Order includes unknown identifier type email")
    refusing._post = post
    return refusing


@pytest.mark.parametrize("code", ["malformed", "unsupportedIdentifier"])
def test_a_refused_mailbox_order_says_what_it_means_and_what_to_do(code):
    csr_pem = acme_crypto_util.make_csr(KEY_PEM, ["alice@example.test"])
    with pytest.raises(errors.Error) as raised:
        _client_refusing_orders(code).new_order(csr_pem)
    message = str(raised.value)
    assert message.startswith("The CA refused the order for alice@example.test: Order includes "
                              "unknown identifier type email. This CA does not issue "
                              "certificates for email addresses")
    assert "--server DIRECTORY-URL" in message and "Which CA issues certificates" in message
    assert isinstance(raised.value.__cause__, messages.Error)


@pytest.mark.parametrize("names, code", [(["mail.example.test"], "malformed"),
                                         (["alice@example.test"], "rateLimited")])
def test_other_order_refusals_pass_through_unchanged(names, code):
    with pytest.raises(messages.Error) as raised:
        _client_refusing_orders(code).new_order(acme_crypto_util.make_csr(KEY_PEM, names))
    assert raised.value.code == code


def test_a_refusal_of_a_csr_whose_mailbox_cannot_be_read_passes_through_unchanged():
    ia5_mailbox = x509.OtherName(csr.OID_SMTP_UTF8_MAILBOX, b"\x16\x10bob@example.test")
    request = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.DNSName("mail.example.test"), ia5_mailbox]), critical=False)
               .sign(KEY, hashes.SHA256()))
    with pytest.raises(messages.Error) as raised:
        _client_refusing_orders("malformed").new_order(
            request.public_bytes(serialization.Encoding.PEM))
    assert raised.value.code == "malformed"


class TestDeleteRemovesTheBundle(certbot_test_util.ConfigTestCase):
    """``certbot delete`` (certbot's own delete_files) with our hook installed."""

    def lineage(self, renew_hook):
        import configobj
        conf_path = certbot_test_util.make_lineage(self.config.config_dir, "sample-renewal.conf")
        conf = configobj.ConfigObj(conf_path, encoding="utf-8")
        if renew_hook:
            conf["renewalparams"]["renew_hook"] = renew_hook
        conf.write()
        live = os.path.join(self.config.config_dir, "live", "sample-renewal")
        with open(os.path.join(live, "bundle.p12"), "wb") as bundle:
            bundle.write(b"key inside")
        return live

    def test_the_bundle_goes_with_the_lineage_and_so_does_its_live_directory(self):
        live = self.lineage("/opt/certbot/bin/certbot-email-pkcs12 --password-file /etc/pw")
        storage.delete_files(self.config, "sample-renewal")
        assert not os.path.exists(live)

    def test_a_bundle_our_hook_did_not_make_is_left_alone(self):
        live = self.lineage("")
        storage.delete_files(self.config, "sample-renewal")
        assert os.listdir(live) == ["bundle.p12"]


def test_startup_tasks_run_after_certbot_locks_its_dirs_and_never_raise(monkeypatch, caplog):
    from certbot._internal import main
    assert certbot_compat._is_hook(main.make_or_verify_needed_dirs)
    seen = []

    def task(config):
        seen.append(config)
        raise RuntimeError("could not restore the mail server")
    monkeypatch.setattr(certbot_compat, "_startup_tasks", [task])
    config = object()
    with pytest.raises(AttributeError):  # certbot's own work comes first, and its errors stay
        main.make_or_verify_needed_dirs(config)
    assert seen == []
    monkeypatch.setattr(main.util, "set_up_core_dir", lambda *args: None)
    monkeypatch.setattr(main.util, "make_or_verify_dir", lambda *args, **kwargs: None)
    namespace = type("Config", (), {"config_dir": "c", "work_dir": "w", "strict_permissions": False,
                                    "renewal_pre_hooks_dir": "a", "renewal_deploy_hooks_dir": "b",
                                    "renewal_post_hooks_dir": "c"})()
    main.make_or_verify_needed_dirs(namespace)
    assert seen == [namespace]
    assert "could not restore the mail server" in caplog.text
