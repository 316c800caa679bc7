"""Installer glue: checks before edits and reloads, certbot's reverter, verifying what is served.

The daemons are fakes that keep their "config" in a real file, so certbot's real reverter backs
it up and restores it; what a listener "serves" is whatever the fake loaded at its last reload.
"""
import argparse
import dataclasses
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
        self.config_file = str(self.config)
        self.sni: dict[str, installer.SniEntry] = {}  # what sni_entries answers
        self.stale: list[str] = []  # what prune finds; emptied when it applies
        self.deployed_calls: list[tuple[str, ...]] = []  # server_names of each deploy
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
        self.deployed_calls.append(tuple(server_names))
        before_edit(str(self.config))
        self.config.write_text(f"{key_path} {fullchain_path}\n")
        created(str(self.dropin))
        self.dropin.write_text("ours\n")
        return [f"{self.config}: {fullchain_path}"]

    def sni_entries(self, server_names: Sequence[str]) -> dict[str, installer.SniEntry]:
        return {name: self.sni[name] for name in server_names if name in self.sni}

    def prune(self, apply: bool) -> list[str]:
        stale = list(self.stale)
        if apply:
            self.stale.clear()
        return stale

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

    @classmethod
    def make_daemons(cls, conf: Callable[[str], object]) -> list[installer.MailDaemon]:
        return [cls.daemon]


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
def probed(serving, monkeypatch) -> list[str | None]:
    """The SNI name (None: none) of every probe the installer makes."""
    names: list[str | None] = []
    fake_probe = tls_probe.served_certificate

    def probe(listener: TlsListener, key_algorithm: str | None = None) -> x509.Certificate:
        names.append(listener.server_name)
        return fake_probe(listener, key_algorithm)
    monkeypatch.setattr(tls_probe, "served_certificate", probe)
    return names


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
        http01_port=80, https_port=443, domains=None, **options))


def make_installer(tmp_path: Path, serving: dict, old: KeyAndChain, reload_only: bool = False,
                   daemon: FakeDaemon | None = None, take_over_sni: bool = False,
                   ) -> FakeInstaller:
    """An installer over a fake daemon that serves `old`, with certbot's dirs under tmp_path."""
    if daemon is None:
        etc = tmp_path / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        daemon = FakeDaemon(etc, serving)
        daemon.config.write_text(f"{old.key_file} {old.chain_file}\n")
        daemon.reload()
        daemon.reloads = 0
    FakeInstaller.daemon = daemon
    plugin = FakeInstaller(certbot_config(tmp_path, fake_reload_only=reload_only,
                                          fake_alt_cert_name=None, fake_dane="off",
                                          fake_dane_resolver=None,
                                          fake_take_over_sni=take_over_sni),
                           "fake")
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


def scripted_probe(monkeypatch, answers: list) -> dict:
    """Each probe (listener, SNI name, key type) gets the answers of the list in turn (a
    certificate, or an error to raise), then the last again; returns the answers given, per
    probe."""
    given: dict = {}

    def probe(listener: TlsListener, key_algorithm: str | None = None) -> x509.Certificate:
        mine = given.setdefault((listener, key_algorithm), [])
        answer = answers[min(len(mine), len(answers) - 1)]
        mine.append(answer)
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
    # the default and each of the certificate's names by SNI, each probed before the reload,
    # then until the new certificate showed
    assert {listener.server_name for listener, _key in given} == {
        None, "mail.example.test"}
    assert [len(answers) for answers in given.values()] == [5] * len(given)


def test_a_wrong_certificate_fails_at_once_and_says_so(tmp_path, serving, old, new, monkeypatch):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    monkeypatch.setattr(installer, "VERIFY_SECONDS", 3600.0)
    other = leaf_certificate(write_lineage(tmp_path / "other", name="other.example.test"))
    given = scripted_probe(monkeypatch, [leaf_certificate(old), other])
    with pytest.raises(errors.PluginError) as failure:
        plugin.restart()
    # at most one probe after the reload: no waiting for the deadline
    assert max(len(answers) for answers in given.values()) == 2
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
    assert [len(answers) for answers in given.values()] == [3] * len(given)


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


COMMON_OPTIONS = ["reload-only", "alt-cert-name", "dane", "dane-resolver", "take-over-sni"]


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


