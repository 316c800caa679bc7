"""Dovecot: doveconf output parsing, version-specific settings, the drop-in, TLS listeners."""
from pathlib import Path

import pytest
from certbot import errors

from certbot_email_smtpext import dovecot
from certbot_email_smtpext.checks import KeyAndChain
from certbot_email_smtpext.listeners import TlsStart
from tests.unit.test_installer_checks import pair_in

# trimmed `doveconf -c dovecot.conf` of Dovecot 2.3.19 (the shape matters: nested blocks)
DOVECONF = """\
listen = 127.0.0.1, ::1
protocols = imap pop3 lmtp
service imap-login {
  chroot = login
  inet_listener imap {
    address =
    haproxy = no
    port = 143
    ssl = no
  }
  inet_listener imaps {
    address =
    port = 993
    ssl = yes
  }
  protocol = imap
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = 24
    ssl = no
  }
  protocol = lmtp
  unix_listener lmtp {
    mode = 0666
  }
}
service pop3-login {
  inet_listener pop3 {
    address = ::
    port = 110
    ssl = no
  }
  inet_listener pop3s {
    address =
    port = 0
    ssl = yes
  }
  protocol = pop3
}
service submission-login {
  inet_listener submission {
    address =
    port = 587
    ssl = no
  }
  protocol = submission
}
ssl = yes
ssl_cert = </etc/dovecot/private/dovecot.pem
"""
PAIR = KeyAndChain("/etc/dovecot/private/dovecot.key", "/etc/dovecot/private/dovecot.pem")
V23 = dovecot.setting_names((2, 3, 19, 1))
V24 = dovecot.setting_names((2, 4, 1))


def listeners(text: str = DOVECONF) -> dict[str, tuple[str, int, TlsStart]]:
    return {listener.service: (listener.host, listener.port, listener.start)
            for listener in dovecot.tls_listeners(dovecot.parse_config(text), (PAIR,))}


def test_version_output_is_parsed():
    assert dovecot.parse_version("2.3.19.1 (9b53102964)\n") == (2, 3, 19, 1)
    with pytest.raises(errors.PluginError, match="Dovecot version from 'x'"):
        dovecot.parse_version("x")


def test_setting_names_follow_the_24_rename():
    assert V23 == dovecot.SettingNames("ssl_cert", "ssl_key", "<")
    assert (V23.query_prefix, V23.local_name_filter, V23.capability_boollist) == \
        ("", "lname", False)
    assert V24 == dovecot.SettingNames("ssl_server_cert_file", "ssl_server_key_file", "",
                                       "ssl_server_alt_cert_file", "ssl_server_alt_key_file",
                                       "ssl_server/", "local_name", True)
    assert dovecot.setting_names((2, 5)) == V24


# trimmed `doveconf -c dovecot.conf listen protocols ssl service` of Dovecot 2.4.1 with
# Debian 13's protocols.d (a boolean list) and a listener bound with `listen`
DOVECONF_24 = """\
listen = * ::
protocols {
  imap = yes
  lmtp = yes
  pop3 = no
}
ssl = yes
service imap-login {
  imap_capability {
    IMAP4rev1 = yes
  }
  protocol = imap
  inet_listener imap {
    listen = ::1
    port = 143
  }
  inet_listener imaps {
    port = 993
    ssl = yes
  }
  unix_listener "srv.imap-login/%{pid}" {
    mode = 0600
  }
}
service pop3-login {
  protocol = pop3
  inet_listener pop3s {
    port = 995
    ssl = yes
  }
}
"""


def test_24_protocols_boollist_and_listen_are_read():
    config = dovecot.parse_config(DOVECONF_24)
    assert dovecot.enabled_protocols(config) == ["imap", "lmtp"]
    assert listeners(DOVECONF_24) == {
        "imap-login/imap": ("::1", 143, TlsStart.IMAP),
        "imap-login/imaps": ("127.0.0.1", 993, TlsStart.IMPLICIT),
    }


def test_nested_blocks_are_parsed():
    config = dovecot.parse_config(DOVECONF)
    assert config.settings["ssl_cert"] == "</etc/dovecot/private/dovecot.pem"
    imap_login = config.blocks[0]
    assert (imap_login.kind, imap_login.name, imap_login.settings["protocol"]) == \
        ("service", "imap-login", "imap")
    assert [block.name for block in imap_login.blocks] == ["imap", "imaps"]
    assert imap_login.blocks[0].settings["address"] == ""


