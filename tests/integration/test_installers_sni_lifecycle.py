"""Installers on real Postfix and Dovecot with SNI entries the admin wrote, after `certbot
delete` of an SNI lineage, and with a certificate that is not a server's.

A private lab (each test starts from its config, see test_installers.fresh_config), except the
S/MIME test, which needs the session lab's mail round trip and the test CA.
"""
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from certbot_email_smtpext.tls_probe import served_certificate
from tests.integration import test_installers as installers
from tests.integration.test_email_reply_pkcs12 import email_reply_arguments, run_certbot
from tests.integration.test_installers import fresh_config, mail_lab
from tests.integration.test_installers_sni_dual_dane import SNI_NAME, live_leaf
from tests.lab import Lab
from tests.lab.testca import mailbox_credentials, running_test_ca

pytestmark = pytest.mark.integration
__all__ = ["fresh_config", "mail_lab"]  # the fixtures, used by name

NAME = installers.NAME


def served_to(lab: Lab, server_name: str | None, daemons: tuple[str, ...] = ("postfix", "dovecot"),
              ) -> set[x509.Certificate]:
    """What every listener of the daemons serves to a client sending that SNI name (or none)."""
    return {served_certificate(dataclasses.replace(listener, server_name=server_name))
            for listener in installers.listeners(lab, daemons)}


def contents(lab: Lab) -> dict[Path, bytes | None]:
    """The installers' config files, without their mtimes."""
    return {path: saved and saved[0] for path, saved in installers.snapshot(lab).items()}


