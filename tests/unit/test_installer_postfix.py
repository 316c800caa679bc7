"""Postfix: postconf output parsing, the settings we write, and the TLS listeners we verify."""
from pathlib import Path

import pytest
from certbot import errors

from certbot_email_smtpext import postfix
from certbot_email_smtpext.checks import KeyAndChain
from certbot_email_smtpext.listeners import TlsStart
from tests.unit.test_installer_checks import pair_in

# `postconf -M` and `postconf -x -P` of a Debian-like master.cf with submission and smtps enabled
MASTER = """\
smtp       inet  n       -       y       -       -       smtpd
submission inet  n       -       y       -       -       smtpd -o syslog_name=postfix/submission \
-o smtpd_tls_security_level=encrypt
smtps      inet  n       -       y       -       -       smtpd -o smtpd_tls_wrappermode=yes
[::1]:10026 inet n       -       n       -       -       smtpd \
-o smtpd_tls_chain_files=/etc/ssl/other.pem
127.0.0.1:10027 inet n   -       n       -       -       smtpd -o smtpd_tls_security_level=none
pickup     unix  n       -       y       60      1       pickup
relay      unix  -       -       y       -       -       smtp
"""
OVERRIDES = """\
submission/inet/syslog_name = postfix/submission
submission/inet/smtpd_tls_security_level = encrypt
smtps/inet/smtpd_tls_wrappermode = yes
[::1]:10026/inet/smtpd_tls_chain_files = /etc/ssl/other.pem
127.0.0.1:10027/inet/smtpd_tls_security_level = none
"""
MAIN = {
    "inet_interfaces": "all",
    "smtpd_tls_security_level": "may",
    "smtpd_tls_chain_files": "/etc/ssl/key.pem, /etc/ssl/chain.pem",
    "smtpd_tls_wrappermode": "no",
}


def services() -> list[postfix.MasterService]:
    return postfix.parse_services(MASTER, OVERRIDES)


def test_parameters_keep_empty_values_and_ignore_noise():
    assert postfix.parse_parameters("a = 1\nb =\nwarning: x\nc = x, y\n") == \
        {"a": "1", "b": "", "c": "x, y"}


def test_services_carry_their_overrides():
    by_name = {service.service: service for service in services()}
    assert by_name["submission"].overrides == {"syslog_name": "postfix/submission",
                                               "smtpd_tls_security_level": "encrypt"}
    assert by_name["pickup"] == postfix.MasterService("pickup", "unix", "pickup", {})


@pytest.mark.parametrize("text, version", [("3.7.11", (3, 7, 11)), ("3.9-20231012", (3, 9))])
def test_versions(text, version):
    assert postfix.parse_version(text) == version


def test_unreadable_version_is_an_error():
    with pytest.raises(errors.PluginError, match="mail_version = 'unknown'"):
        postfix.parse_version("unknown")


def test_new_postfix_gets_chain_files_with_the_key_first():
    assert postfix.certificate_settings((3, 7, 11), "/l/privkey.pem", "/l/fullchain.pem", MAIN) == \
        {"smtpd_tls_chain_files": "/l/privkey.pem, /l/fullchain.pem"}


def test_old_postfix_gets_the_full_chain_as_cert_file():
    assert postfix.certificate_settings((3, 3, 2), "/l/privkey.pem", "/l/fullchain.pem", MAIN) == \
        {"smtpd_tls_cert_file": "/l/fullchain.pem", "smtpd_tls_key_file": "/l/privkey.pem"}


def test_tls_off_is_turned_to_may_and_nothing_already_set_is_rewritten():
    main = {"smtpd_tls_security_level": "",
            "smtpd_tls_chain_files": "/l/privkey.pem, /l/fullchain.pem"}
    assert postfix.certificate_settings((3, 7), "/l/privkey.pem", "/l/fullchain.pem", main) == \
        {"smtpd_tls_security_level": "may"}


def test_legacy_use_tls_counts_as_tls_on():
    main = {"smtpd_tls_security_level": "", "smtpd_use_tls": "yes"}
    assert "smtpd_tls_security_level" not in \
        postfix.certificate_settings((3, 7), "/k", "/c", main)


def test_certificate_overrides_are_reported():
    assert postfix.certificate_overrides(services()) == [
        "master.cf service [::1]:10026/inet sets -o smtpd_tls_chain_files=/etc/ssl/other.pem"]


