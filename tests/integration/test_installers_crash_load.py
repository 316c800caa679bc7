"""Installers under stress: certbot killed in the middle of a deploy, clients during renewals.

Its own private lab (the mail_lab fixture is re-bound in this module), config restored after
each test.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from certbot_email_smtpext.listeners import TlsStart
from tests.integration import test_installers as installers
from tests.integration.handshake_load import HandshakeLoad
from tests.integration.test_installers import fresh_config, mail_lab
from tests.lab import Lab

pytestmark = pytest.mark.integration
__all__ = ["fresh_config", "mail_lab"]  # fixtures, used by name

#: Runs certbot with one daemon method replaced by SIGKILL of certbot itself: a crash at exactly
#: that point, without any test hook in the installer.
KILLING_LAUNCHER = """\
import os, signal, sys
from certbot.main import main
from certbot_email_smtpext import {module}

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

{module}.{cls}.{method} = die
sys.exit(main(sys.argv[1:]))
"""
RENEWALS = 10
MAX_HANDSHAKES = 100_000  # bounds the client loop should a renewal hang
PAUSE_SECONDS = 0.02  # leave the 2 cores to certbot and the daemons


def certbot_killed_at(lab: Lab, root: Path, target: str,
                      *args: str) -> subprocess.CompletedProcess[str]:
    """certbot through a launcher that SIGKILLs it when target ("dovecot.Dovecot.deploy") runs."""
    module, cls, method = target.split(".")
    launcher = root / "launcher.py"
    launcher.write_text(KILLING_LAUNCHER.format(module=module, cls=cls, method=method))
    return subprocess.run([sys.executable, str(launcher), *args, *lab.pebble.certbot_options(root)],
                          env=lab.pebble.certbot_environment(), capture_output=True, text=True,
                          timeout=180, check=False)


def test_deploy_killed_between_the_two_daemons_is_undone_by_the_next_run(mail_lab, fresh_config,
                                                                         tmp_path):
    main_cf = mail_lab.postfix.etc / "main.cf"
    killed = certbot_killed_at(mail_lab, tmp_path, "dovecot.Dovecot.deploy", "run",
                               *installers.standalone(mail_lab),
                               *installers.installer_options(mail_lab, "mailserver"))
    assert killed.returncode == -9, killed.stderr
    assert main_cf.read_bytes() != fresh_config[main_cf][0]  # Postfix's edit was made
    # nothing reloaded
    assert set(installers.served(mail_lab).values()) == {installers.lab_certificate(mail_lab)}

    # the next run's prepare() undoes the half-made edit before deploying again
    again = installers.certbot(mail_lab, tmp_path, "install", "--cert-name", installers.NAME,
                               *installers.installer_options(mail_lab, "mailserver"))
    assert again.returncode == 0, again.stderr
    assert set(installers.served(mail_lab).values()) == \
        {installers.leaf(installers.live(tmp_path, "cert.pem"))}
    # ... so its checkpoint is the only one, and rolling it back gives the original files
    rolled_back = installers.certbot(mail_lab, tmp_path, "rollback", "--checkpoints", "1",
                                     *installers.installer_options(mail_lab, "mailserver"))
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert contents(installers.snapshot(mail_lab)) == contents(fresh_config)
    assert set(installers.served(mail_lab).values()) == {installers.lab_certificate(mail_lab)}


def test_killed_before_the_reload_is_completed_by_the_next_renewal(mail_lab, fresh_config,
                                                                   tmp_path):
    killed = certbot_killed_at(mail_lab, tmp_path, "postfix.Postfix.reload", "run",
                               *installers.standalone(mail_lab),
                               *installers.installer_options(mail_lab, "mailserver"))
    assert killed.returncode == -9, killed.stderr
    edited = installers.snapshot(mail_lab)
    assert "certbot-email.conf" in (mail_lab.dovecot.dir / "dovecot.conf").read_text()

    renewed = installers.certbot(mail_lab, tmp_path, "renew", "--force-renewal",
                                 "--no-random-sleep-on-renew")
    assert renewed.returncode == 0, renewed.stderr
    assert set(installers.served(mail_lab).values()) == \
        {installers.leaf(installers.live(tmp_path, "cert.pem"))}
    # what the killed run wrote stands
    assert contents(installers.snapshot(mail_lab)) == contents(edited)


def contents(files: dict[Path, tuple[bytes, int] | None]) -> dict[Path, bytes | None]:
    """The config files' contents, without the lock file a killed certbot leaves behind."""
    return {path: saved and saved[0] for path, saved in files.items()
            if path.name != ".certbot.lock"}


def test_clients_see_no_failed_handshake_during_renewals(mail_lab, fresh_config, tmp_path):
    deployed = installers.certbot(mail_lab, tmp_path, "run", *installers.standalone(mail_lab),
                                  *installers.installer_options(mail_lab, "mailserver"))
    assert deployed.returncode == 0, deployed.stderr
    targets = [listener for listener in installers.listeners(mail_lab)
               if listener.start in (TlsStart.SMTP, TlsStart.IMPLICIT)
               and listener.service in ("smtp", "imaps")]
    serials = set()
    with HandshakeLoad(targets, len(targets), PAUSE_SECONDS, MAX_HANDSHAKES) as load:
        for _ in range(RENEWALS):
            renewed = installers.certbot(mail_lab, tmp_path, "renew", "--force-renewal",
                                         "--no-random-sleep-on-renew")
            assert renewed.returncode == 0, renewed.stderr
            serials.add(installers.leaf(installers.live(tmp_path, "cert.pem")).serial_number)
    assert len(serials) == RENEWALS
    assert load.errors == []
    for target in targets:
        assert load.by_listener[str(target), True] >= RENEWALS, load.by_listener
        assert load.by_listener[str(target), False] == 0
    assert set(installers.served(mail_lab).values()) == \
        {installers.leaf(installers.live(tmp_path, "cert.pem"))}