def run_mailserver(lab: Lab, root: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """certbot run for mail.example.test (standalone http-01) with the mailserver installer."""
    return installers.certbot(lab, root, "run", *installers.standalone(lab),
                              *installers.installer_options(lab, "mailserver"), *options)


def doveconf_x(lab: Lab) -> subprocess.CompletedProcess[str]:
    """Dovecot's own config test, which opens every certificate file."""
    return subprocess.run(["doveconf", "-c", str(lab.dovecot.dir / "dovecot.conf"), "-x"],
                          capture_output=True, text=True, check=False)


def add_admin_block(lab: Lab, opening: str) -> tuple[Path, str, int]:
    """Append the admin's `opening {` block serving the lab's own certificate to dovecot.conf,
    in the syntax of the lab's Dovecot; the file, its text before, and the block's line."""
    conf = lab.dovecot.dir / "dovecot.conf"
    text = conf.read_text()
    settings = lab.dovecot.cert_settings(lab.ca.dir / "mail.crt", lab.ca.dir / "mail.key")
    conf.write_text(f"{text}{opening} {{\n{settings}}}\n")
    return conf, text, text.count("\n") + 1


def add_admin_sni_table(lab: Lab, table: Path, text: str, name: str) -> None:
    """Make table (text, then an entry for name serving the lab's own certificate) the admin's
    tls_server_sni_maps."""
    table.write_text(f"{text}{name} {lab.ca.dir / 'mail.key'}, {lab.ca.dir / 'mail.crt'}\n")
    etc = str(lab.postfix.etc)
    subprocess.run(["postmap", "-c", etc, "-F", f"hash:{table}"], check=True)
    subprocess.run(["postconf", "-c", etc, "-e", f"tls_server_sni_maps = hash:{table}"],
                   check=True)


def assert_taken_over(lab: Lab, root: Path) -> None:
    """certbot install with --mailserver-take-over-sni succeeds, and the new certificate is
    served with SNI for the name and without SNI."""
    taken_over = installers.certbot(lab, root, "install", "--cert-name", NAME,
                                    *installers.installer_options(lab, "mailserver"),
                                    "--mailserver-take-over-sni")
    assert taken_over.returncode == 0, taken_over.stderr
    new = live_leaf(root, NAME)
    assert served_to(lab, NAME) == {new}
    assert served_to(lab, None) == {new}


def test_admin_local_name_is_refused_then_taken_over(mail_lab, fresh_config, tmp_path):
    conf, text, line = add_admin_block(mail_lab, f"local_name {NAME}")
    installers.reload_lab(mail_lab)
    before = contents(mail_lab)

    refused = run_mailserver(mail_lab, tmp_path)
    assert refused.returncode != 0
    assert f"{conf} line {line} (`local_name {NAME} {{`) gives clients that ask for {NAME} " \
           f"(SNI) a certificate of its own: set {mail_lab.dovecot.cert_setting} = " \
           in refused.stderr
    assert "--mailserver-take-over-sni" in refused.stderr
    assert contents(mail_lab) == before
    assert served_to(mail_lab, NAME) == {installers.lab_certificate(mail_lab)}

    assert_taken_over(mail_lab, tmp_path)
    assert conf.read_text().startswith(text + f"local_name {NAME} {{\n")  # the admin's stays


def test_a_local_block_before_our_drop_in_is_refused_with_doveconfs_warning(mail_lab,
                                                                             fresh_config,
                                                                             tmp_path):
    conf, _text, line = add_admin_block(mail_lab, "local 127.0.0.1")
    installers.reload_lab(mail_lab)
    before = contents(mail_lab)

    refused = run_mailserver(mail_lab, tmp_path)
    assert refused.returncode != 0
    if mail_lab.dovecot.syntax_2_4:
        # doveconf 2.4 prints no such warning: the reload check finds the old certificate still
        # served there, and the run rolls back
        assert "instead of" in refused.stderr
        assert "the certificate served before the reload: the daemon did not reload, or a " \
               "setting keeps that certificate" in refused.stderr
    else:
        dropin = mail_lab.dovecot.dir / "certbot-email.conf"
        assert f"doveconf: the global {mail_lab.dovecot.cert_setting} of {dropin} " \
               f"does not reach {conf} line {line} (`local 127.0.0.1 {{`), which sets its own" \
               in refused.stderr
    assert contents(mail_lab) == before
    assert served_to(mail_lab, None) == {installers.lab_certificate(mail_lab)}


def test_admin_sni_table_is_refused_then_taken_over(mail_lab, fresh_config, tmp_path):
    table = tmp_path / "admin-sni"
    add_admin_sni_table(mail_lab, table, "# the admin's own\n", NAME)
    installers.reload_lab(mail_lab)
    before = contents(mail_lab)

    refused = run_mailserver(mail_lab, tmp_path)
    assert refused.returncode != 0
    assert f"{table} line 2: the entry for {NAME} in hash:{table} gives clients that ask for " \
           f"{NAME} (SNI) a certificate of its own: change it to `{NAME} " in refused.stderr
    assert f"and run `postmap -F hash:{table}`" in refused.stderr
    assert contents(mail_lab) == before
    assert served_to(mail_lab, NAME, ("postfix",)) == {installers.lab_certificate(mail_lab)}

    assert_taken_over(mail_lab, tmp_path)
    main_cf = (mail_lab.postfix.etc / "main.cf").read_text()
    assert f"tls_server_sni_maps = hash:{mail_lab.postfix.etc / 'certbot-email-sni'}, " \
           f"hash:{table}\n" in main_cf


def issue_sni_lineage(lab: Lab, root: Path) -> None:
    """imap.example.test, which the lab's daemons serve by SNI only."""
    sni = installers.certbot(lab, root, "run", "-a", "standalone", "--preferred-challenges",
                             "http-01", "--http-01-port", str(lab.ports.http01), "-d", SNI_NAME,
                             "--cert-name", SNI_NAME,
                             *installers.installer_options(lab, "mailserver"))
    assert sni.returncode == 0, sni.stderr
    assert f"local_name {SNI_NAME} {{" in (lab.dovecot.dir / "certbot-email.conf").read_text()


def no_sni_entry_is_left(lab: Lab) -> bool:
    """Whether our SNI table and drop-in have forgotten imap.example.test."""
    return SNI_NAME not in (lab.postfix.etc / "certbot-email-sni").read_text() and \
        SNI_NAME not in (lab.dovecot.dir / "certbot-email.conf").read_text()


def test_entries_that_take_over_cannot_win_are_refused_even_with_it(mail_lab, fresh_config,
                                                                    tmp_path):
    # several names in one block (2.3), or a wildcard (2.4 takes one name per block)
    names = "*.example.test" if mail_lab.dovecot.syntax_2_4 else f"other.example.test {NAME}"
    conf, _text, line = add_admin_block(mail_lab, f'local_name "{names}"')
    table = tmp_path / "admin-sni"
    add_admin_sni_table(mail_lab, table, "", ".example.test")
    installers.reload_lab(mail_lab)
    issued = installers.certbot(mail_lab, tmp_path, "certonly", *installers.standalone(mail_lab))
    assert issued.returncode == 0, issued.stderr
    before = contents(mail_lab)

    dovecot = installers.certbot(mail_lab, tmp_path, "install", "--cert-name", NAME,
                                 *installers.installer_options(mail_lab, "dovecot"),
                                 "--dovecot-take-over-sni")
    assert dovecot.returncode != 0
    assert f"{conf} line {line} (`local_name {names} {{`) gives clients " \
           f"that ask for {NAME} (SNI) a certificate of its own" in dovecot.stderr
    assert "--dovecot-take-over-sni cannot win over it, so edit it yourself" in dovecot.stderr
    assert contents(mail_lab) == before

    postfix = installers.certbot(mail_lab, tmp_path, "install", "--cert-name", NAME,
                                 *installers.installer_options(mail_lab, "postfix"))
    assert postfix.returncode != 0  # the parent domain's entry answers for the name
    assert f"{table} line 1: the entry for .example.test in hash:{table} gives clients that " \
           f"ask for {NAME} (SNI)" in postfix.stderr
    assert contents(mail_lab) == before
    assert served_to(mail_lab, NAME) == {installers.lab_certificate(mail_lab)}


def test_delete_of_an_sni_lineage_then_another_deploy_and_renewal(mail_lab, fresh_config,
                                                                  tmp_path):
    issue_sni_lineage(mail_lab, tmp_path)
    deleted = installers.certbot(mail_lab, tmp_path, "delete", "--cert-name", SNI_NAME)
    assert deleted.returncode == 0, deleted.stderr
    assert not (tmp_path / "config" / "live" / SNI_NAME).exists()
    assert doveconf_x(mail_lab).returncode == 0, doveconf_x(mail_lab).stderr
    assert no_sni_entry_is_left(mail_lab)

    deployed = run_mailserver(mail_lab, tmp_path)
    assert deployed.returncode == 0, deployed.stderr
    first = live_leaf(tmp_path, NAME)
    assert served_to(mail_lab, SNI_NAME) == {first}  # no SNI entry left: the default
    assert served_to(mail_lab, NAME) == {first}

    renewed = installers.certbot(mail_lab, tmp_path, "renew", "--force-renewal",
                                 "--no-random-sleep-on-renew")
    assert renewed.returncode == 0, renewed.stderr
    assert doveconf_x(mail_lab).returncode == 0, doveconf_x(mail_lab).stderr
    second = live_leaf(tmp_path, NAME)
    assert second.serial_number != first.serial_number
    assert served_to(mail_lab, NAME) == served_to(mail_lab, None) == {second}


def test_delete_of_a_lineage_served_beside_another_keeps_the_other_served_and_renewed(
        mail_lab, fresh_config, tmp_path):
    """The README's RSA + ECDSA recipe, then `certbot delete` of the RSA lineage, whose own
    renewal configuration names no installer: the ECDSA lineage's daemons drop its pair."""
    rsa = installers.certbot(mail_lab, tmp_path, "certonly", *installers.standalone(mail_lab)[:-2],
                             "--cert-name", "mail-rsa", "--key-type", "rsa")
    assert rsa.returncode == 0, rsa.stderr
    both = run_mailserver(mail_lab, tmp_path, "--key-type", "ecdsa",
                          "--mailserver-alt-cert-name", "mail-rsa")
    assert both.returncode == 0, both.stderr
    first = live_leaf(tmp_path, NAME)

    deleted = installers.certbot(mail_lab, tmp_path, "delete", "--cert-name", "mail-rsa")
    assert deleted.returncode == 0, deleted.stderr
    assert not (tmp_path / "config" / "live" / "mail-rsa").exists()
    assert doveconf_x(mail_lab).returncode == 0, doveconf_x(mail_lab).stderr
    chain_files = subprocess.run(
        ["postconf", "-c", str(mail_lab.postfix.etc), "-xh", "smtpd_tls_chain_files"],
        capture_output=True, text=True, check=True).stdout
    live = tmp_path / "config" / "live" / NAME
    assert chain_files.split() == [f"{live / 'privkey.pem'},", str(live / "fullchain.pem")]
    renewal = (tmp_path / "config" / "renewal" / f"{NAME}.conf").read_text()
    assert "installer = mailserver" in renewal and "alt_cert_name" not in renewal

    renewed = installers.certbot(mail_lab, tmp_path, "renew", "--force-renewal",
                                 "--no-random-sleep-on-renew")
    assert renewed.returncode == 0, renewed.stderr
    assert doveconf_x(mail_lab).returncode == 0, doveconf_x(mail_lab).stderr
    assert live_leaf(tmp_path, NAME).serial_number != first.serial_number
    assert served_to(mail_lab, None) == {live_leaf(tmp_path, NAME)}


def test_sni_entries_of_vanished_files_are_pruned_by_the_next_run(mail_lab, fresh_config,
                                                                  tmp_path):
    issue_sni_lineage(mail_lab, tmp_path)
    # gone without our delete hook: by hand, or by a certbot that runs without certbot-email
    for kind in ("live", "archive"):
        shutil.rmtree(tmp_path / "config" / kind / SNI_NAME)
    (tmp_path / "config" / "renewal" / f"{SNI_NAME}.conf").unlink()
    assert doveconf_x(mail_lab).returncode != 0

    deployed = run_mailserver(mail_lab, tmp_path)
    assert deployed.returncode == 0, deployed.stderr
    assert f"local_name {SNI_NAME} names " in deployed.stderr
    assert "removed that entry, since its lineage is gone" in deployed.stderr
    assert doveconf_x(mail_lab).returncode == 0, doveconf_x(mail_lab).stderr
    assert no_sni_entry_is_left(mail_lab)
    assert served_to(mail_lab, SNI_NAME) == {live_leaf(tmp_path, NAME)}


def test_postfix_without_main_cf_says_so(mail_lab, tmp_path):
    empty = tmp_path / "etc-postfix"
    empty.mkdir()
    result = installers.certbot(mail_lab, tmp_path, "run", *installers.standalone(mail_lab),
                                "-i", "postfix", "--postfix-config-dir", str(empty))
    assert result.returncode != 0
    assert f"{empty / 'main.cf'} does not exist, so postfix is not configured there: configure " \
           "postfix first, or name its config with --postfix-config-dir" in result.stderr
    assert not (tmp_path / "config" / "live").exists()  # refused before the order


@pytest.mark.usefixtures("fresh_mailboxes")
def test_smime_certificate_is_refused_by_the_postfix_installer(lab, tmp_path):
    main_cf = lab.postfix.etc / "main.cf"
    before = main_cf.read_bytes()
    with running_test_ca(lab, tmp_path / "testca") as test_ca:
        environment = {**os.environ,
                       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                       "REQUESTS_CA_BUNDLE": str(test_ca.root)}
        credentials = mailbox_credentials(lab, "alice", tmp_path / "email-reply.ini")
        arguments = email_reply_arguments(lab, credentials, test_ca.directory_url)
        result = run_certbot(tmp_path, tmp_path / "work", environment, "run", *arguments[1:],
                             "-i", "postfix", "--postfix-config-dir", str(lab.postfix.etc))
    changed = main_cf.read_bytes() != before
    if changed:
        main_cf.write_bytes(before)  # the session lab is shared
    assert result.returncode != 0
    assert "is for alice@example.test (S/MIME), not for a host name. The postfix installer " \
           "gives mail servers their TLS certificate" in result.stderr
    assert not changed
