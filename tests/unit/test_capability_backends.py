"""email-capability without mail servers: config text, master.cf entries, the state record,
the spawn pre-test, and the plugin's perform/cleanup over the standalone backend on loopback."""
import argparse
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from acme import messages
from certbot import achallenges, errors, reverter
from certbot.configuration import NamespaceConfig

from certbot_email import certbot_compat
from certbot_email.protocol.challenges import CapabilityPOP00, CapabilitySMTP00
from certbot_email_smtpext import capability_dovecot as dovecot_backend
from certbot_email_smtpext import capability_plugin, capability_probe, capability_state
from certbot_email_smtpext import capability_postfix as postfix_backend
from certbot_email_smtpext.capability_plugin import Authenticator
from certbot_email_smtpext.postfix import MasterService
from tests.lab.ports import free_port
from tests.unit.certbot_versions import annotated_challenge
from tests.unit.vectors import RFC7638_KEY

VALUE = "ZTRx1Ckl1-tM05o5zaizTTA0yUy5AGereMgSNWC6Ll8"
TOKEN = b"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


# -- Dovecot text -----------------------------------------------------------------------------

@pytest.mark.parametrize("current, expected", [
    ("", "+ACME=a ACME=b"),
    ("+XTEST", "+XTEST ACME=a ACME=b"),
    ("IMAP4rev1 IDLE", "IMAP4rev1 IDLE ACME=a ACME=b"),
])
def test_imap_capability_keeps_what_is_in_force(current, expected):
    assert dovecot_backend.imap_capability_value(current, ["ACME=a", "ACME=b"]) == expected


def test_imap_snippet_sits_inside_protocol_imap_and_uses_the_2_4_boollist():
    old = dovecot_backend.imap_snippet((2, 3, 19), "", [VALUE])
    assert f"protocol imap {{\n  imap_capability = +ACME={VALUE}\n}}\n" in old
    new = dovecot_backend.imap_snippet((2, 4, 1), "+XTEST", [VALUE])
    assert f'  imap_capability {{\n    "ACME={VALUE}" = yes\n  }}\n' in new
    assert "XTEST" not in new


@pytest.mark.parametrize("effective, atoms", [
    ("", set()),
    ("+XTEST ACME=a", {"XTEST", "ACME=a"}),
    ('"ACME=a" = yes\nXTEST = yes\nIDLE = no', {"ACME=a", "XTEST"}),
])
def test_capability_in_force_is_read_in_both_syntaxes(effective, atoms):
    assert dovecot_backend.capability_atoms(effective) == atoms


def test_listener_is_named_service_slash_listener():
    assert dovecot_backend.parse_listener("pop3-login/pop3") == ("pop3-login", "pop3")
    assert "inet_listener pop3s {\n    port = 0\n" in dovecot_backend.listener_off_snippet(
        "pop3-login", "pop3s")
    for bad in ("pop3", "pop3-login/", "a b/c", "x/y\n}"):
        with pytest.raises(errors.MisconfigurationError, match="SERVICE/LISTENER"):
            dovecot_backend.parse_listener(bad)


# -- Postfix master.cf ------------------------------------------------------------------------

def test_find_service_wants_exactly_one_inet_service_on_the_port():
    services = [MasterService("smtp", "inet", "postscreen", {}),
                MasterService("smtpd", "pass", "smtpd", {}),
                MasterService("submission", "inet", "smtpd", {})]
    assert postfix_backend.find_service(services, 25).command == "postscreen"
    with pytest.raises(errors.PluginError, match="port 465 to swap .found: none"):
        postfix_backend.find_service(services, 465)
    twice = [*services, MasterService("127.0.0.1:smtp", "inet", "smtpd", {})]
    with pytest.raises(errors.PluginError, match="found: smtp/inet, 127.0.0.1:smtp/inet"):
        postfix_backend.find_service(twice, 25)


