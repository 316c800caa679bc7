"""Installer glue: checks before edits and reloads, certbot's reverter, verifying what is served.

The daemons are fakes that keep their "config" in a real file, so certbot's real reverter backs
it up and restores it; what a listener "serves" is whatever the fake loaded at its last reload.
"""
import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from certbot import errors
from certbot.configuration import NamespaceConfig
from cryptography import x509

from certbot_email_smtpext import installer, tls_probe
from certbot_email_smtpext.checks import KeyAndChain, leaf_certificate
from certbot_email_smtpext.listeners import TlsListener, TlsStart
from tests.unit.test_installer_checks import write_lineage


class FakeDaemon:
    """A daemon whose config file holds `key_file chain_file`, plus a drop-in it may create."""

    name = "fake"
    executables = ("true",)

    def __init__(self, config_dir: Path, serving: dict[tuple[str, int], x509.Certificate]) -> None:
        self.config_dir = str(config_dir)
        self.config = config_dir / "fake.conf"
        self.dropin = config_dir / "fake-dropin.conf"
        self.serving = serving
        self.reloads = 0
        self.deploys = 0
        self.config_broken = False
        self.stuck = False  # a reload that changes nothing (the daemon ignores its new config)

    def names(self) -> set[str]:
        return {"mail.example.test", "localhost"}

    def deploy(self, key_path: str, fullchain_path: str, before_edit: Callable[[str], None],
               created: Callable[[str], None], server_names: Sequence[str] = (),
               alternates: Sequence[KeyAndChain] = ()) -> list[str]:
        self.deploys += 1
        self.deployed_names, self.deployed_alternates = server_names, alternates
        before_edit(str(self.config))
        self.config.write_text(f"{key_path} {fullchain_path}\n")
        created(str(self.dropin))
        self.dropin.write_text("ours\n")
        return [f"{self.config}: {fullchain_path}"]

    def config_test(self) -> None:
        if self.config_broken:
            raise errors.PluginError("fake check: line 1: garbage")

    def tls_listeners(self) -> list[TlsListener]:
        key_file, chain_file = self.config.read_text().split()
        return [TlsListener("fake", "smtps", "127.0.0.1", 465, TlsStart.IMPLICIT,
                            (KeyAndChain(key_file, chain_file),))]

    def reload(self) -> None:
        self.reloads += 1
        if not self.stuck:
            for listener in self.tls_listeners():
                pair = listener.credentials[0]
                self.serving[listener.host, listener.port] = leaf_certificate(pair)


class FakeInstaller(installer.MailInstaller):
    """The shared installer glue driving one FakeDaemon."""

    daemon: FakeDaemon

    def _make_daemons(self) -> list[installer.MailDaemon]:
        return [self.daemon]


@pytest.fixture
def serving(monkeypatch) -> dict:
    """What each fake listener (host, port) serves; the TLS probe reads it, not the network."""
    served: dict[tuple[str, int], x509.Certificate] = {}

    def probe(listener: TlsListener, key_algorithm: str | None = None) -> x509.Certificate:
        return served[listener.host, listener.port]
    monkeypatch.setattr(tls_probe, "served_certificate", probe)
    monkeypatch.setattr(installer, "VERIFY_SECONDS", 0.0)
    monkeypatch.setattr(installer, "RELOAD_GRACE_SECONDS", 0.0)
    return served


@pytest.fixture
def old(tmp_path) -> KeyAndChain:
    return write_lineage(tmp_path / "old")


@pytest.fixture
def new(tmp_path) -> KeyAndChain:
    return write_lineage(tmp_path / "new")


def certbot_config(tmp_path: Path, **options: object) -> NamespaceConfig:
    """A certbot config with its directories under tmp_path and the given plugin options."""
    return NamespaceConfig(argparse.Namespace(
        config_dir=str(tmp_path / "certbot"), work_dir=str(tmp_path / "work"),
        logs_dir=str(tmp_path / "logs"), server="https://ca.test/dir", strict_permissions=False,
        http01_port=80, https_port=443, **options))


def make_installer(tmp_path: Path, serving: dict, old: KeyAndChain, reload_only: bool = False,
                   daemon: FakeDaemon | None = None) -> FakeInstaller:
    """An installer over a fake daemon that serves `old`, with certbot's dirs under tmp_path."""
    if daemon is None:
        etc = tmp_path / "etc"
        etc.mkdir(exist_ok=True)
        daemon = FakeDaemon(etc, serving)
        daemon.config.write_text(f"{old.key_file} {old.chain_file}\n")
        daemon.reload()
        daemon.reloads = 0
    FakeInstaller.daemon = daemon
    plugin = FakeInstaller(certbot_config(tmp_path, fake_reload_only=reload_only,
                                          fake_alt_cert_name=None, fake_dane="off",
                                          fake_dane_resolver=None), "fake")
    plugin.prepare()
    return plugin


