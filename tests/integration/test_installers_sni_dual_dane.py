"""Installers on real Postfix and Dovecot: SNI certificates, RSA beside ECDSA, DANE pins.

A private lab whose zone pins (TLSA 3 1 1) the key of a lineage written before the lab starts,
on the SMTP and IMAPS ports of mail.example.test; each test starts from the lab's config.
"""
import dataclasses
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certbot_email_smtpext.checks import KeyAndChain, leaf_certificate
from certbot_email_smtpext.tls_probe import ProbeError, served_certificate
from tests.integration import test_installers as installers
from tests.integration.test_installers import fresh_config
from tests.lab import Lab
from tests.unit.test_installer_checks import write_lineage

pytestmark = pytest.mark.integration
__all__ = ["fresh_config"]  # the fixture, used by name

SNI_NAME = "imap.example.test"  # an A record only, so Pebble's http-01 reaches certbot


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> KeyAndChain:
    """A lineage for mail.example.test whose key the lab's zone pins."""
    return write_lineage(tmp_path_factory.mktemp("pinned"), name=installers.NAME)


@pytest.fixture(scope="module")
def mail_lab(pinned: KeyAndChain) -> Iterator[Lab]:
    """A lab of our own, with TLSA records pinning `pinned` on its SMTP and IMAPS ports."""
    missing = Lab.missing_requirements(dkim=False)
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"lab requirements missing in CI: {missing}")
        pytest.skip(f"lab requirements missing: {missing}")
    lab = Lab()
    spki = leaf_certificate(pinned).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(spki).hexdigest()
    records = [f"_{port}._tcp.mail IN TLSA 3 1 1 {digest}"
               for port in (lab.ports.smtp, lab.ports.imaps)]
    lab.start(dkim=False, zone_records=records)
    try:
        yield lab
    finally:
        lab.stop()


def live_leaf(root: Path, cert_name: str) -> x509.Certificate:
    """The current certificate of a lineage."""
    return installers.leaf(root / "config" / "live" / cert_name / "cert.pem")


def served_to(lab: Lab, server_name: str | None = None,
              key_algorithm: str | None = None) -> set[x509.Certificate]:
    """What every listener of both daemons serves to a client sending that SNI name and
    offering only TLS 1.2 suites for that key type (None: no SNI, any suite)."""
    return {served_certificate(dataclasses.replace(listener, server_name=server_name),
                               key_algorithm=key_algorithm)
            for listener in installers.listeners(lab)}


def test_sni_lineage_is_served_by_name_and_renewal_rebuilds_it(mail_lab, fresh_config,
                                                               tmp_path):
    result = installers.certbot(mail_lab, tmp_path, "run", "-a", "standalone",
                                "--preferred-challenges", "http-01", "--http-01-port",
                                str(mail_lab.ports.http01), "-d", SNI_NAME, "--cert-name",
                                SNI_NAME, *installers.installer_options(mail_lab, "mailserver"))
    assert result.returncode == 0, result.stderr
    first = live_leaf(tmp_path, SNI_NAME)
    assert served_to(mail_lab, SNI_NAME) == {first}
    assert served_to(mail_lab) == {installers.lab_certificate(mail_lab)}  # the default is kept
    assert served_to(mail_lab, "smtp.example.test") == {installers.lab_certificate(mail_lab)}
    sni_map = (mail_lab.postfix.etc / "certbot-email-sni").read_text()
    assert f"\n{SNI_NAME} {tmp_path / 'config' / 'live' / SNI_NAME / 'privkey.pem'}, " in sni_map
    assert f"local_name {SNI_NAME} {{" in (mail_lab.dovecot.dir / "certbot-email.conf").read_text()

    renewed = installers.certbot(mail_lab, tmp_path, "renew", "--force-renewal",
                                 "--no-random-sleep-on-renew")
    assert renewed.returncode == 0, renewed.stderr
    second = live_leaf(tmp_path, SNI_NAME)
    assert second.serial_number != first.serial_number
    assert served_to(mail_lab, SNI_NAME) == {second}  # postmap -F copied the new files in

    rolled_back = installers.certbot(mail_lab, tmp_path, "rollback", "--checkpoints", "1",
                                     *installers.installer_options(mail_lab, "mailserver"))
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert {path: saved and saved[0] for path, saved in installers.snapshot(mail_lab).items()} == \
        {path: saved and saved[0] for path, saved in fresh_config.items()}
    assert served_to(mail_lab, SNI_NAME) == {installers.lab_certificate(mail_lab)}