def test_listeners_cover_starttls_wrappermode_and_overrides(tmp_path):
    listeners = {listener.service: listener for listener in postfix.tls_listeners(MAIN, services())}
    assert set(listeners) == {"smtp", "submission", "smtps", "[::1]:10026"}
    assert (listeners["smtp"].host, listeners["smtp"].port, listeners["smtp"].start) == \
        ("127.0.0.1", 25, TlsStart.SMTP)
    assert (listeners["submission"].port, listeners["submission"].start) == (587, TlsStart.SMTP)
    assert (listeners["smtps"].port, listeners["smtps"].start) == (465, TlsStart.IMPLICIT)
    assert (listeners["[::1]:10026"].host, listeners["[::1]:10026"].port) == ("::1", 10026)
    assert listeners["smtp"].credentials == \
        (KeyAndChain("/etc/ssl/key.pem", "/etc/ssl/chain.pem"),)


def test_a_listener_with_its_own_certificate_is_verified_against_it(tmp_path):
    [listener] = [listener for listener in postfix.tls_listeners(MAIN, services())
                  if listener.service == "[::1]:10026"]
    assert listener.credentials == (KeyAndChain("/etc/ssl/other.pem", "/etc/ssl/other.pem"),)


def test_listener_host_comes_from_inet_interfaces():
    main = {**MAIN, "inet_interfaces": "192.0.2.1, [2001:db8::1]"}
    smtp = next(listener for listener in postfix.tls_listeners(main, services())
                if listener.service == "smtp")
    assert smtp.host == "192.0.2.1"


def test_postscreen_on_port_25_is_a_starttls_listener():
    master = "smtp inet n - y - 1 postscreen\nsmtpd pass - - y - - smtpd\n"
    [listener] = postfix.tls_listeners(MAIN, postfix.parse_services(master, ""))
    assert (listener.service, listener.port, listener.start) == ("smtp", 25, TlsStart.SMTP)


def test_ipv6_only_postfix_is_reached_on_ipv6_loopback():
    main = {**MAIN, "inet_protocols": "ipv6"}
    smtp = next(listener for listener in postfix.tls_listeners(main, services())
                if listener.service == "smtp")
    assert smtp.host == "::1"


def test_legacy_cert_and_key_files_are_the_credentials():
    main = {"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": "/c.pem",
            "smtpd_tls_key_file": "/k.pem"}
    smtp = postfix.tls_listeners(main, services()[:1])[0]
    assert smtp.credentials == (KeyAndChain("/k.pem", "/c.pem"),)


@pytest.mark.parametrize("service, port", [("25", 25), ("smtp", 25), ("submission", 587),
                                           ("127.0.0.1:2525", 2525), ("[::1]:10025", 10025),
                                           ("no-such-service", None)])
def test_service_port(service, port):
    assert postfix.service_port(service) == port


def test_unknown_service_name_is_an_error():
    unknown = [postfix.MasterService("no-such-service", "inet", "smtpd", {})]
    with pytest.raises(errors.PluginError, match="'no-such-service' is not a port number"):
        postfix.tls_listeners(MAIN, unknown)


RSA = KeyAndChain("/l/rsa/privkey.pem", "/l/rsa/fullchain.pem")


def test_a_second_key_type_follows_in_chain_files():
    settings = postfix.certificate_settings((3, 7), "/l/privkey.pem", "/l/fullchain.pem", MAIN,
                                            alternates=(RSA,))
    assert settings == {"smtpd_tls_chain_files": "/l/privkey.pem, /l/fullchain.pem, "
                                                 "/l/rsa/privkey.pem, /l/rsa/fullchain.pem"}


@pytest.mark.parametrize("call", [
    lambda: postfix.certificate_settings((3, 3), "/k", "/c", MAIN, alternates=(RSA,)),
    lambda: postfix.sni_map_settings((3, 3), "hash:/etc/postfix/certbot-email-sni", MAIN),
])
def test_old_postfix_refuses_what_needs_chain_files(call):
    with pytest.raises(errors.PluginError, match="Postfix 3.3 cannot serve .* needs Postfix 3.4"):
        call()


def test_our_sni_table_goes_first_and_only_once():
    ours = "hash:/etc/postfix/certbot-email-sni"
    admin = {**MAIN, "tls_server_sni_maps": "hash:/etc/postfix/sni"}
    assert postfix.sni_map_settings((3, 7), ours, admin) == \
        {"tls_server_sni_maps": f"{ours}, hash:/etc/postfix/sni"}
    assert postfix.sni_map_settings((3, 7), ours, {**MAIN, "tls_server_sni_maps": ours}) == {}