def deploy(plugin: FakeInstaller, lineage: KeyAndChain) -> None:
    """What certbot's deploy_certificate does: deploy_cert and save per name, then a titled save."""
    for domain in ("mail.example.test", "smtp.example.test"):
        plugin.deploy_cert(domain, "/unused/cert.pem", lineage.key_file, "/unused/chain.pem",
                           lineage.chain_file)
        plugin.save()
    plugin.save("Deployed ACME Certificate")


def test_deploy_then_restart_serves_the_new_certificate(tmp_path, serving, old, new):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    plugin.restart()
    assert plugin.daemon.config.read_text() == f"{new.key_file} {new.chain_file}\n"
    assert set(serving.values()) == {leaf_certificate(new)}


def test_rollback_restores_the_file_removes_the_dropin_and_serves_the_old(tmp_path, serving,
                                                                          old, new):
    plugin = make_installer(tmp_path, serving, old)
    original = plugin.daemon.config.read_bytes()
    deploy(plugin, new)
    plugin.restart()

    plugin.rollback_checkpoints(1)
    plugin.restart()
    assert plugin.daemon.config.read_bytes() == original
    assert not plugin.daemon.dropin.exists()
    assert set(serving.values()) == {leaf_certificate(old)}


def test_a_crashed_deploy_is_undone_by_the_next_prepare(tmp_path, serving, old, new):
    plugin = make_installer(tmp_path, serving, old)
    original = plugin.daemon.config.read_bytes()
    plugin.deploy_cert("mail.example.test", "/unused", new.key_file, None, new.chain_file)
    # no save(): the process died between the edit and the checkpoint

    make_installer(tmp_path, serving, old, daemon=plugin.daemon)
    assert plugin.daemon.config.read_bytes() == original
    assert not plugin.daemon.dropin.exists()


def test_a_bad_lineage_is_refused_before_any_edit(tmp_path, serving, old, new):
    plugin = make_installer(tmp_path, serving, old)
    original = plugin.daemon.config.read_bytes()
    Path(new.key_file).chmod(0o604)
    with pytest.raises(errors.PluginError, match="is readable by every user"):
        plugin.deploy_cert("mail.example.test", "/unused", new.key_file, None, new.chain_file)
    assert plugin.daemon.deploys == 0
    assert plugin.daemon.config.read_bytes() == original


def test_restart_does_not_reload_onto_broken_files(tmp_path, serving, old, new):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    Path(new.chain_file).write_text("")
    with pytest.raises(errors.PluginError, match="not reloading, so the running daemons keep"):
        plugin.restart()
    assert plugin.daemon.reloads == 0
    assert set(serving.values()) == {leaf_certificate(old)}


def test_restart_fails_when_the_daemon_keeps_serving_the_old_certificate(tmp_path, serving,
                                                                         old, new):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    plugin.daemon.stuck = True
    with pytest.raises(errors.PluginError) as failure:
        plugin.restart()
    message = str(failure.value)
    assert "fake smtps on 127.0.0.1:465 (implicit TLS) serves 'CN=mail.example.test'" in message
    assert f"(serial {leaf_certificate(old).serial_number:x}) instead of" in message
    assert ("the certificate served before the reload: the daemon did not reload, or a setting "
            "keeps that certificate") in message
    assert plugin.daemon.reloads == 1


def scripted_probe(monkeypatch, answers: list) -> list:
    """The TLS probe answers from the list in turn (a certificate, or an error to raise), then
    repeats the last; returns the list of answers given."""
    given: list = []

    def probe(listener: TlsListener, key_algorithm: str | None = None) -> x509.Certificate:
        answer = answers[min(len(given), len(answers) - 1)]
        given.append(answer)
        if isinstance(answer, Exception):
            raise answer
        return answer
    monkeypatch.setattr(tls_probe, "served_certificate", probe)
    return given