def test_spawn_entry_keeps_endpoint_and_limits_and_runs_spawn_unprivileged():
    fields = "submission inet n - y - 50 smtpd -o syslog_name=postfix/submission".split()
    entry = postfix_backend.spawn_entry(fields, "nobody", ["/usr/bin/python3", "-I", "/r.py"])
    assert entry == ("submission/inet = submission inet n n n - 50 spawn user=nobody "
                     "argv=/usr/bin/python3 -I /r.py")
    with pytest.raises(errors.PluginError, match="white space"):
        postfix_backend.spawn_entry(fields, "nobody", ["/opt/my python/bin/python3"])
    postscreen = "smtp inet n - y - 1 postscreen".split()
    assert postfix_backend.spawn_entry(postscreen, "nobody", ["/p"]) == (
        "smtp/inet = smtp inet n n n - - spawn user=nobody argv=/p")


def test_hidden_smtpd_copies_the_service_on_loopback_with_the_proxy_protocol():
    fields = "submission inet n - y - 50 smtpd -o syslog_name=postfix/submission".split()
    assert postfix_backend.hidden_entry(fields, 10026) == (
        "127.0.0.1:10026/inet = 127.0.0.1:10026 inet n - y - 50 smtpd "
        "-o syslog_name=postfix/submission -o smtpd_upstream_proxy_protocol=haproxy")
    with pytest.raises(errors.PluginError, match="not 'postscreen'"):
        postfix_backend.hidden_entry("smtp inet n - y - 1 postscreen".split(), 10026)


def test_responder_argv_names_the_copy_and_implicit_tls():
    argv = postfix_backend.responder_argv("/usr/bin/python3", "/run/x", "mail.example.test",
                                          "/run/x/values.json", "/run/x/c", "/run/x/k", True)
    assert argv[:3] == ["/usr/bin/python3", "-I", "/run/x/responder.py"]
    assert argv[-1] == "--implicit-tls" and "--values-file" in argv


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs the responder as nobody")


@needs_root
def test_the_spawn_user_can_read_the_runtime_dir_but_plant_nothing_in_it(tmp_path):
    runtime_dir = capability_state.make_runtime_dir("nobody")
    try:
        values = capability_state.write_values(runtime_dir, [VALUE])
        status = os.stat(runtime_dir)
        assert status.st_uid == 0 and status.st_mode & 0o777 == 0o710
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        read = subprocess.run([*as_nobody, "cat", values], capture_output=True, text=True)
        assert read.returncode == 0 and VALUE in read.stdout
        plant = subprocess.run([*as_nobody, "ln", "-s", "/etc/shadow",
                                os.path.join(runtime_dir, "values.json.new")],
                               capture_output=True, text=True)
        assert plant.returncode != 0 and "Permission denied" in plant.stderr
        target = tmp_path / "victim"
        target.write_text("untouched")
        os.symlink(target, os.path.join(runtime_dir, "cert.pem.new"))  # as if planted
        with pytest.raises(FileExistsError):
            capability_state.write_for_group(os.path.join(runtime_dir, "cert.pem"), b"x",
                                             runtime_dir)
        assert target.read_text() == "untouched"
    finally:
        shutil.rmtree(runtime_dir)


@needs_root
@pytest.mark.parametrize("implicit_tls", [False, True])
def test_pretest_runs_the_spawn_command_as_the_spawn_user(tmp_path, implicit_tls):
    runtime_dir = capability_state.make_runtime_dir("nobody")
    try:
        swap = postfix_backend.PostfixSwap(str(tmp_path), 25, implicit_tls,
                                           python="/usr/bin/python3")
        with open(postfix_backend.capability_responder.__file__, "rb") as source:
            capability_state.write_for_group(os.path.join(runtime_dir, "responder.py"),
                                         source.read(), runtime_dir)
        values = capability_state.write_values(runtime_dir, [VALUE])
        cert, key = capability_state.write_throwaway_certificate(runtime_dir, "h")
        argv = postfix_backend.responder_argv(swap.pythons[0], runtime_dir, "h", values,
                                              cert, key, implicit_tls)
        assert postfix_backend.pretest(argv, "nobody", implicit_tls, [VALUE]) is None
        assert "not ['other']" in str(postfix_backend.pretest(argv, "nobody", implicit_tls,
                                                              ["other"]))
        unreadable = [sys.executable, *argv[1:]] if "/root/" in os.path.realpath(
            sys.executable) else ["/nonexistent/python3", *argv[1:]]
        assert postfix_backend.pretest(unreadable, "nobody", implicit_tls, [VALUE]) is not None
    finally:
        capability_state.shutil.rmtree(runtime_dir)


