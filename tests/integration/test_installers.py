"""The postfix, dovecot and mailserver installers driven by the real certbot CLI.

These tests edit the mail servers' config, so they run their own private lab (BIND, Postfix,
Dovecot, Pebble), not the shared session one; each test starts from the lab's original config
and certificate, restored and reloaded after the test.
"""
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certbot_email_smtpext.listeners import TlsListener, TlsStart
from certbot_email_smtpext.tls_probe import ProbeError, served_certificate
from tests.integration.test_email_dns import write_credentials
from tests.lab import Lab
from tests.lab.process import wait_gone

pytestmark = pytest.mark.integration

CERTBOT = str(Path(sys.executable).with_name("certbot"))
NAME = "mail.example.test"


@pytest.fixture(scope="module")
def mail_lab() -> Iterator[Lab]:
    """A lab of our own: these tests rewrite its Postfix and Dovecot config."""
    missing = Lab.missing_requirements(dkim=False)
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"lab requirements missing in CI: {missing}")
        pytest.skip(f"lab requirements missing: {missing}")
    lab = Lab().start(dkim=False)
    try:
        yield lab
    finally:
        lab.stop()


def config_files(lab: Lab) -> list[Path]:
    """Every config file the installers might edit or create."""
    return [*sorted(lab.postfix.etc.iterdir()), lab.dovecot.dir / "dovecot.conf",
            lab.dovecot.dir / "certbot-email.conf"]


def snapshot(lab: Lab) -> dict[Path, tuple[bytes, int] | None]:
    """Contents and mtime of each config file (None for an absent one)."""
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None
            for path in config_files(lab)}


def reload_lab(lab: Lab) -> None:
    """Make both daemons read their config files again."""
    subprocess.run(["postfix", "-c", str(lab.postfix.etc), "reload"], check=True,
                   capture_output=True)
    subprocess.run(["doveadm", "-c", str(lab.dovecot.dir / "dovecot.conf"), "reload"],
                   check=True, capture_output=True)


@pytest.fixture
def fresh_config(mail_lab: Lab) -> Iterator[dict[Path, tuple[bytes, int] | None]]:
    """The lab's original config before the test, put back (and reloaded) after it."""
    original = snapshot(mail_lab)
    yield original
    for path, saved in original.items():
        if saved is None:
            path.unlink(missing_ok=True)
        elif path.read_bytes() != saved[0]:
            path.write_bytes(saved[0])
    reload_lab(mail_lab)
    settle(mail_lab, lab_certificate(mail_lab))


def listeners(lab: Lab, daemons: tuple[str, ...] = ("postfix", "dovecot")) -> list[TlsListener]:
    """The lab's TLS listeners, from the ports the lab chose (not from parsing its config)."""
    ports = lab.ports
    known = {
        "postfix": [("smtp", ports.smtp, TlsStart.SMTP),
                    ("submission", ports.submission, TlsStart.SMTP),
                    ("submissions", ports.submissions, TlsStart.IMPLICIT)],
        "dovecot": [("imap", ports.imap, TlsStart.IMAP), ("imaps", ports.imaps, TlsStart.IMPLICIT),
                    ("pop3", ports.pop3, TlsStart.POP3), ("pop3s", ports.pop3s, TlsStart.IMPLICIT)],
    }
    return [TlsListener(daemon, service, "127.0.0.1", port, start, ())
            for daemon in daemons for service, port, start in known[daemon]]


def served(lab: Lab, daemons: tuple[str, ...] = ("postfix", "dovecot"),
           ) -> dict[str, x509.Certificate]:
    """What each listener serves now."""
    return {str(listener): served_certificate(listener) for listener in listeners(lab, daemons)}


def settle(lab: Lab, expected: x509.Certificate) -> None:
    """Wait (up to 10 s) until every listener serves expected: after a reload, processes forked
    before it may still answer a connection or two with the old certificate."""
    deadline = time.monotonic() + 10
    while set(served(lab).values()) != {expected}:
        assert time.monotonic() < deadline, f"listeners still serve {served(lab)}"
        time.sleep(0.1)