def test_listeners_of_enabled_protocols_with_tls():
    assert listeners() == {
        "imap-login/imap": ("127.0.0.1", 143, TlsStart.IMAP),
        "imap-login/imaps": ("127.0.0.1", 993, TlsStart.IMPLICIT),
        "pop3-login/pop3": ("::1", 110, TlsStart.POP3),
    }


def test_no_listener_offers_tls_when_ssl_is_off():
    assert listeners(DOVECONF.replace("ssl = yes\nssl_cert", "ssl = no\nssl_cert")) == {}


def test_submission_login_speaks_smtp_when_enabled():
    enabled = DOVECONF.replace("protocols = imap pop3 lmtp", "protocols = imap submission")
    assert listeners(enabled)["submission-login/submission"] == ("127.0.0.1", 587, TlsStart.SMTP)


@pytest.mark.parametrize("names, settings, expected", [
    (V23, {"ssl_cert": "</c.pem", "ssl_key": "</k.pem"}, (KeyAndChain("/k.pem", "/c.pem"),)),
    (V24, {"ssl_server_cert_file": "/c.pem", "ssl_server_key_file": "/k.pem"},
     (KeyAndChain("/k.pem", "/c.pem"),)),
    (V23, {"ssl_cert": "-----BEGIN CERTIFICATE-----", "ssl_key": "</k.pem"}, ()),
    (V23, {"ssl_cert": "", "ssl_key": ""}, ()),
])
def test_credentials_are_files_only(names, settings, expected):
    assert dovecot.credentials(settings, names) == expected


def one_pair_dropin(key_path: str, fullchain_path: str, enable_ssl: bool) -> dovecot.Dropin:
    return dovecot.Dropin((KeyAndChain(key_path, fullchain_path),), {}, enable_ssl)


def test_dropin_for_23_reads_files_with_a_less_than_sign():
    dropin = one_pair_dropin("/l/privkey.pem", "/l/fullchain.pem", enable_ssl=False)
    assert dovecot.render_dropin(V23, dropin) == (
        "# Written by certbot-email (certbot installer); certbot rollback removes it.\n"
        "ssl_cert = </l/fullchain.pem\nssl_key = </l/privkey.pem\n")


def test_dropin_for_24_uses_the_new_names_and_turns_ssl_on():
    text = dovecot.render_dropin(V24, one_pair_dropin("/l/privkey.pem", "/l/fullchain.pem",
                                                      enable_ssl=True))
    assert text.splitlines()[1:] == ["ssl_server_cert_file = /l/fullchain.pem",
                                     "ssl_server_key_file = /l/privkey.pem", "ssl = yes"]


def test_dropin_refuses_a_path_dovecot_cannot_read():
    with pytest.raises(errors.PluginError, match="cannot read a file named"):
        dovecot.render_dropin(V23, one_pair_dropin("/l/priv\nkey.pem", "/l/fullchain.pem",
                                                   enable_ssl=False))


@pytest.mark.parametrize("text, found", [
    ("!include_try /etc/dovecot/certbot-email.conf\n", True),
    ("  !include certbot-email.conf  \n", True),
    ("#!include_try /etc/dovecot/certbot-email.conf\n", False),
    ("!include conf.d/*.conf\n", False),
])
def test_include_line_is_recognised(text, found):
    assert dovecot.includes(text, "/etc/dovecot/certbot-email.conf") is found


@pytest.mark.parametrize("ssl_setting, current_dropin, turned_on", [
    ("no", None, True),
    ("yes", None, False),
    ("required", None, False),
    ("yes", "ssl_cert = </old.pem\nssl_key = </old.key\nssl = yes\n", True),
    ("yes", "ssl_cert = </old.pem\nssl_key = </old.key\n", False),
])
def test_ssl_stays_on_when_our_dropin_turned_it_on(ssl_setting, current_dropin, turned_on):
    assert dovecot.turns_ssl_on(ssl_setting, current_dropin) is turned_on


RSA = KeyAndChain("/l/rsa/privkey.pem", "/l/rsa/fullchain.pem")
ECDSA = KeyAndChain("/l/privkey.pem", "/l/fullchain.pem")