def test_a_listener_that_is_merely_slow_is_waited_for(tmp_path, serving, old, new, monkeypatch):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    monkeypatch.setattr(installer, "VERIFY_SECONDS", 60.0)
    monkeypatch.setattr(installer, "RELOAD_GRACE_SECONDS", 60.0)
    refused = tls_probe.ProbeError("ConnectionRefusedError: [Errno 111] Connection refused")
    timeout = tls_probe.ProbeError("TimeoutError: _ssl.c:989: The handshake operation timed out")
    given = scripted_probe(monkeypatch, [leaf_certificate(old), refused, timeout,
                                         leaf_certificate(old), leaf_certificate(new)])
    plugin.restart()
    assert len(given) == 5  # before the reload, then until the new certificate showed


def test_a_wrong_certificate_fails_at_once_and_says_so(tmp_path, serving, old, new, monkeypatch):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    monkeypatch.setattr(installer, "VERIFY_SECONDS", 3600.0)
    other = leaf_certificate(write_lineage(tmp_path / "other", name="other.example.test"))
    given = scripted_probe(monkeypatch, [leaf_certificate(old), other])
    with pytest.raises(errors.PluginError) as failure:
        plugin.restart()
    assert len(given) == 2  # one probe after the reload: no waiting for the deadline
    message = str(failure.value)
    assert f"serves 'CN=other.example.test' (serial {other.serial_number:x}) instead of" in message
    assert "a wrong certificate, not a slow reload" in message


def test_an_earlier_certificate_for_the_same_names_is_old_processes_finishing(
        tmp_path, serving, old, new, monkeypatch):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    monkeypatch.setattr(installer, "VERIFY_SECONDS", 60.0)
    monkeypatch.setattr(installer, "RELOAD_GRACE_SECONDS", 60.0)
    older = leaf_certificate(write_lineage(tmp_path / "older"))  # two renewals ago, say
    given = scripted_probe(monkeypatch, [leaf_certificate(old), older, leaf_certificate(new)])
    plugin.restart()
    assert len(given) == 3


def test_a_listener_without_handshakes_until_the_deadline_is_called_slow(tmp_path, serving, old,
                                                                          new, monkeypatch):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    scripted_probe(monkeypatch, [tls_probe.ProbeError("TimeoutError: timed out")])
    with pytest.raises(errors.PluginError) as failure:
        plugin.restart()
    message = str(failure.value)
    assert "gives no TLS handshake (TimeoutError: timed out) instead of" in message
    assert "No listener served a wrong certificate: these are slow" in message


def test_failed_config_test_makes_the_installer_misconfigured(tmp_path, serving, old):
    plugin = make_installer(tmp_path, serving, old)
    plugin.daemon.config_broken = True
    with pytest.raises(errors.MisconfigurationError, match="fake config test failed.*garbage"):
        make_installer(tmp_path, serving, old, daemon=plugin.daemon)


def test_missing_executable_means_no_installation(tmp_path, serving, old, monkeypatch):
    monkeypatch.setattr(FakeDaemon, "executables", ("certbot-email-no-such-tool",))
    with pytest.raises(errors.NoInstallationError, match="certbot-email-no-such-tool not found"):
        make_installer(tmp_path, serving, old)


def test_reload_only_edits_nothing_and_warns_about_unconfigured_listeners(
        tmp_path, serving, old, new, caplog):
    plugin = make_installer(tmp_path, serving, old, reload_only=True)
    original = plugin.daemon.config.read_bytes()
    with caplog.at_level(logging.WARNING):
        deploy(plugin, new)
    plugin.restart()
    assert plugin.daemon.deploys == 0
    assert plugin.daemon.config.read_bytes() == original
    assert plugin.daemon.reloads == 1
    assert f"reload-only: fake smtps on 127.0.0.1:465 (implicit TLS) serves {old.chain_file}, " \
           f"not {new.chain_file}" in caplog.text


def test_a_certificate_for_other_names_is_deployed_for_those_names_by_sni(tmp_path, serving,
                                                                         old, caplog):
    plugin = make_installer(tmp_path, serving, old)
    other = write_lineage(tmp_path / "other", name="www.example.org")
    with caplog.at_level(logging.INFO):
        deploy(plugin, other)
    assert plugin.daemon.deployed_names == ("www.example.org",)
    assert caplog.text.count("keeping its default certificate and serving this one to clients "
                             "that ask for www.example.org (SNI)") == 1
    assert plugin.daemon.deploys == 1  # deploy_cert runs once per name, the work once per lineage


def test_reload_only_warns_about_a_certificate_for_other_names(tmp_path, serving, old, caplog):
    plugin = make_installer(tmp_path, serving, old, reload_only=True)
    other = write_lineage(tmp_path / "other", name="www.example.org")
    with caplog.at_level(logging.WARNING):
        deploy(plugin, other)
    assert "'CN=www.example.org'" in caplog.text
    assert caplog.text.count("covers none of localhost, mail.example.test") == 1
    assert plugin.daemon.deploys == 0