# -- the state record -------------------------------------------------------------------------

def certbot_config(tmp_path: Path, **options: object) -> NamespaceConfig:
    values = {"service": "pop3", "port": None, "backend": "auto",
              "postfix_config_dir": "/etc/postfix", "dovecot_config": "/etc/dovecot/dovecot.conf",
              "dovecot_snippet": None, "spawn_user": "nobody", "spawn_python": None,
              "dovecot_listener": None, "stop_command": None, "start_command": None,
              "listen_address": "127.0.0.1", "probe_address": "127.0.0.1", "probe_timeout": 5.0,
              "state_dir": None, "srv_names": False, "postfix_mode": "responder"}
    values.update(options)
    namespace = argparse.Namespace(
        config_dir=str(tmp_path / "config"), work_dir=str(tmp_path / "work"),
        logs_dir=str(tmp_path / "logs"), server="https://ca.test/dir", strict_permissions=False,
        http01_port=80, https_port=443, domains=["mail.example.test"],
        **{f"email_capability_{key}": value for key, value in values.items()})
    return NamespaceConfig(namespace)


def make_state(tmp_path: Path) -> capability_state.ValidationState:
    return capability_state.ValidationState(str(tmp_path / "state"),
                                            reverter.Reverter(certbot_config(tmp_path)))


def test_restore_puts_bytes_back_removes_created_files_then_runs_the_commands(tmp_path):
    state = make_state(tmp_path)
    edited, created, marker = tmp_path / "main.conf", tmp_path / "snippet.conf", tmp_path / "ran"
    edited.write_bytes(b"original\r\n no newline at end")
    runtime_dir = tmp_path / "certbot-email-capability-test"
    runtime_dir.mkdir()
    state.begin("test", [["/bin/sh", "-c", f"cat {edited} > {marker}"]], str(runtime_dir))
    record = json.loads((tmp_path / "state" / "state.json").read_text())
    assert record["backend"] == "test" and record["pid"] == os.getpid()
    state.protect(str(edited))
    state.protect(str(created))
    edited.write_bytes(b"changed")
    created.write_text("ours")
    with pytest.raises(errors.PluginError, match="was not restored"):
        state.begin("again", [])
    assert state.restore() == []
    assert edited.read_bytes() == b"original\r\n no newline at end"
    assert marker.read_bytes() == edited.read_bytes()  # the reload saw the restored file
    assert not created.exists()
    assert runtime_dir.exists() and state.pending() is not None
    state.finish()
    assert not runtime_dir.exists() and state.pending() is None
    assert state.restore() == [] and state.finish() is None


def test_handover_runs_first_and_the_files_wait_for_relays_to_end(tmp_path):
    state = make_state(tmp_path)
    edited, runtime_dir = tmp_path / "master.cf", tmp_path / "certbot-email-capability-test"
    handed_over, relayed, seen = tmp_path / "handed-over", tmp_path / "relayed", tmp_path / "seen"
    edited.write_bytes(b"original")
    runtime_dir.mkdir()
    state.begin("test", [["/bin/sh", "-c", f"cat {relayed} {edited} > {seen}"]],
                str(runtime_dir), [["/bin/sh", "-c", f"cat {edited} > {handed_over}"]])
    state.protect(str(edited))
    edited.write_bytes(b"swapped")
    relay = subprocess.Popen(["/bin/sh", "-c", f"sleep 0.3; echo ended > {relayed}",
                              str(runtime_dir)])
    try:
        assert state.restore() == []
    finally:
        relay.wait()
    assert handed_over.read_bytes() == b"swapped"  # before the files went back
    assert seen.read_bytes() == b"ended\noriginal"  # the reload came after the relay ended