def test_a_certificate_for_an_address_is_refused_before_any_edit(tmp_path, serving, old):
    plugin = make_installer(tmp_path, serving, old)
    original = plugin.daemon.config.read_bytes()
    smime = write_lineage(tmp_path / "smime", name="alice@example.test")
    with pytest.raises(errors.PluginError, match=r"is for alice@example.test \(S/MIME\), not for "
                       r"a host name\. The fake installer .* `certbot certonly`, without -i"):
        plugin.deploy_cert("alice@example.test", "/unused", smime.key_file, None,
                           smime.chain_file)
    assert plugin.daemon.deploys == 0
    assert plugin.daemon.config.read_bytes() == original


def test_a_missing_config_file_is_named_in_prepare(tmp_path, serving, old):
    plugin = make_installer(tmp_path, serving, old)
    plugin.daemon.config.unlink()
    with pytest.raises(errors.NoInstallationError,
                       match=f"{plugin.daemon.config} does not exist, so fake is not configured"):
        plugin.prepare()


ADMIN_ENTRY = installer.SniEntry("mail.example.test", False, "/etc/fake/sni line 3",
                                 "point it at {key} and {chain}")


def test_an_admin_sni_entry_for_the_name_is_refused_before_any_edit(tmp_path, serving, old, new):
    plugin = make_installer(tmp_path, serving, old)
    original = plugin.daemon.config.read_bytes()
    plugin.daemon.sni = {"mail.example.test": ADMIN_ENTRY}
    with pytest.raises(errors.PluginError) as refused:
        deploy(plugin, new)
    assert str(refused.value) == (
        f"fake: not deploying {new.chain_file}, since clients that send SNI would keep the old "
        "certificate: /etc/fake/sni line 3 gives clients that ask for mail.example.test (SNI) a "
        f"certificate of its own: point it at {new.key_file} and {new.chain_file}, or rerun "
        "with --fake-take-over-sni to serve the new certificate to those clients from "
        "certbot-email's own SNI entry instead")
    assert plugin.daemon.deploys == 0
    assert plugin.daemon.config.read_bytes() == original


def test_our_sni_entry_and_with_take_over_the_admins_get_the_new_pairs(tmp_path, serving, old,
                                                                       new):
    for entry, take_over in ((installer.SniEntry("mail.example.test", True, "ours"), False),
                             (ADMIN_ENTRY, True)):
        plugin = make_installer(tmp_path / str(take_over), serving, old,
                                take_over_sni=take_over)
        plugin.daemon.sni = {"mail.example.test": entry}

        def deploy_and_take_over(*args, deploy=plugin.daemon.deploy, daemon=plugin.daemon):
            daemon.sni = {"mail.example.test": installer.SniEntry("mail.example.test", True,
                                                                  "ours")}
            return deploy(*args)
        plugin.daemon.deploy = deploy_and_take_over  # type: ignore[method-assign]
        deploy(plugin, new)
        assert plugin.daemon.deployed_calls == [(), ("mail.example.test",)]


def test_take_over_that_does_not_win_is_refused(tmp_path, serving, old, new):
    plugin = make_installer(tmp_path, serving, old, take_over_sni=True)
    plugin.daemon.sni = {"mail.example.test": ADMIN_ENTRY}
    with pytest.raises(errors.PluginError, match="--fake-take-over-sni cannot win over it, so "
                       "edit it yourself"):
        deploy(plugin, new)
    unshadowable = dataclasses.replace(ADMIN_ENTRY, shadowable=False)
    plugin.daemon.sni = {"mail.example.test": unshadowable}
    plugin.daemon.deploys = 0
    with pytest.raises(errors.PluginError, match="cannot win over it"):
        deploy(plugin, new)
    assert plugin.daemon.deploys == 0


def test_entries_of_deleted_lineages_are_pruned_before_the_config_test(tmp_path, serving, old,
                                                                       caplog):
    plugin = make_installer(tmp_path, serving, old)
    plugin.daemon.stale = ["/etc/fake/sni: gone.example.test names /x, which no longer exists"]
    plugin.daemon.config_broken = True  # what the stale entry would do to the config test
    original_test = plugin.daemon.config_test
    plugin.daemon.config_test = lambda: (  # type: ignore[method-assign]
        original_test() if plugin.daemon.stale else None)
    with caplog.at_level(logging.WARNING):
        plugin.prepare()
    assert plugin.daemon.stale == []
    assert "gone.example.test names /x, which no longer exists: removed that entry" \
        in caplog.text