def test_sni_table_round_trips_and_is_sorted(tmp_path):
    key, chain = tmp_path / "privkey.pem", tmp_path / "fullchain.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n")
    chain.write_text("-----BEGIN CERTIFICATE-----\nx\n")
    entries = {"smtp.example.test": (KeyAndChain(str(key), str(chain)),),
               "imap.example.test": (KeyAndChain(str(key), str(chain)),)}
    text = postfix.render_sni_map(entries)
    assert text.splitlines()[2:] == [f"imap.example.test {key}, {chain}",
                                     f"smtp.example.test {key}, {chain}"]
    assert postfix.parse_sni_map(text) == entries


def test_sni_table_refuses_a_path_postfix_would_split():
    with pytest.raises(errors.PluginError, match="cannot name the file '/l/a b.pem'"):
        postfix.render_sni_map({"x.test": (KeyAndChain("/l/a b.pem", "/l/c.pem"),)})


def test_each_listener_is_also_verified_per_sni_name():
    sni = {"imap.example.test": (RSA,)}
    found = [(listener.service, listener.server_name, listener.credentials)
             for listener in postfix.tls_listeners(MAIN, services(), sni)
             if listener.service == "smtp"]
    assert found == [("smtp", None, (KeyAndChain("/etc/ssl/key.pem", "/etc/ssl/chain.pem"),)),
                     ("smtp", "imap.example.test", (RSA,))]


def test_table_lists_keep_inline_tables_whole():
    assert postfix.split_tables("hash:/etc/postfix/sni, inline:{ a.test=/k, b.test=/c } "
                                "lmdb:/x") == ["hash:/etc/postfix/sni",
                                               "inline:{ a.test=/k, b.test=/c }", "lmdb:/x"]


def test_sni_lookup_keys_are_the_name_then_its_parents_with_a_dot():
    assert postfix.lookup_keys("Mail.Example.Test.") == ["mail.example.test", ".example.test",
                                                         ".test"]


def test_prune_drops_a_deleted_lineage_served_beside_another_and_its_sni_entries(
        tmp_path, monkeypatch):
    daemon = postfix.Postfix(str(tmp_path))
    ecdsa, rsa, sni = (pair_in(tmp_path / "live" / name) for name in ("ecdsa", "rsa", "sni"))
    (tmp_path / postfix.SNI_MAP_NAME).write_text(postfix.render_sni_map(
        {"imap.example.test": (sni,), "pop.example.test": (ecdsa, rsa)}))
    main = {"smtpd_tls_chain_files": postfix.chain_files_value([ecdsa, rsa])}
    edits: list[tuple[str, ...]] = []
    monkeypatch.setattr(daemon, "main_parameters", lambda: main)
    monkeypatch.setattr(daemon, "postconf", lambda *arguments: edits.append(arguments))
    monkeypatch.setattr(daemon, "rebuild_sni_map", lambda: edits.append(("postmap",)))
    assert daemon.prune(apply=True) == [] and edits == []
    Path(rsa.chain_file).unlink()

    stale = [f"{daemon.sni_map}: pop.example.test names {rsa.chain_file}, which no longer exists",
             f"{daemon.main_cf}: smtpd_tls_chain_files names {rsa.chain_file}, which no longer "
             "exists"]
    assert daemon.prune(apply=False) == stale and edits == []
    assert daemon.prune(apply=True) == stale
    assert edits == [("postmap",), ("-e", f"smtpd_tls_chain_files = {ecdsa.key_file}, "
                                          f"{ecdsa.chain_file}")]
    assert postfix.parse_sni_map((tmp_path / postfix.SNI_MAP_NAME).read_text()) == {
        "imap.example.test": (sni,), "pop.example.test": (ecdsa,)}


def test_prune_keeps_the_only_default_lineage_even_when_deleted(tmp_path, monkeypatch):
    daemon = postfix.Postfix(str(tmp_path))
    monkeypatch.setattr(daemon, "main_parameters", lambda: {
        "smtpd_tls_chain_files": "/gone/privkey.pem, /gone/fullchain.pem"})
    monkeypatch.setattr(daemon, "postconf", lambda *arguments: pytest.fail("main.cf edited"))
    assert daemon.prune(apply=True) == []


def test_prune_leaves_a_config_postconf_cannot_read_to_the_config_test(tmp_path, monkeypatch):
    daemon = postfix.Postfix(str(tmp_path))

    def unreadable() -> dict[str, str]:
        raise errors.PluginError("postconf: fatal: master.cf: line 45: bad field count")
    monkeypatch.setattr(daemon, "main_parameters", unreadable)
    assert daemon.prune(apply=True) == []
