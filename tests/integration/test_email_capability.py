"""email-capability with the real certbot CLI, the test CA and a private lab Postfix and Dovecot.

Each issuance checks that the configuration files are byte-identical afterwards, that the real
daemons serve again, and (Postfix and Dovecot backends) that a client looping on the affected
listener during the whole run never saw a refused connection. The lab is private to this
module because the tests change Postfix's and Dovecot's configuration.
"""
import json
import multiprocessing
import os
import pwd
import re
import resource
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from certbot import errors, reverter
from cryptography import x509

from certbot_email.protocol import csr as csr_names
from certbot_email.testing import runtime
from certbot_email.testing.config import CAConfig
from certbot_email_smtpext import capability_dovecot, capability_probe
from certbot_email_smtpext.capability_state import ValidationState
from tests.lab import HOST, MAIL_HOST, Lab
from tests.lab.clients import CLIENT_HOSTNAME
from tests.lab.ports import PortReservation

CERTBOT = str(Path(sys.executable).with_name("certbot"))
IMPLICIT_TLS = ("submissions", "imaps", "pop3s")
PATIENCE = 30.0
#: Relayed mail comes from here, so that the address Postfix records can only be the client's.
RELAYED_CLIENT = "127.0.0.5"


@pytest.fixture(name="mail_lab", scope="module")
def fixture_mail_lab() -> Iterator[Lab]:
    missing = Lab.missing_requirements(dns=True, mail=True, dkim=False, pebble=False)
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")
    lab = Lab().start(dns=True, mail=True, dkim=False, pebble=False)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(name="test_ca", scope="module")