def leaf(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file."""
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def lab_certificate(lab: Lab) -> x509.Certificate:
    """The certificate the lab's daemons serve before any installer runs."""
    return leaf(lab.ca.dir / "mail.crt")


def installer_options(lab: Lab, installer: str) -> list[str]:
    """-i <installer> with the config locations of the lab's private instances, and the lab's
    BIND as the resolver for TLSA lookups (the system one is off loopback)."""
    postfix_dir, dovecot_conf = str(lab.postfix.etc), str(lab.dovecot.dir / "dovecot.conf")
    return {
        "postfix": ["-i", "postfix", "--postfix-config-dir", postfix_dir],
        "dovecot": ["-i", "dovecot", "--dovecot-config", dovecot_conf],
        "mailserver": ["-i", "mailserver", "--mailserver-postfix-config-dir", postfix_dir,
                       "--mailserver-dovecot-config", dovecot_conf],
    }[installer] + [f"--{installer}-dane-resolver", f"{lab.dns.host}:{lab.dns.port}"]


def certbot(lab: Lab, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One certbot run against the lab's Pebble with all certbot state below root."""
    return subprocess.run([CERTBOT, *args, *lab.pebble.certbot_options(root), "-vv"],
                          env=lab.pebble.certbot_environment(), capture_output=True, text=True,
                          timeout=180, check=False)


def standalone(lab: Lab) -> list[str]:
    """The authenticator options: standalone http-01 on the port Pebble validates against."""
    return ["-a", "standalone", "--preferred-challenges", "http-01",
            "--http-01-port", str(lab.ports.http01), "-d", NAME, "--cert-name", NAME]


def live(root: Path, name: str) -> Path:
    """A file of the lineage as certbot links it."""
    return root / "config" / "live" / NAME / name


@pytest.mark.parametrize("installer, daemons", [
    ("postfix", ("postfix",)), ("dovecot", ("dovecot",)),
])
def test_run_deploys_to_every_listener_of_one_daemon(mail_lab, fresh_config, tmp_path,
                                                      installer, daemons):
    result = certbot(mail_lab, tmp_path, "run", *standalone(mail_lab),
                     *installer_options(mail_lab, installer))
    assert result.returncode == 0, result.stderr
    lineage = leaf(live(tmp_path, "cert.pem"))
    assert set(served(mail_lab, daemons).values()) == {lineage}
    untouched = tuple({"postfix", "dovecot"} - set(daemons))
    assert set(served(mail_lab, untouched).values()) == {lab_certificate(mail_lab)}


def email_dns(lab: Lab, root: Path) -> list[str]:
    """The authenticator options: email-dns (dns-01) through the lab's BIND with its TSIG key."""
    credentials = write_credentials(root / "email-dns.ini", lab.dns)
    return ["-a", "email-dns", "--email-dns-credentials", str(credentials),
            "--email-dns-nameserver-port", str(lab.dns.port), "-d", NAME, "--cert-name", NAME]


@pytest.mark.parametrize("authenticator", ["standalone", "email-dns"])
def test_mailserver_deploys_and_renewal_reaches_every_listener(mail_lab, fresh_config, tmp_path,
                                                              authenticator):
    authenticate = standalone(mail_lab) if authenticator == "standalone" \
        else email_dns(mail_lab, tmp_path)
    result = certbot(mail_lab, tmp_path, "run", *authenticate,
                     *installer_options(mail_lab, "mailserver"))
    assert result.returncode == 0, result.stderr
    first = leaf(live(tmp_path, "cert.pem"))
    assert set(served(mail_lab).values()) == {first}
    main_cf = (mail_lab.postfix.etc / "main.cf").read_text()
    assert f"smtpd_tls_chain_files = {live(tmp_path, 'privkey.pem')}, " \
           f"{live(tmp_path, 'fullchain.pem')}" in main_cf
    dovecot_conf = (mail_lab.dovecot.dir / "dovecot.conf").read_bytes()
    assert dovecot_conf == fresh_config[mail_lab.dovecot.dir / "dovecot.conf"][0] + \
        f"!include_try {mail_lab.dovecot.dir / 'certbot-email.conf'}\n".encode()

    renewal = (tmp_path / "config" / "renewal" / f"{NAME}.conf").read_text()
    assert f"authenticator = {authenticator}" in renewal and "installer = mailserver" in renewal
    renewed = certbot(mail_lab, tmp_path, "renew", "--force-renewal", "--no-random-sleep-on-renew")
    assert renewed.returncode == 0, renewed.stderr
    second = leaf(live(tmp_path, "cert.pem"))
    assert second.serial_number != first.serial_number
    assert set(served(mail_lab).values()) == {second}


def offers_no_tls(listener: TlsListener) -> bool:
    """Whether the listener stops offering TLS within 10 s (processes forked before a reload
    may serve a connection or two with the old config)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            served_certificate(listener)
        except ProbeError:
            return True
        time.sleep(0.1)
    return False


def test_tls_that_was_off_is_turned_on(mail_lab, fresh_config, tmp_path):
    subprocess.run(["postconf", "-c", str(mail_lab.postfix.etc), "-e",
                    "smtpd_tls_security_level = none"], check=True)
    conf = mail_lab.dovecot.dir / "dovecot.conf"
    conf.write_text(conf.read_text().replace("\nssl = yes\n", "\nssl = no\n"))
    reload_lab(mail_lab)
    smtp, _, _, imap, *_ = listeners(mail_lab)
    assert offers_no_tls(smtp) and offers_no_tls(imap)

    result = certbot(mail_lab, tmp_path, "run", *standalone(mail_lab),
                     *installer_options(mail_lab, "mailserver"))
    assert result.returncode == 0, result.stderr
    assert "smtpd_tls_security_level = may\n" in (mail_lab.postfix.etc / "main.cf").read_text()
    assert "ssl = yes" in (mail_lab.dovecot.dir / "certbot-email.conf").read_text().splitlines()
    assert set(served(mail_lab).values()) == {leaf(live(tmp_path, "cert.pem"))}


def point_lab_at(lab: Lab, root: Path) -> None:
    """What an admin does before using reload-only: point both daemons at the live files."""
    key, chain = live(root, "privkey.pem"), live(root, "fullchain.pem")
    subprocess.run(["postconf", "-c", str(lab.postfix.etc), "-e",
                    f"smtpd_tls_chain_files = {key}, {chain}"], check=True)
    conf = lab.dovecot.dir / "dovecot.conf"
    conf.write_text(conf.read_text() + lab.dovecot.cert_settings(chain, key))
    reload_lab(lab)
    settle(lab, leaf(live(root, "cert.pem")))


def test_reload_only_touches_no_file_and_renewal_reloads_both(mail_lab, fresh_config, tmp_path):
    issued = certbot(mail_lab, tmp_path, "certonly", *standalone(mail_lab))
    assert issued.returncode == 0, issued.stderr
    point_lab_at(mail_lab, tmp_path)
    before = snapshot(mail_lab)

    renewed = certbot(mail_lab, tmp_path, "renew", "--force-renewal", "--no-random-sleep-on-renew",
                      *installer_options(mail_lab, "mailserver"), "--mailserver-reload-only")
    assert renewed.returncode == 0, renewed.stderr
    second = leaf(live(tmp_path, "cert.pem"))
    assert set(served(mail_lab).values()) == {second}

    # the renewal conf now names the installer and its options: a bare renew reloads both again
    again = certbot(mail_lab, tmp_path, "renew", "--force-renewal", "--no-random-sleep-on-renew")
    assert again.returncode == 0, again.stderr
    third = leaf(live(tmp_path, "cert.pem"))
    assert third.serial_number != second.serial_number
    assert set(served(mail_lab).values()) == {third}
    assert snapshot(mail_lab) == before


def test_key_readable_by_others_is_refused_and_nothing_changes(mail_lab, fresh_config, tmp_path):
    issued = certbot(mail_lab, tmp_path, "certonly", *standalone(mail_lab))
    assert issued.returncode == 0, issued.stderr
    live(tmp_path, "privkey.pem").resolve().chmod(0o644)

    result = certbot(mail_lab, tmp_path, "install", "--cert-name", NAME,
                     *installer_options(mail_lab, "mailserver"))
    assert result.returncode != 0
    assert "is readable by every user (mode 0644)" in result.stderr
    assert snapshot(mail_lab) == fresh_config
    assert set(served(mail_lab).values()) == {lab_certificate(mail_lab)}


def test_broken_postfix_config_is_refused_before_any_change(mail_lab, fresh_config, tmp_path):
    master_cf = mail_lab.postfix.etc / "master.cf"
    master_cf.write_text(master_cf.read_text() + "broken inet n\n")
    before = snapshot(mail_lab)

    result = certbot(mail_lab, tmp_path, "run", *standalone(mail_lab),
                     *installer_options(mail_lab, "mailserver"))
    assert result.returncode != 0
    assert "postfix config test failed" in result.stderr
    assert snapshot(mail_lab) == before
    assert set(served(mail_lab).values()) == {lab_certificate(mail_lab)}


def test_certificate_not_served_after_reload_is_rolled_back(mail_lab, fresh_config, tmp_path):
    # an admin's `local` block keeps serving the old certificate on 127.0.0.1, whatever we deploy;
    # after our drop-in, so doveconf does not warn (test_installers_sni_lifecycle: before it)
    conf = mail_lab.dovecot.dir / "dovecot.conf"
    old_chain, old_key = mail_lab.ca.dir / "mail.crt", mail_lab.ca.dir / "mail.key"
    local_block = f"local 127.0.0.1 {{\n{mail_lab.dovecot.cert_settings(old_chain, old_key)}}}\n"
    include = f"!include_try {mail_lab.dovecot.dir / 'certbot-email.conf'}\n"
    conf.write_text(conf.read_text() + include + local_block)
    reload_lab(mail_lab)
    settle(mail_lab, lab_certificate(mail_lab))
    before = snapshot(mail_lab)

    result = certbot(mail_lab, tmp_path, "run", *standalone(mail_lab),
                     *installer_options(mail_lab, "mailserver"))
    assert result.returncode != 0
    imaps = mail_lab.ports.imaps
    refused = f"dovecot imap-login/imaps on 127.0.0.1:{imaps} (implicit TLS) serves "
    assert refused in result.stderr and "instead of" in result.stderr
    assert "successfully restored your server to its prior configuration" in result.stderr
    assert {path: saved and saved[0] for path, saved in snapshot(mail_lab).items()} == \
        {path: saved and saved[0] for path, saved in before.items()}
    assert set(served(mail_lab).values()) == {lab_certificate(mail_lab)}


def test_certbot_rollback_restores_the_files_and_the_old_certificate(mail_lab, fresh_config,
                                                                     tmp_path):
    deployed = certbot(mail_lab, tmp_path, "run", *standalone(mail_lab),
                       *installer_options(mail_lab, "mailserver"))
    assert deployed.returncode == 0, deployed.stderr
    assert set(served(mail_lab).values()) == {leaf(live(tmp_path, "cert.pem"))}

    rolled_back = certbot(mail_lab, tmp_path, "rollback", "--checkpoints", "1",
                          *installer_options(mail_lab, "mailserver"))
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert {path: saved and saved[0] for path, saved in snapshot(mail_lab).items()} == \
        {path: saved and saved[0] for path, saved in fresh_config.items()}
    assert set(served(mail_lab).values()) == {lab_certificate(mail_lab)}


@pytest.fixture
def postfix_stopped(mail_lab: Lab) -> Iterator[None]:
    """Postfix stopped for the test; afterwards whatever runs is stopped and the lab's restarted.

    Request it before fresh_config, so the lab's config is back when Postfix restarts.
    """
    stop_postfix(mail_lab)
    yield
    stop_postfix(mail_lab)
    mail_lab.postfix.launch()
    mail_lab.postfix.wait_ready(time.monotonic() + 15)


def stop_postfix(lab: Lab) -> None:
    """`postfix stop`, then wait until its master has exited."""
    pid_file = lab.postfix.dir / "spool" / "pid" / "master.pid"
    master = int(pid_file.read_text().strip()) if pid_file.exists() else None
    subprocess.run(["postfix", "-c", str(lab.postfix.etc), "stop"], capture_output=True,
                   check=False)
    if master is not None:
        assert wait_gone([master], 15) == []
    lab.postfix.reap()


def test_a_stopped_postfix_is_started_with_the_new_certificate(mail_lab, postfix_stopped,
                                                               fresh_config, tmp_path):
    result = certbot(mail_lab, tmp_path, "run", *standalone(mail_lab),
                     *installer_options(mail_lab, "postfix"))
    assert result.returncode == 0, result.stderr
    assert set(served(mail_lab, ("postfix",)).values()) == {leaf(live(tmp_path, "cert.pem"))}