@pytest.mark.parametrize("names", [V23, V24])
def test_dropin_with_alt_and_local_names_reads_back(names):
    dropin = dovecot.Dropin((ECDSA, RSA), {"imap.example.test": (ECDSA,)}, enable_ssl=True)
    text = dovecot.render_dropin(names, dropin)
    assert f"local_name imap.example.test {{\n  {names.cert} = " in text
    assert f"{names.alt_cert} = {names.file_prefix}/l/rsa/fullchain.pem" in text
    assert dovecot.parse_dropin(text, names) == dropin


def test_dropin_refuses_three_pairs_and_odd_names():
    with pytest.raises(errors.PluginError, match="at most two certificates per name"):
        dovecot.render_dropin(V23, dovecot.Dropin((ECDSA, RSA, ECDSA)))
    with pytest.raises(errors.PluginError, match="cannot take 'a b' as a local_name"):
        dovecot.render_dropin(V23, dovecot.Dropin((), {"a b": (ECDSA,)}))


def test_alt_pair_is_a_credential():
    settings = {"ssl_cert": "</c.pem", "ssl_key": "</k.pem", "ssl_alt_cert": "</rc.pem",
                "ssl_alt_key": "</rk.pem"}
    assert dovecot.credentials(settings, V23) == \
        (KeyAndChain("/k.pem", "/c.pem"), KeyAndChain("/rk.pem", "/rc.pem"))


def test_each_listener_is_also_verified_per_local_name():
    found = [(listener.service, listener.server_name, listener.credentials)
             for listener in dovecot.tls_listeners(dovecot.parse_config(DOVECONF), (PAIR,),
                                                   {"imap.example.test": (RSA,)})
             if listener.service == "imap-login/imaps"]
    assert found == [("imap-login/imaps", None, (PAIR,)),
                     ("imap-login/imaps", "imap.example.test", (RSA,))]


def test_config_takes_services_with_defaults_from_the_named_query(monkeypatch):
    # 2.4's plain doveconf: only what differs from the defaults, so no standard listeners
    plain = ("protocols {\n  imap = yes\n}\nservice lmtp {\n  inet_listener lmtp {\n"
             "    port = 24\n  }\n}\nlocal_name imap.example.test {\n  ssl_server {\n"
             "    cert_file = /l/imap.pem\n  }\n}\n")
    answers = {(): plain, ("listen", "protocols", "ssl", "service"): DOVECONF_24}
    calls = []

    def doveconf(argv, warning_filter=None):
        calls.append(argv)
        assert argv[:3] == ["doveconf", "-c", "/etc/dovecot/dovecot.conf"]
        return answers[tuple(argv[3:])]
    monkeypatch.setattr(dovecot.commands, "run", doveconf)
    config = dovecot.Dovecot("/etc/dovecot/dovecot.conf").config()
    assert [(block.kind, block.name) for block in config.blocks] == [
        ("local_name", "imap.example.test"), ("protocols", ""), ("service", "imap-login"),
        ("service", "pop3-login")]
    assert config.settings["listen"] == "* ::"
    assert len(calls) == 2


def test_a_local_name_block_with_several_names_is_parsed_as_one_block():
    config = dovecot.parse_config("local_name imap.example.test *.example.org {\n"
                                  "  ssl_cert = </a.pem\n}\nssl = yes\n")
    assert [(block.kind, block.name) for block in config.blocks] == [
        ("local_name", "imap.example.test *.example.org")]
    assert config.settings == {"ssl": "yes"}


def test_scan_follows_includes_and_gives_file_line_and_nesting(tmp_path):
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "10-ssl.conf").write_text(
        "# local_name commented.example.test {\n"
        "local 192.0.2.1 {\n  local_name \"a.example.test *.b.example.test\" {\n"
        "    ssl_cert = </a.pem # the admin's\n  }\n}\n")
    (tmp_path / "ours.conf").write_text("local_name ours.example.test {\n  ssl_cert = </o\n}\n")
    conf = tmp_path / "dovecot.conf"
    conf.write_text("ssl = yes\n!include \"conf.d/*.conf\" # the admin's\n!include_try ours.conf\n"
                    "!include_try missing.conf\nlocal_name mail.example.test {\n"
                    "  ssl_key = </k.pem\n}\n")
    blocks = dovecot.scan_blocks(str(conf), [str(tmp_path / "ours.conf")])
    assert [(block.file, block.line, block.end, block.kind, block.names, block.enclosing,
             block.settings) for block in blocks] == [
        (str(conf_d / "10-ssl.conf"), 3, 5, "local_name", ("a.example.test", "*.b.example.test"),
         ("local 192.0.2.1",), {"ssl_cert"}),
        (str(conf_d / "10-ssl.conf"), 2, 6, "local", ("192.0.2.1",), (), set()),
        (str(conf), 5, 7, "local_name", ("mail.example.test",), (), {"ssl_key"}),
    ]
    assert str(blocks[2]) == f"{conf} line 5 (`local_name mail.example.test {{`)"