def fixture_test_ca(mail_lab: Lab, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[runtime.LaunchedCA]:
    """The test CA, resolving names with the lab's BIND; it accepts the lab's ports."""
    reservation = PortReservation()
    port = reservation.allocate().acme
    ca = runtime.launch(CAConfig(state_dir=tmp_path_factory.mktemp("ca"), port=port,
                                 dns_server=HOST, dns_port=mail_lab.dns.port,
                                 default_ports_only=False, retry_after_seconds=2))
    try:
        yield ca
    finally:
        ca.stop()
        reservation.release()


def config_files(lab: Lab) -> dict[Path, bytes]:
    """Every file the backends may touch, by content."""
    paths = [lab.postfix.etc / "main.cf", lab.postfix.etc / "master.cf", lab.dovecot.config_file]
    return {path: path.read_bytes() for path in paths}


def snippet(lab: Lab) -> Path:
    return lab.dovecot.config_file.parent / capability_dovecot.SNIPPET_NAME


def certbot_command(lab: Lab, ca: runtime.LaunchedCA, root: Path, service: str,
                    *extra: str) -> list[str]:
    port = getattr(lab.ports, service)
    return [CERTBOT, "certonly", "-a", "email-capability", "-d", MAIL_HOST,
            "--email-capability-service", service, "--email-capability-port", str(port),
            "--email-capability-probe-address", HOST,
            "--email-capability-postfix-config-dir", str(lab.postfix.etc),
            "--email-capability-dovecot-config", str(lab.dovecot.config_file),
            "--server", ca.directory_url, "--non-interactive", "--agree-tos",
            "--register-unsafely-without-email", "--config-dir", str(root / "config"),
            "--work-dir", str(root / "work"), "--logs-dir", str(root / "logs"), "-vv", *extra]


def certbot_env(ca: runtime.LaunchedCA) -> dict[str, str]:
    env = {key: val for key, val in os.environ.items() if not key.lower().endswith("_proxy")}
    env["REQUESTS_CA_BUNDLE"] = ca.root_path
    return env


def run_certbot(lab: Lab, ca: runtime.LaunchedCA, root: Path, service: str,
                *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(certbot_command(lab, ca, root, service, *extra), env=certbot_env(ca),
                          capture_output=True, text=True, timeout=180, check=False)


def protocol_of(service: str) -> str:
    return {"smtp": "smtp", "submission": "smtp", "submissions": "smtp", "imap": "imap",
            "imaps": "imap", "pop3": "pop3", "pop3s": "pop3"}[service]


def connect(port: int, implicit_tls: bool) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=5)
    return capability_probe.unverified_tls().wrap_socket(sock) if implicit_tls else sock


class ClientLoop:
    """A client that connects again and again, reading the capabilities as the CA does;
    it counts failures and how many sessions were shown an ACME value."""

    def __init__(self, service: str, port: int) -> None:
        self.service = service
        self.port = port
        self.sessions_with_acme = 0
        self.sessions = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                values = capability_probe.advertised_values(
                    protocol_of(self.service), HOST, self.port, self.service in IMPLICIT_TLS)
            except capability_probe.ProbeError as error:
                self.failures.append(str(error))
                continue
            self.sessions += 1
            self.sessions_with_acme += bool(values)

    def __enter__(self) -> "ClientLoop":
        self._thread.start()
        return self

    def __exit__(self, *unused: object) -> None:
        self._stop.set()
        self._thread.join()


def values_shown(lab: Lab, service: str) -> list[str]:
    return capability_probe.advertised_values(protocol_of(service), HOST,
                                              getattr(lab.ports, service), service in IMPLICIT_TLS)


def assert_restored(lab: Lab, before: dict[Path, bytes], service: str) -> None:
    """Files byte-identical, no snippet left, and the real daemon answers without ACME."""
    assert config_files(lab) == before
    assert not snippet(lab).exists()
    done, seen = capability_probe.wait_until(
        protocol_of(service), HOST, getattr(lab.ports, service), service in IMPLICIT_TLS,
        lambda values: values == [], PATIENCE)
    assert done, seen
    with connect(getattr(lab.ports, service), service in IMPLICIT_TLS) as sock:
        greeting = sock.makefile("rb").readline(1000)
    assert b"ESMTP Postfix" in greeting or b"Dovecot" in greeting, greeting


def issued(root: Path) -> x509.Certificate:
    pem = (root / "config" / "live" / MAIL_HOST / "cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem)


def srv_names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(csr_names.srv_names(san))


@pytest.mark.parametrize("service", ["imap", "imaps", "smtp", "submission", "submissions"])
def test_certificate_with_zero_refused_connections(mail_lab, test_ca, tmp_path, service):
    before = config_files(mail_lab)
    log_start = dovecot_log(mail_lab).stat().st_size
    with ClientLoop(service, getattr(mail_lab.ports, service)) as loop:
        result = run_certbot(mail_lab, test_ca, tmp_path, service, "--email-capability-srv-names")
    assert result.returncode == 0, result.stderr
    assert_only_dovecots_own_byes(mail_lab, loop.failures, log_start,
                                  service == "imaps")
    # The loop ran across the validation: it saw the proof, and the real server around it.
    assert 0 < loop.sessions_with_acme < loop.sessions
    names = srv_names(issued(tmp_path))
    assert names == ([] if service == "smtp" else [f"_{service}.{MAIL_HOST}"])
    log = (tmp_path / "logs" / "letsencrypt.log").read_text()
    assert f'"service": "{service}"' in log
    assert f'"port": {getattr(mail_lab.ports, service)}' in log
    assert_restored(mail_lab, before, service)


@pytest.mark.parametrize("service", ["imaps", "submission"])
def test_two_names_validated_at_once_see_both_values(mail_lab, test_ca, tmp_path, service):
    before = config_files(mail_lab)
    earlier = len(test_ca.ca.decisions)
    second = f"imap.{mail_lab.domain}"
    result = run_certbot(mail_lab, test_ca, tmp_path, service, "-d", second)
    assert result.returncode == 0, result.stderr
    san = issued(tmp_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == [second, MAIL_HOST]
    valid = {decision.split(" VALID")[0].rsplit(" ", 1)[1]
             for decision in test_ca.ca.decisions[earlier:]
             if decision.startswith("capability-") and " VALID: " in decision}
    assert valid == {MAIL_HOST, second}
    assert_restored(mail_lab, before, service)


@pytest.mark.parametrize("service", ["pop3", "pop3s"])
def test_pop3_via_standalone_dovecot_listener_handover(mail_lab, test_ca, tmp_path, service):
    before = config_files(mail_lab)
    result = run_certbot(mail_lab, test_ca, tmp_path, service,
                         "--email-capability-dovecot-listener", f"pop3-login/{service}",
                         "--email-capability-listen-address", f"{HOST},::1")
    assert result.returncode == 0, result.stderr
    certificate = issued(tmp_path)
    assert certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName) \
        .value.get_values_for_type(x509.DNSName) == [MAIL_HOST]
    assert "capability-pop-00" in (tmp_path / "logs" / "letsencrypt.log").read_text()
    assert_restored(mail_lab, before, service)


class IdleFlood:
    """Threads that keep opening connections to a port from other loopback addresses and hold
    every one our responder answers without ever saying a word (Dovecot's are let go)."""

    def __init__(self, port: int, sources: Sequence[str], most: int = 1200) -> None:
        self.port = port
        self.most = most
        self.held: list[socket.socket] = []
        self.turned_away = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(source,), daemon=True)
                         for source in sources]

    def _run(self, source: str) -> None:
        while not self._stop.is_set():
            if len(self.held) >= self.most:
                self._stop.wait(0.1)
                continue
            try:
                sock = socket.create_connection((HOST, self.port), timeout=2,
                                                source_address=(source, 0))
                greeting = sock.recv(200)
            except OSError:
                continue
            if greeting and b"Dovecot" not in greeting:
                self.held.append(sock)
                continue
            self.turned_away += not greeting
            sock.close()

    def __enter__(self) -> "IdleFlood":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *unused: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for sock in self.held:
            sock.close()