def test_a_failing_restore_command_keeps_the_record(tmp_path):
    state = make_state(tmp_path)
    state.begin("test", [["/bin/sh", "-c", "echo nope >&2; exit 3"]])
    assert state.restore() == ["`/bin/sh -c echo nope >&2; exit 3` failed with exit status 3: nope"]
    assert state.pending() is not None


# -- the plugin -------------------------------------------------------------------------------

def make_plugin(tmp_path: Path, **options: object) -> Authenticator:
    return Authenticator(certbot_config(tmp_path, **options), "email-capability")


@pytest.mark.parametrize("options, message", [
    ({"service": None}, "name the service to prove"),
    ({"service": "smtps"}, "'smtps'"),
    ({"service": "imap", "backend": "postfix"}, "cannot serve imap .imap.; use dovecot"),
    ({"backend": "exim"}, "expected one of auto, dovecot, postfix, standalone"),
    ({"stop_command": "true"}, "go together"),
    ({"dovecot_listener": "pop3-login/pop3", "stop_command": "true", "start_command": "true"},
     "either"),
    ({"service": "smtp", "postfix_mode": "proxy"}, "expected responder or relay"),
    ({"service": "submissions", "postfix_mode": "relay"}, "not for submissions"),
    ({"service": "submission", "backend": "standalone", "postfix_mode": "relay"},
     "not for submission"),
])
def test_prepare_refuses_bad_options_naming_them(tmp_path, options, message):
    with pytest.raises(errors.MisconfigurationError, match=message):
        make_plugin(tmp_path, **options).prepare()


def test_prepare_asks_for_srv_names_except_for_smtp(tmp_path):
    make_plugin(tmp_path, service="pop3s", srv_names=True).prepare()
    assert certbot_compat.csr_profile.srv_names == [("pop3s", "mail.example.test")]
    certbot_compat.csr_profile.srv_names = []
    make_plugin(tmp_path, service="smtp", srv_names=True).prepare()
    assert certbot_compat.csr_profile.srv_names == []


def make_achall(chall: object) -> achallenges.KeyAuthorizationAnnotatedChallenge:
    body = messages.ChallengeBody(chall=chall, uri="https://ca.test/chall/1",
                                  status=messages.STATUS_PENDING)
    return annotated_challenge(body, RFC7638_KEY, messages.IDENTIFIER_FQDN, "mail.example.test")


@needs_root
def test_standalone_perform_advertises_then_cleanup_frees_the_port_twice_safely(tmp_path):
    port = free_port()
    plugin = make_plugin(tmp_path, port=port)
    plugin.prepare()
    assert plugin.get_chall_pref("mail.example.test") == [CapabilityPOP00]
    achall = make_achall(CapabilityPOP00(token=TOKEN))
    [response] = plugin.perform([achall])
    assert response.to_partial_json() == {"service": "pop3", "port": port}
    expected = achall.validation(achall.account_key)
    assert capability_probe.advertised_values("pop3", "127.0.0.1", port, False) == [expected]
    state_file = tmp_path / "work" / "email-capability" / "state.json"
    assert state_file.exists()
    plugin.cleanup([achall])
    plugin.cleanup([achall])
    assert not state_file.exists()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@needs_root
def test_prepare_repairs_an_interrupted_run(tmp_path):
    marker = tmp_path / "started"
    state = capability_state.ValidationState(str(tmp_path / "work" / "email-capability"),
                                             reverter.Reverter(certbot_config(tmp_path)))
    state.begin("standalone", [["/bin/sh", "-c", f"touch {marker}"]])
    plugin = make_plugin(tmp_path, service="submission")
    plugin.prepare()
    assert marker.exists() and state.pending() is None
    assert plugin.get_chall_pref("mail.example.test") == [CapabilitySMTP00]