@pytest.mark.parametrize("pattern, name, found", [
    ("mail.example.test", "MAIL.example.test", True), ("*.example.test", "a.example.test", True),
    ("*.example.test", "example.test", False), ("mail.example.test", "mail.example.org", False),
])
def test_local_name_patterns(pattern, name, found):
    assert dovecot.matches(pattern, name) is found


def test_a_block_doveconf_shows_but_the_scan_cannot_locate_is_the_admins(tmp_path, monkeypatch):
    conf = tmp_path / "dovecot.conf"
    conf.write_text("ssl = yes\n")
    daemon = dovecot.Dovecot(str(conf))
    monkeypatch.setattr(daemon, "setting_names", lambda: dovecot.setting_names((2, 3)))
    monkeypatch.setattr(daemon, "doveconf", lambda *arguments: (
        "local 192.0.2.1 {\n  local_name mail.example.test {\n    ssl_cert = </a.pem\n  }\n}\n"))
    entry = daemon.sni_entries(["mail.example.test", "other.example.test"])
    assert list(entry) == ["mail.example.test"]
    assert not entry["mail.example.test"].ours and not entry["mail.example.test"].shadowable
    assert entry["mail.example.test"].where == (
        "a `local_name mail.example.test {` block that `doveconf -n` shows (in a file not found "
        "from dovecot.conf's includes)")


def test_prune_drops_a_deleted_lineage_served_beside_another_and_its_sni_entries(
        tmp_path, monkeypatch):
    daemon = dovecot.Dovecot(str(tmp_path / "dovecot.conf"))
    monkeypatch.setattr(daemon, "setting_names", lambda: V23)
    ecdsa, rsa, sni = (pair_in(tmp_path / "live" / name) for name in ("ecdsa", "rsa", "sni"))
    written = dovecot.Dropin((ecdsa, rsa), {"imap.example.test": (sni,), "pop.example.test": (
        ecdsa,)})
    (tmp_path / dovecot.DROPIN_NAME).write_text(dovecot.render_dropin(V23, written))
    assert daemon.prune(apply=True) == []
    for gone in (rsa, sni):
        Path(gone.key_file).unlink()
        Path(gone.chain_file).unlink()

    assert daemon.prune(apply=False) == [
        f"{daemon.dropin}: local_name imap.example.test names {path}, which no longer exists"
        for path in (sni.key_file, sni.chain_file)] + [
        f"{daemon.dropin}: the default certificate names {path}, which no longer exists"
        for path in (rsa.key_file, rsa.chain_file)]
    assert dovecot.parse_dropin((tmp_path / dovecot.DROPIN_NAME).read_text(), V23) == written
    assert len(daemon.prune(apply=True)) == 4
    assert dovecot.parse_dropin((tmp_path / dovecot.DROPIN_NAME).read_text(), V23) == \
        dovecot.Dropin((ecdsa,), {"pop.example.test": (ecdsa,)})


def test_prune_keeps_the_only_default_lineage_even_when_deleted(tmp_path, monkeypatch):
    daemon = dovecot.Dovecot(str(tmp_path / "dovecot.conf"))
    monkeypatch.setattr(daemon, "setting_names", lambda: V24)
    text = dovecot.render_dropin(V24, dovecot.Dropin((ECDSA,), enable_ssl=True))
    (tmp_path / dovecot.DROPIN_NAME).write_text(text)
    assert daemon.prune(apply=True) == []  # a daemon without any certificate would serve none
    assert (tmp_path / dovecot.DROPIN_NAME).read_text() == text