def systemd_file_limit() -> None:
    """The soft limit of open files a systemd service (certbot.service) gets: 1024."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1]))


def test_a_flood_of_idle_connections_does_not_block_the_cas_probe(mail_lab, test_ca, tmp_path):
    before = config_files(mail_lab)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # room for the flood here
    try:
        with IdleFlood(mail_lab.ports.pop3, [f"127.0.0.{n}" for n in range(6, 10)]) as flood:
            result = subprocess.run(
                certbot_command(mail_lab, test_ca, tmp_path, "pop3",
                                "--email-capability-dovecot-listener", "pop3-login/pop3"),
                env=certbot_env(test_ca), capture_output=True, text=True, timeout=180,
                check=False, preexec_fn=systemd_file_limit)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result.returncode == 0, result.stderr
    assert flood.turned_away > 0  # it met the caps
    issued(tmp_path)
    assert_restored(mail_lab, before, "pop3")


def test_a_listener_on_another_port_is_refused_before_any_change(mail_lab, test_ca, tmp_path):
    before = config_files(mail_lab)
    result = run_certbot(mail_lab, test_ca, tmp_path, "pop3",
                         "--email-capability-dovecot-listener", "pop3-login/pop3s")
    assert result.returncode != 0
    assert (f"no inet_listener pop3s on port {mail_lab.ports.pop3} "
            f"(its port: {mail_lab.ports.pop3s})") in result.stderr
    assert_restored(mail_lab, before, "pop3s")


def start_and_signal_during_validation(lab: Lab, ca: runtime.LaunchedCA, root: Path,
                                       signum: int, *extra: str) -> None:
    """certbot for submission, sent ``signum`` once EHLO shows a value; waits for it to end."""
    process = subprocess.Popen(certbot_command(lab, ca, root, "submission", *extra),
                               env=certbot_env(ca), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        done, seen = capability_probe.wait_until(
            "smtp", HOST, lab.ports.submission, False, bool, PATIENCE)
        assert done, seen
    finally:
        process.send_signal(signum)
        process.wait(PATIENCE)


def test_sigterm_during_validation_restores_before_certbot_exits(mail_lab, test_ca, tmp_path):
    before = config_files(mail_lab)
    start_and_signal_during_validation(mail_lab, test_ca, tmp_path, signal.SIGTERM)
    assert not (tmp_path / "work" / "email-capability" / "state.json").exists()
    assert_restored(mail_lab, before, "submission")


@pytest.mark.parametrize("mode", ["responder", "relay"])
def test_run_killed_during_validation_is_repaired_by_the_next_run(mail_lab, test_ca, tmp_path,
                                                                   mode):
    before = config_files(mail_lab)
    start_and_signal_during_validation(mail_lab, test_ca, tmp_path, signal.SIGKILL,
                                       "--email-capability-postfix-mode", mode)
    assert config_files(mail_lab) != before, "killed too late: the swap was already undone"
    assert values_shown(mail_lab, "submission")
    result = run_certbot(mail_lab, test_ca, tmp_path, "imap")
    assert result.returncode == 0, result.stderr
    assert "Restoring the mail server after an interrupted" in result.stderr
    assert_restored(mail_lab, before, "submission")
    assert_restored(mail_lab, before, "imap")


def send_through_submission(lab: Lab, subject: str) -> None:
    """A real session: STARTTLS, AUTH and a delivered mail."""
    lab.empty_mailbox("alice")
    with smtplib.SMTP(HOST, lab.ports.submission, local_hostname=CLIENT_HOSTNAME,
                      timeout=PATIENCE) as smtp:
        smtp.starttls(context=lab.client_tls())
        smtp.login(lab.user("bob").address, lab.user("bob").password)
        smtp.send_message(lab.message("bob", "alice", subject))
    assert subject.encode() in lab.wait_for_mail("alice", subject)


def test_run_killed_during_validation_is_repaired_by_a_plain_certbot_renew(mail_lab, test_ca,
                                                                           tmp_path):
    before = config_files(mail_lab)
    start_and_signal_during_validation(mail_lab, test_ca, tmp_path, signal.SIGKILL)
    state_file = tmp_path / "work" / "email-capability" / "state.json"
    runtime_dir = Path(json.loads(state_file.read_text())["runtime_dir"])
    assert runtime_dir.parent == Path("/run") and runtime_dir.is_dir()
    assert config_files(mail_lab) != before, "killed too late: the swap was already undone"
    # a first issuance leaves no lineage: renew has nothing to renew, and repairs all the same
    renewed = subprocess.run(
        [CERTBOT, "renew", "--non-interactive", "--config-dir", str(tmp_path / "config"),
         "--work-dir", str(tmp_path / "work"), "--logs-dir", str(tmp_path / "logs")],
        env=certbot_env(test_ca), capture_output=True, text=True, timeout=180, check=False)
    assert renewed.returncode == 0, renewed.stderr
    assert "Restoring the mail server after an interrupted" in renewed.stderr
    assert "No renewals were attempted" in renewed.stdout + renewed.stderr
    assert not state_file.exists() and not runtime_dir.exists()
    assert_restored(mail_lab, before, "submission")
    send_through_submission(mail_lab, "after the repair by certbot renew")


@pytest.mark.parametrize("hostile", ["owned by nobody, with a planted record",
                                     "group-writable and empty"])
def test_a_state_dir_others_may_write_is_refused_and_its_commands_never_run(
        mail_lab, test_ca, tmp_path, hostile):
    before = config_files(mail_lab)
    state_dir, marker = tmp_path / "state", tmp_path / "planted-command-ran"
    state_dir.mkdir()
    if "planted" in hostile:
        (state_dir / "state.json").write_text(json.dumps(
            {"backend": "postfix", "after_restore": [["/bin/sh", "-c", f"touch {marker}"]]}))
        for path in (state_dir, state_dir / "state.json"):
            os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    else:
        state_dir.chmod(0o775)
    result = run_certbot(mail_lab, test_ca, tmp_path, "submission",
                         "--email-capability-state-dir", str(state_dir))
    assert result.returncode != 0
    assert f"refusing the email-capability state directory {state_dir}" in result.stderr
    assert "root-owned and not group/world writable" in result.stderr
    assert not marker.exists()
    assert config_files(mail_lab) == before
    assert not (tmp_path / "config" / "live").exists()


#: Runs argv in a new mount namespace whose /tmp is a fresh tmpfs, as systemd's PrivateTmp=true
#: gives certbot.service; the directories the test itself uses under /tmp are bound back.
PRIVATE_TMP = """set -e
mount --bind /tmp /mnt
mount -t tmpfs certbot-private-tmp /tmp
for kept in "$KEEP_1" "$KEEP_2"; do
    mkdir -p "/tmp/$kept"
    mount --bind "/mnt/$kept" "/tmp/$kept"