@needs_root
def test_standalone_stop_and_start_commands_bracket_the_responder(tmp_path):
    port, log = free_port(), tmp_path / "commands.log"
    plugin = make_plugin(tmp_path, port=port, probe_timeout=0.2,
                         stop_command=f"echo stop >> {log}", start_command=f"echo start >> {log}")
    plugin.prepare()
    achall = make_achall(CapabilityPOP00(token=TOKEN))
    plugin.perform([achall])
    assert log.read_text() == "stop\n"
    with pytest.raises(errors.PluginError, match=f"pop3 on 127.0.0.1 port {port} .for mail."
                                                 "example.test. did not serve again"):
        plugin.cleanup([achall])  # the start command here starts no real server
    assert log.read_text() == "stop\nstart\n"
    state = capability_state.ValidationState(str(tmp_path / "work" / "email-capability"),
                                             reverter.Reverter(certbot_config(tmp_path)))
    assert state.pending() is not None  # kept: the next run retries the restore
    state.finish()


# -- a killed run, repaired by whichever certbot runs next ---------------------------------------

def killed_record(state: capability_state.ValidationState, *commands: list[str]) -> None:
    """A record as a run that has since died would have left it."""
    state.begin("standalone", list(commands))
    record = json.loads(Path(state.path).read_text())
    dead = subprocess.Popen(["true"])
    dead.wait()
    record.update(pid=dead.pid, pid_started="1")
    Path(state.path).write_text(json.dumps(record))


@needs_root
def test_any_certbot_run_repairs_a_record_in_a_custom_state_dir(tmp_path):
    marker, custom = tmp_path / "restored", tmp_path / "custom"
    config = certbot_config(tmp_path, state_dir=str(custom))
    default = tmp_path / "work" / "email-capability"
    state = capability_state.ValidationState(str(custom), reverter.Reverter(config), str(default))
    killed_record(state, ["/bin/sh", "-c", f"echo >> {marker}"])
    assert (default / "state-dir").read_text() == str(custom)
    # a later run knows nothing of --email-capability-state-dir: the pointer leads there
    capability_plugin.repair_at_startup(certbot_config(tmp_path))
    assert marker.read_text() == "\n"
    assert not (custom / "state.json").exists() and not (default / "state-dir").exists()
    capability_plugin.repair_at_startup(certbot_config(tmp_path))
    assert marker.read_text() == "\n"


@needs_root
def test_a_validation_still_running_is_left_alone(tmp_path):
    state = make_state(tmp_path)
    alive = subprocess.Popen(["sleep", "30"])
    try:
        state.begin("standalone", [["/bin/sh", "-c", "exit 1"]])
        record = json.loads(Path(state.path).read_text())
        record.update(pid=alive.pid, pid_started=capability_state._started(alive.pid))
        Path(state.path).write_text(json.dumps(record))
        with pytest.raises(errors.PluginError, match=f"process {alive.pid} is still in the middle"):
            capability_state.repair(state)
        assert state.pending() is not None
    finally:
        alive.kill()
        alive.wait()


@needs_root
@pytest.mark.parametrize("hostile", ["group-writable", "nobody's"])
def test_a_state_dir_others_may_write_is_refused_and_its_commands_never_run(tmp_path, hostile):
    marker, state_dir = tmp_path / "ran", tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(json.dumps(
        {"backend": "standalone", "after_restore": [["/bin/sh", "-c", f"touch {marker}"]]}))
    if hostile == "group-writable":
        state_dir.chmod(0o770)
    else:
        os.chown(state_dir, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(errors.PluginError, match="refusing the email-capability state directory"):
        make_plugin(tmp_path, state_dir=str(state_dir)).prepare()
    with pytest.raises(errors.PluginError, match="not group/world writable"):
        capability_plugin.repair_at_startup(certbot_config(tmp_path, state_dir=str(state_dir)))
    assert not marker.exists()


@needs_root
def test_a_state_file_others_wrote_is_refused(tmp_path):
    state = make_state(tmp_path)
    state.begin("standalone", [])
    os.chown(state.path, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(errors.PluginError, match="owned by uid"):
        state.pending()
    os.chown(state.path, 0, -1)
    os.chmod(state.path, 0o622)
    with pytest.raises(errors.PluginError, match="writable by its group or others"):
        state.pending()