def test_reload_only_refuses_to_prune_and_says_what_to_remove(tmp_path, serving, old):
    plugin = make_installer(tmp_path, serving, old)
    plugin.daemon.stale = ["/etc/fake/sni: gone.example.test names /x, which no longer exists"]
    with pytest.raises(errors.MisconfigurationError, match="--fake-reload-only touches no file"):
        make_installer(tmp_path, serving, old, reload_only=True, daemon=plugin.daemon)
    assert plugin.daemon.stale


def test_restart_probes_each_certificate_name_by_sni_and_without(tmp_path, serving, probed, old,
                                                                 new, caplog):
    plugin = make_installer(tmp_path, serving, old)
    deploy(plugin, new)
    plugin.restart()
    assert set(probed) == {None, "mail.example.test"}
    probed.clear()
    plugin.daemon.sni = {"mail.example.test": ADMIN_ENTRY}
    with caplog.at_level(logging.WARNING):
        plugin.restart()
    assert set(probed) == {None}
    assert "clients that ask for mail.example.test (SNI) get the certificate of /etc/fake/sni " \
           "line 3, not the default one; not verified" in caplog.text


def test_delete_prunes_the_daemons_its_renewal_conf_names(tmp_path):
    renewal = tmp_path / "lineage.conf"
    renewal.write_text("[renewalparams]\ninstaller = mailserver\n"
                       "mailserver_postfix_config_dir = /srv/postfix\n")
    assert installer.prune_for_delete(str(renewal)) is not None
    for params in ("installer = mailserver\nmailserver_reload_only = True\n",
                   "installer = nginx\n", ""):
        renewal.write_text(f"[renewalparams]\n{params}")
        assert installer.prune_for_delete(str(renewal)) is None
    daemons = installer.MailServerInstaller.make_daemons(
        {"postfix-config-dir": "/srv/postfix"}.get)
    assert [daemon.config_file for daemon in daemons] == ["/srv/postfix/main.cf",
                                                          "/etc/dovecot/dovecot.conf"]


def test_delete_of_a_lineage_served_beside_another_prunes_that_ones_daemons(tmp_path,
                                                                           monkeypatch):
    pruned: list[str] = []
    for daemon_type in (installer.Postfix, installer.Dovecot):
        monkeypatch.setattr(daemon_type, "prune", lambda self, apply: pruned.append(
            self.config_file) or [])
    monkeypatch.setattr(installer.util, "lock_dir_until_exit", lambda directory: None)
    rsa = tmp_path / "mail-rsa.conf"
    rsa.write_text("[renewalparams]\nauthenticator = standalone\n")  # got with certonly
    beside = tmp_path / "mail.conf"
    beside.write_text("# renew_before_expiry = 30 days\nversion = 5.8.0\n[renewalparams]\n"
                      "installer = dovecot\ndovecot_config = /srv/dovecot.conf\n"
                      "dovecot_alt_cert_name = mail-rsa\n")
    (tmp_path / "other.conf").write_text("[renewalparams]\ninstaller = postfix\n"
                                         "postfix_alt_cert_name = mail-rsa-2\n")
    (tmp_path / "damaged.conf").write_bytes(b"[renewalparams\n\xff = \x00\n")
    prune = installer.prune_for_delete(str(rsa))
    assert prune is not None
    assert prune() == [f"{beside}: dovecot_alt_cert_name = mail-rsa, a lineage that no longer "
                       "exists"]
    assert pruned == ["/srv/dovecot.conf"]  # not other.conf's Postfix: it serves mail-rsa-2
    assert beside.read_text() == ("# renew_before_expiry = 30 days\nversion = 5.8.0\n"
                                  "[renewalparams]\ninstaller = dovecot\n"
                                  "dovecot_config = /srv/dovecot.conf\n")
    assert installer.prune_for_delete(str(rsa)) is None  # no lineage names it any more