done
if [ -n "$PRIVATE_RUN" ]; then mount -t tmpfs certbot-private-run /run; fi
exec "$@"
"""


@pytest.mark.parametrize("private", ["/tmp", "/tmp and /run"])
def test_postfix_backend_with_a_private_tmp_like_systemd_gives_certbot(mail_lab, test_ca,
                                                                       tmp_path, private):
    before = config_files(mail_lab)
    env = certbot_env(test_ca)
    env.update(KEEP_1=str(mail_lab.workdir.relative_to("/tmp")),
               KEEP_2=str(tmp_path.parent.relative_to("/tmp")),  # the test CA's root is there
               PRIVATE_RUN="1" if "/run" in private else "")
    env.pop("TMPDIR", None)
    with ClientLoop("submission", mail_lab.ports.submission) as loop:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_TMP, "sh",
             *certbot_command(mail_lab, test_ca, tmp_path, "submission")],
            env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "logs" / "letsencrypt.log").read_text()
    runs_from = re.search(r"The responder for Postfix's spawn runs from (\S+) \(pre-tested as "
                          r"nobody in /proc/\d+/ns/mnt\)", log)
    assert runs_from, log[-3000:]
    parent = mail_lab.postfix.etc if "/run" in private else Path("/run")
    assert Path(runs_from.group(1)).parent == parent
    assert loop.failures == []
    assert 0 < loop.sessions_with_acme < loop.sessions  # the spawned responder answered
    issued(tmp_path)
    assert_restored(mail_lab, before, "submission")


# A login process stopped by a reload before its auth handshake finished; Dovecot 2.3 logs
# "Disconnected: Shutting down (...)", 2.4 "Login aborted: Server shutting down (...)".
LOGIN_SHUT_DOWN_BEFORE_AUTH = re.compile(
    r"[Ss]hutting down \(disconnected before auth was ready, waited (\d+) secs\)")


def dovecot_log(lab: Lab) -> Path:
    return lab.dovecot.dir / "dovecot.log"


def dovecot_reloads(lab: Lab) -> int:
    return dovecot_log(lab).read_text(errors="replace").count("reloading")


def met_dovecots_own_race(failure: str, implicit_tls: bool) -> bool:
    """What a client meets when a reload stops its login process before auth: a BYE greeting
    in plaintext; over implicit TLS Dovecot sends nothing while its side of the handshake is
    unfinished (it logs "TLS handshaking"): the client sees the connection closed, before any
    greeting if its own side of the TLS 1.3 handshake was done, else inside the handshake."""
    if implicit_tls:
        return failure == "the server closed the connection" or failure.startswith(
            ("SSLEOFError:", "SSLZeroReturnError:", "ConnectionResetError:"))
    return failure.startswith("IMAP greeting was b'* BYE")


def assert_only_dovecots_own_byes(lab: Lab, failures: list[str], log_start: int,
                                  implicit_tls: bool = False) -> None:
    """No client was refused, except by what Dovecot logged as its own race (a login process
    stopped before it ever waited for auth); a "waited N secs" with N > 0 is a login process
    caught while retrying auth: the race our reload spacing must prevent."""
    own_race = [failure for failure in failures if met_dovecots_own_race(failure, implicit_tls)]
    assert [failure for failure in failures if failure not in own_race] == []
    with dovecot_log(lab).open("rb") as log:
        log.seek(log_start)
        waits = [int(seconds) for seconds in
                 LOGIN_SHUT_DOWN_BEFORE_AUTH.findall(log.read().decode(errors="replace"))]
    assert [seconds for seconds in waits if seconds > 0] == [], "a reload caught an auth retry"
    assert len(own_race) <= len(waits), (own_race, waits)


def plugin_config(root: Path) -> types.SimpleNamespace:
    """The parts of certbot's NamespaceConfig the reverter reads."""
    work = root / "work"
    return types.SimpleNamespace(
        backup_dir=str(work / "backups"), temp_checkpoint_dir=str(work / "temp_checkpoint"),
        in_progress_dir=str(work / "backups" / "IN_PROGRESS"), strict_permissions=False)