def test_rsa_and_ecdsa_lineages_are_both_served(mail_lab, fresh_config, tmp_path):
    rsa = installers.certbot(mail_lab, tmp_path, "certonly", *installers.standalone(mail_lab)[:-2],
                             "--cert-name", "mail-rsa", "--key-type", "rsa")
    assert rsa.returncode == 0, rsa.stderr
    result = installers.certbot(mail_lab, tmp_path, "run", *installers.standalone(mail_lab),
                                "--key-type", "ecdsa",
                                *installers.installer_options(mail_lab, "mailserver"),
                                "--mailserver-alt-cert-name", "mail-rsa")
    assert result.returncode == 0, result.stderr
    first_rsa = live_leaf(tmp_path, "mail-rsa")
    assert served_to(mail_lab, key_algorithm="RSA") == {first_rsa}
    assert served_to(mail_lab, key_algorithm="EC") == {live_leaf(tmp_path, installers.NAME)}

    # the RSA lineage's renewal conf names no installer; the ECDSA lineage's renewal reloads
    # both daemons, which then serve both renewed lineages
    assert installers.certbot(mail_lab, tmp_path, "renew", "--force-renewal",
                              "--no-random-sleep-on-renew", "--cert-name", "mail-rsa"
                              ).returncode == 0
    renewed = installers.certbot(mail_lab, tmp_path, "renew", "--force-renewal",
                                 "--no-random-sleep-on-renew", "--cert-name", installers.NAME)
    assert renewed.returncode == 0, renewed.stderr
    assert live_leaf(tmp_path, "mail-rsa").serial_number != first_rsa.serial_number
    assert served_to(mail_lab, key_algorithm="RSA") == {live_leaf(tmp_path, "mail-rsa")}
    assert served_to(mail_lab, key_algorithm="EC") == {live_leaf(tmp_path, installers.NAME)}


def install(lab: Lab, root: Path, pair: KeyAndChain,
            *options: str) -> subprocess.CompletedProcess[str]:
    """certbot install of a lineage written by the test, with the mailserver installer."""
    return installers.certbot(lab, root, "install", "-d", installers.NAME, "--cert-path",
                              pair.chain_file, "--key-path", pair.key_file, "--fullchain-path",
                              pair.chain_file, *installers.installer_options(lab, "mailserver"),
                              *options)


def test_dane_pinned_key_deploys_without_warning(mail_lab, fresh_config, tmp_path, pinned):
    result = install(mail_lab, tmp_path, pinned)
    assert result.returncode == 0, result.stderr
    assert "DANE" not in result.stderr
    assert served_to(mail_lab) == {leaf_certificate(pinned)}


def test_dane_other_key_is_deployed_with_a_loud_warning(mail_lab, fresh_config, tmp_path):
    other = write_lineage(tmp_path / "other", name=installers.NAME)
    result = install(mail_lab, tmp_path, other)
    assert result.returncode == 0, result.stderr
    assert f"_{mail_lab.ports.smtp}._tcp.mail.example.test TLSA 3 1 1" in result.stderr
    assert f"_{mail_lab.ports.imaps}._tcp.mail.example.test TLSA 3 1 1" in result.stderr
    assert "--reuse-key" in result.stderr
    assert served_to(mail_lab) == {leaf_certificate(other)}


def test_dane_refuse_changes_nothing(mail_lab, fresh_config, tmp_path):
    other = write_lineage(tmp_path / "other", name=installers.NAME)
    result = install(mail_lab, tmp_path, other, "--mailserver-dane", "refuse")
    assert result.returncode != 0
    assert "DANE: not deploying or reloading" in result.stderr
    assert installers.snapshot(mail_lab) == fresh_config
    assert set(installers.served(mail_lab).values()) == {installers.lab_certificate(mail_lab)}


def test_probe_restricted_to_a_key_type_fails_without_one(mail_lab):
    # the lab serves only ECDSA: a client that offers RSA suites only gets no handshake
    smtp = installers.listeners(mail_lab)[0]
    with pytest.raises(ProbeError, match="SSLError"):
        served_certificate(smtp, key_algorithm="RSA")
    assert served_certificate(smtp, key_algorithm="EC") == installers.lab_certificate(mail_lab)
