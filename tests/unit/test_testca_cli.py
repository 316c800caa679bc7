"""The test CA's command line: every option documented, and mapped onto ``CAConfig``."""
from pathlib import Path

import pytest

from certbot_email.testing import cli, runtime
from certbot_email.testing.config import ReplyJoining


def test_every_option_has_help():
    parser = cli.build_parser()
    undocumented = [action.dest for action in parser._actions  # noqa: SLF001
                    if not action.help or not action.help.strip()]
    assert undocumented == []
    assert "never for production" in " ".join(parser.format_help().split())


def test_options_reach_the_config(tmp_path):
    password = tmp_path / "password"
    password.write_text("ca-secret\n")
    args = cli.build_parser().parse_args([
        "--state-dir", str(tmp_path), "--port", "0", "--dns-server", "127.0.0.1",
        "--dns-port", "5353", "--service-port", "imaps=10993", "--any-port",
        "--dns-email-arrays", "--srv-for-any-method", "--mail-from", "ca@example.test",
        "--reply-to", "replies@example.test", "--imap-user", "ca@example.test",
        "--imap-password-file", str(password), "--imap-tls", "--send-on-post",
        "--token-joining", "bytes", "--unsigned-challenge", "--no-auto-submitted",
        "--validity-days", "2", "--token-lifetime", "60"])
    config = cli.config_from_args(args)
    assert config.state_dir == Path(tmp_path) and config.port == 0
    assert (config.dns_server, config.dns_port) == ("127.0.0.1", 5353)
    assert config.service_port_overrides == {"imaps": 10993}
    assert not config.default_ports_only and config.dns_email_arrays
    assert config.srv_for_any_method and config.validity_days == 2
    mail = config.mail
    assert mail.imap_password == "ca-secret" and mail.imap_tls
    assert mail.reply_to == "replies@example.test"
    assert mail.send_on_post and mail.unsigned and mail.omit_auto_submitted
    assert mail.joining is ReplyJoining.BYTES and mail.token_lifetime_seconds == 60


def test_defaults_are_strict_and_loopback():
    config = cli.config_from_args(cli.build_parser().parse_args([]))
    assert config.listen_address == "127.0.0.1"
    assert config.default_ports_only and not config.dns_email_arrays
    assert not config.mail.unsigned and config.mail.joining is ReplyJoining.EITHER


@pytest.mark.parametrize("value", ["imaps", "imaps=x", "gopher=70"])
def test_bad_service_port_is_a_usage_error(value):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--service-port", value])


@pytest.mark.parametrize("option", ["--listen-address", "--dns-server", "--smtp-host",
                                    "--imap-host"])
def test_servers_off_loopback_are_refused(option, tmp_path):
    args = cli.build_parser().parse_args(["--state-dir", str(tmp_path), option, "192.0.2.1"])
    with pytest.raises(ValueError, match="not a loopback address"):
        runtime.require_loopback(cli.config_from_args(args))


def test_loopback_servers_are_accepted():
    args = cli.build_parser().parse_args(["--dns-server", "127.0.0.1", "--smtp-host",
                                          "localhost", "--imap-host", "::1"])
    runtime.require_loopback(cli.config_from_args(args))


def test_the_dkim_record_is_split_into_255_byte_strings_nsupdate_and_zones_take(tmp_path):
    import dns.rdata

    value = "v=DKIM1; k=rsa; p=" + "A" * 392  # a 2048-bit key's record: 410 characters
    line = runtime.txt_record_line("testca._domainkey.example.test.", value)
    owner, ttl, klass, rdtype, strings = line.split(None, 4)
    assert (owner, ttl, klass, rdtype) == ("testca._domainkey.example.test.", "300", "IN", "TXT")
    rdata = dns.rdata.from_text("IN", "TXT", strings)
    assert [len(part) for part in rdata.strings] == [255, 155]
    assert b"".join(rdata.strings).decode() == value
    assert line.endswith('"\n') and line.count("\n") == 1