def test_broken_snippet_is_refused_before_it_reaches_dovecot(mail_lab, tmp_path):
    before = config_files(mail_lab)
    reloads = dovecot_reloads(mail_lab)
    target = capability_dovecot.DovecotSnippet(str(mail_lab.dovecot.config_file))
    state = ValidationState(str(tmp_path / "state"),
                            reverter.Reverter(plugin_config(tmp_path)))  # type: ignore[arg-type]
    target.begin(state)
    with pytest.raises(errors.PluginError, match="Dovecot refuses the snippet"):
        target.install(state, "protocol imap {\n  imap_capability_bogus = +ACME=x\n}\n")
    assert dovecot_reloads(mail_lab) == reloads
    assert state.restore() == []
    assert state.restore() == []
    assert_restored(mail_lab, before, "imap")


def spin() -> None:
    """A CPU hog, as on a busy CI machine."""
    while True:
        pass


RELOAD_ROUNDS = 12


def test_dovecot_backend_reloads_under_client_loops_on_a_loaded_machine(mail_lab, tmp_path):
    """Back-to-back validations while CPU hogs and four clients run: no client is refused, and
    no login process that had waited for auth is shut down by the next reload (the race the
    reload spacing exists for). A "* BYE Shutting down" is allowed only as Dovecot's own race
    at any reload: a login process that had not yet reached auth when the reload came, which
    Dovecot logs as "waited 0 secs"; every BYE a client met must have such a line."""
    before = config_files(mail_lab)
    log_start = dovecot_log(mail_lab).stat().st_size
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(2)]
    for hog in hogs:
        hog.start()
    loops = [ClientLoop("imap", mail_lab.ports.imap) for _ in range(4)]
    try:
        for loop in loops:
            loop.__enter__()
        for round_number in range(RELOAD_ROUNDS):
            state = ValidationState(str(tmp_path / "state"),
                                    reverter.Reverter(plugin_config(tmp_path)))  # type: ignore
            value = f"round-{round_number}"
            backend = capability_dovecot.DovecotImap(str(mail_lab.dovecot.config_file))
            backend.advertise(state, [value])
            done, seen = capability_probe.wait_until(
                "imap", HOST, mail_lab.ports.imap, False, capability_probe.shows_all([value]),
                PATIENCE)
            assert done, seen
            backend.settle()  # as the plugin's cleanup does
            assert state.restore() == []
            done, seen = capability_probe.wait_until(
                "imap", HOST, mail_lab.ports.imap, False, lambda values: values == [], PATIENCE)
            assert done, seen
            state.finish()
    finally:
        for loop in loops:
            loop.__exit__()
        for hog in hogs:
            hog.terminate()
    assert_only_dovecots_own_byes(mail_lab, [f for loop in loops for f in loop.failures],
                                  log_start)
    assert all(loop.sessions_with_acme > 0 for loop in loops)
    assert_restored(mail_lab, before, "imap")