def test_a_certificate_for_the_server_name_gives_no_warning(tmp_path, serving, old, new,
                                                             caplog):
    plugin = make_installer(tmp_path, serving, old)
    with caplog.at_level(logging.WARNING):
        deploy(plugin, new)
    assert caplog.text == ""


def test_names_are_filtered_like_certbot_does(tmp_path, serving, old):
    assert make_installer(tmp_path, serving, old).get_all_names() == {"mail.example.test"}


def test_no_enhancements(tmp_path, serving, old):
    plugin = make_installer(tmp_path, serving, old)
    assert plugin.supported_enhancements() == []
    with pytest.raises(errors.PluginError, match="supports no enhancement"):
        plugin.enhance("mail.example.test", "redirect")


COMMON_OPTIONS = ["reload-only", "alt-cert-name", "dane", "dane-resolver"]


@pytest.mark.parametrize("plugin_class, options", [
    (installer.PostfixInstaller, [*COMMON_OPTIONS, "config-dir"]),
    (installer.DovecotInstaller, [*COMMON_OPTIONS, "config"]),
    (installer.MailServerInstaller, [*COMMON_OPTIONS, "postfix-config-dir", "dovecot-config"]),
])
def test_options(plugin_class, options):
    added: list[str] = []
    plugin_class.add_parser_arguments(lambda name, **kwargs: added.append(name))
    assert added == options


def test_mailserver_drives_postfix_then_dovecot(tmp_path):
    config = certbot_config(tmp_path, mailserver_postfix_config_dir="/srv/postfix",
                            mailserver_dovecot_config="/srv/dc/dc.conf",
                            mailserver_reload_only=False)
    plugin = installer.MailServerInstaller(config, "mailserver")
    assert [(daemon.name, daemon.config_dir) for daemon in plugin.daemons] == \
        [("postfix", "/srv/postfix"), ("dovecot", "/srv/dc")]


def test_alt_lineage_is_deployed_beside_and_each_key_type_is_probed(tmp_path, serving, old):
    plugin = make_installer(tmp_path, serving, old)
    rsa_pair = write_lineage(tmp_path / "certbot" / "live" / "mail-rsa", rsa_leaf=True)
    plugin.config.namespace.fake_alt_cert_name = "mail-rsa"
    new = write_lineage(tmp_path / "new")
    deploy(plugin, new)
    assert plugin.daemon.deployed_alternates == (rsa_pair,)
    listener = TlsListener("fake", "smtps", "127.0.0.1", 465, TlsStart.IMPLICIT,
                           (new, rsa_pair))
    assert installer._probes([listener]) == {
        (listener, "EC"): {leaf_certificate(new)}, (listener, "RSA"): {leaf_certificate(rsa_pair)}}


@pytest.mark.parametrize("alt_name, message", [
    ("missing", "--fake-alt-cert-name missing: there is no lineage .*live/missing; obtain it"),
    ("same-type", "--fake-alt-cert-name same-type has a EC key like the lineage"),
])
def test_unusable_alt_lineage_is_refused_before_any_edit(tmp_path, serving, old, alt_name,
                                                         message):
    plugin = make_installer(tmp_path, serving, old)
    write_lineage(tmp_path / "certbot" / "live" / "same-type")
    plugin.config.namespace.fake_alt_cert_name = alt_name
    new = write_lineage(tmp_path / "new")
    with pytest.raises(errors.PluginError, match=message):
        plugin.deploy_cert("mail.example.test", "/unused", new.key_file, None, new.chain_file)
    assert plugin.daemon.deploys == 0


def test_names_include_sni_names(tmp_path, serving, old, monkeypatch):
    plugin = make_installer(tmp_path, serving, old)
    default = plugin.daemon.tls_listeners()[0]
    monkeypatch.setattr(plugin.daemon, "tls_listeners", lambda: [
        default, default.for_server_name("imap.example.test", default.credentials)])
    assert plugin.get_all_names() == {"mail.example.test", "imap.example.test"}


def test_an_sni_listener_says_which_name_it_is_probed_with():
    listener = TlsListener("postfix", "smtp", "127.0.0.1", 25, TlsStart.SMTP, ())
    assert str(listener.for_server_name("imap.example.test", ())) == \
        "postfix smtp on 127.0.0.1:25 (SMTP STARTTLS, SNI imap.example.test)"