def test_overriding_capability_names_the_cause(mail_lab, test_ca, tmp_path):
    before = config_files(mail_lab)
    override = mail_lab.dovecot.config_file.parent / "local-override.conf"
    override.write_text("protocol imap {\n  imap_capability = +XTEST\n}\n")
    snippet_path = tmp_path / "early-snippet.conf"
    included = before[mail_lab.dovecot.config_file] + (
        f"!include_try {snippet_path}\n!include_try {override}\n".encode())
    mail_lab.dovecot.config_file.write_bytes(included)
    try:
        result = run_certbot(mail_lab, test_ca, tmp_path, "imap",
                             "--email-capability-dovecot-snippet", str(snippet_path))
        assert result.returncode != 0
        assert "read after it (local.conf?) wins" in result.stderr
        assert mail_lab.dovecot.config_file.read_bytes() == included
        assert not snippet_path.exists()
    finally:
        mail_lab.dovecot.config_file.write_bytes(before[mail_lab.dovecot.config_file])
        override.unlink()
        subprocess.run(["doveadm", "-c", str(mail_lab.dovecot.config_file), "reload"],
                       check=True)
    assert_restored(mail_lab, before, "imap")



def start_certbot(lab: Lab, ca: runtime.LaunchedCA, root: Path, service: str,
                  *extra: str) -> subprocess.Popen:
    return subprocess.Popen(certbot_command(lab, ca, root, service, *extra), env=certbot_env(ca),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def log_tail(root: Path) -> str:
    """The end of certbot's log, to say why a background run failed."""
    return (root / "logs" / "letsencrypt.log").read_text(errors="replace")[-3000:]


def session_in_the_window(lab: Lab, service: str, process: subprocess.Popen,
                          root: Path) -> smtplib.SMTP:
    """A new SMTP session (from RELAYED_CLIENT) whose EHLO shows ACME: it met the swap."""
    while process.poll() is None:
        smtp = smtplib.SMTP(HOST, getattr(lab.ports, service), local_hostname=CLIENT_HOSTNAME,
                            timeout=PATIENCE, source_address=(RELAYED_CLIENT, 0))
        smtp.ehlo()
        if smtp.has_extn("acme"):
            return smtp
        smtp.quit()
    pytest.fail(f"certbot ended before any session met the swap: {log_tail(root)}")


@pytest.mark.parametrize("service", ["smtp", "submission"])
def test_relay_mode_delivers_mail_sent_during_the_validation_from_the_real_client(
        mail_lab, test_ca, tmp_path, service):
    before = config_files(mail_lab)
    mail_lab.empty_mailbox("alice")
    subject = f"relayed through {service}"
    message = mail_lab.message("bob", "alice", subject)
    process = start_certbot(mail_lab, test_ca, tmp_path, service,
                            "--email-capability-postfix-mode", "relay")
    try:
        smtp = session_in_the_window(mail_lab, service, process, tmp_path)
        assert smtp.has_extn("pipelining")  # the real smtpd's keywords, merged with ours
        done, seen = capability_probe.wait_until(
            "smtp", HOST, getattr(mail_lab.ports, service), False, lambda values: values == [],
            PATIENCE)
        assert done, seen
        assert process.poll() is None, "cleanup did not wait for the relayed session"
        master_cf = (mail_lab.postfix.etc / "master.cf").read_text()
        assert "smtpd_upstream_proxy_protocol=haproxy" in master_cf  # the hidden smtpd stays
        assert "spawn" not in master_cf  # while the public service is smtpd again
        if service == "submission":
            smtp.starttls(context=mail_lab.client_tls())
            smtp.login(mail_lab.user("bob").address, mail_lab.user("bob").password)
        smtp.send_message(message)
        smtp.quit()
        assert process.wait(PATIENCE * 6) == 0, log_tail(tmp_path)
    finally:
        process.kill()
        process.wait()
    delivered = mail_lab.wait_for_mail("alice", subject)
    assert f"[{RELAYED_CLIENT}]".encode() in delivered.split(b"\r\n\r\n", 1)[0]
    maillog = mail_lab.postfix.log_path.read_text(errors="replace")
    assert re.search(rf"client=\S*\[{re.escape(RELAYED_CLIENT)}\]", maillog)
    issued(tmp_path)
    assert_restored(mail_lab, before, service)


def test_responder_mode_keeps_earlier_sessions_and_defers_new_senders(mail_lab, test_ca,
                                                                       tmp_path):
    before = config_files(mail_lab)
    mail_lab.empty_mailbox("alice")
    message = mail_lab.message("bob", "alice", "opened before the swap")
    earlier = smtplib.SMTP(HOST, mail_lab.ports.smtp, local_hostname=CLIENT_HOSTNAME,
                           timeout=PATIENCE)
    earlier.ehlo()
    assert earlier.mail(message["From"])[0] == 250
    assert earlier.rcpt(message["To"])[0] == 250
    process = start_certbot(mail_lab, test_ca, tmp_path, "smtp")
    try:
        newcomer = session_in_the_window(mail_lab, "smtp", process, tmp_path)
        refusal, _ = newcomer.docmd("MAIL FROM:<carol@example.net>")
        newcomer.close()
        assert 400 <= refusal < 500
        assert earlier.data(message.as_bytes())[0] == 250
        earlier.quit()
        assert process.wait(PATIENCE * 6) == 0, log_tail(tmp_path)
    finally:
        process.kill()
        process.wait()
    assert b"opened before the swap" in mail_lab.wait_for_mail("alice", "opened before the swap")
    issued(tmp_path)
    assert_restored(mail_lab, before, "smtp")
