"""A mail admin's first hour: each wall of issue 13, typed as a person types it, and the
message that person reads.

Real certbot CLI runs against the project's test CA (or the lab's Pebble, a CA without email
identifiers) and the session lab's Postfix, Dovecot, OpenDKIM and BIND. Where a mistake must
be caught before the order, the test also asserts that the CA never heard of one: its log holds
no created order, and alice's INBOX got no challenge mail.
"""
import email
import email.policy
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.test_email_reply_mail import ALICE, LOOKBACK
from tests.lab.lab import Lab
from tests.lab.ports import HOST, free_port
from tests.lab.testca import RunningTestCA, mailbox_credentials, remove_txt, running_test_ca

pytestmark = pytest.mark.usefixtures("fresh_mailboxes")

VENV_BIN = Path(sys.executable).parent
README = Path(__file__).resolve().parent.parent.parent / "README.rst"
CERTBOT = str(VENV_BIN / "certbot")
CERTBOT_TIMEOUT = 180
ORDER_CREATED = "created for ["


@pytest.fixture(name="test_ca")
def fixture_test_ca(lab: Lab, tmp_path: Path) -> Iterator[RunningTestCA]:
    with running_test_ca(lab, tmp_path / "testca") as running:
        yield running


def certbot(tmp_path: Path, *arguments: str, ca_root: Path | None = None,
            path: str | None = None, executable: str = CERTBOT,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """certbot as typed, plus non-interactive registration and state below tmp_path."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.lower().endswith("_proxy")}
    if ca_root is not None:
        environment["REQUESTS_CA_BUNDLE"] = str(ca_root)
    if path is not None:
        environment["PATH"] = path
    interactive = stdin is not None
    return subprocess.run(
        [executable, *arguments, *([] if interactive else ["--non-interactive"]),
         "--agree-tos", "--register-unsafely-without-email",
         "--config-dir", str(tmp_path / "config"), "--work-dir", str(tmp_path / "work"),
         "--logs-dir", str(tmp_path / "logs")],
        env=environment, input=stdin, capture_output=True, text=True, timeout=CERTBOT_TIMEOUT,
        check=False)


def email_reply(lab: Lab, credentials: Path | None, *more: str) -> list[str]:
    """``-a email-reply`` for alice with the lab's DNS for DKIM keys."""
    return ["-a", "email-reply", "--email-reply-dkim-dns-server", f"{HOST}:{lab.dns.port}",
            "--email-reply-lookback-seconds", str(int(LOOKBACK.total_seconds())),
            *(["--email-reply-credentials", str(credentials)] if credentials else []), *more]


def issue_for_alice(lab: Lab, tmp_path: Path, test_ca: RunningTestCA, *more: str,
                    **certbot_options: object) -> subprocess.CompletedProcess[str]:
    credentials = mailbox_credentials(lab, "alice", tmp_path / "alice.ini")
    return certbot(tmp_path, "certonly", "--server", test_ca.directory_url,
                   *email_reply(lab, credentials), *more, "-d", ALICE, ca_root=test_ca.root,
                   **certbot_options)  # type: ignore[arg-type]


def assert_ca_heard_nothing(lab: Lab, test_ca: RunningTestCA) -> None:
    """No order reached the CA, so no challenge mail went to alice."""
    assert ORDER_CREATED not in test_ca.log.read_text()
    client = lab.imap("alice")
    try:
        client.select_folder("INBOX")
        assert client.search(["SUBJECT", "ACME:"]) == []
    finally:
        client.logout()


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """What certbot told the person, for a run that must have failed."""
    assert result.returncode != 0, result.stdout
    return " ".join(result.stderr.split())


# ---- which CA ------------------------------------------------------------------------------

def test_an_address_for_certbots_default_ca_is_refused_before_any_account(
        lab: Lab, tmp_path: Path) -> None:
    credentials = mailbox_credentials(lab, "alice", tmp_path / "alice.ini")
    message = refused(certbot(tmp_path, "certonly", *email_reply(lab, credentials), "-d", ALICE))
    assert "Let's Encrypt (certbot's default CA) does not issue certificates for email " \
        "addresses. Give a CA that does with --server DIRECTORY-URL: see 'Which CA issues " \
        "certificates for email addresses' in the certbot-email README" in message
    assert not (tmp_path / "config" / "accounts").exists()


def test_a_ca_without_email_identifiers_gets_a_hint_not_a_bare_refusal(
        lab: Lab, tmp_path: Path) -> None:
    credentials = mailbox_credentials(lab, "alice", tmp_path / "alice.ini")
    message = refused(certbot(tmp_path, "certonly", "--server", lab.pebble.directory_url,
                              *email_reply(lab, credentials), "-d", ALICE,
                              ca_root=lab.pebble.ca_bundle))
    assert "The CA refused the order for alice@example.test: Order includes unknown " \
        "identifier type email. This CA does not issue certificates for email addresses" in \
        message
    assert "Give a CA that does with --server DIRECTORY-URL" in message
    assert "An unexpected error occurred" not in message


# ---- mistakes caught before the order -------------------------------------------------------

@pytest.mark.parametrize("address, complaint", [
    ("alice@@example.test", "'alice@@example.test' has more than one '@'"),
    ("alice@exa_mple.test", "the domain 'exa_mple.test' is not a valid host name: the label "
                            "'exa_mple' is not letters, digits and inner hyphens"),
    ("alice@example", "the domain 'example' is not a fully qualified name"),
])
def test_a_malformed_address_stops_at_the_command_line(
        lab: Lab, tmp_path: Path, test_ca: RunningTestCA, address: str, complaint: str) -> None:
    credentials = mailbox_credentials(lab, "alice", tmp_path / "alice.ini")
    message = refused(certbot(tmp_path, "certonly", "--server", test_ca.directory_url,
                              *email_reply(lab, credentials), "-d", address,
                              ca_root=test_ca.root))
    assert complaint in message and "ValueError" not in message
    assert_ca_heard_nothing(lab, test_ca)


@pytest.mark.parametrize("mistake, complaint", [
    ("no option", "email-reply needs --email-reply-credentials PATH"),
    ("no file", "there is no such file. Create it (chmod 600)"),
    ("no password", "sets no imap_password for alice@example.test; add them at the top or in "
                    "a [alice@example.test] section"),
    ("wrong password", "refused the login as 'alice@example.test' (535); check the SMTP user "
                       "and password"),
    ("wrong mailbox password", "IMAP login as 'alice@example.test' at 127.0.0.1 was refused; "
                               "check the user and password"),
])
def test_a_credentials_mistake_stops_before_the_ca_sends_a_mail(
        lab: Lab, tmp_path: Path, test_ca: RunningTestCA, mistake: str, complaint: str) -> None:
    credentials: Path | None = mailbox_credentials(lab, "alice", tmp_path / "alice.ini")
    assert credentials is not None
    if mistake == "no option":
        credentials = None
    elif mistake == "no file":
        credentials = tmp_path / "typo.ini"
    elif mistake == "no password":
        text = credentials.read_text()
        credentials.write_text("".join(line + "\n" for line in text.splitlines()
                                       if not line.startswith("imap_password")))
    elif mistake == "wrong password":
        credentials.write_text(credentials.read_text() + "smtp_password = not-her-password\n")
    else:
        wrong = "imap_password = not-her-password"
        credentials.write_text("".join(
            (wrong if line.startswith("imap_password") else line) + "\n"
            for line in credentials.read_text().splitlines()))
    message = refused(certbot(tmp_path, "certonly", "--server", test_ca.directory_url,
                              *email_reply(lab, credentials), "-d", ALICE, ca_root=test_ca.root))
    assert complaint in message
    assert_ca_heard_nothing(lab, test_ca)


@pytest.mark.parametrize("transport, port_of, complaint", [
    ("imaps+submission", "submissions", "sent no greeting within 5 s but completed a TLS "
     "handshake at once, so it expects implicit TLS, not STARTTLS: set smtp_tls = implicit"),
    ("imap-starttls+submissions", "submission", "greets in plaintext, so it expects STARTTLS, "
     "not implicit TLS: set smtp_tls = starttls"),
])
def test_an_smtp_tls_mode_that_does_not_fit_the_port_is_named(
        lab: Lab, tmp_path: Path, test_ca: RunningTestCA, transport: str, port_of: str,
        complaint: str) -> None:
    credentials = mailbox_credentials(lab, "alice", tmp_path / "alice.ini", transport)
    port = getattr(lab.ports, port_of)
    text = credentials.read_text()
    credentials.write_text("".join(
        f"smtp_port = {port}\n" if line.startswith("smtp_port") else line + "\n"
        for line in text.splitlines()))
    message = refused(certbot(tmp_path, "certonly", "--server", test_ca.directory_url,
                              *email_reply(lab, credentials), "-d", ALICE, ca_root=test_ca.root))
    assert f"SMTP submission server {HOST}:{port} {complaint}" in message
    assert f"(for alice@example.test, from {credentials})" in message
    assert "Connection unexpectedly closed" not in message
    assert_ca_heard_nothing(lab, test_ca)


@pytest.mark.parametrize("authenticator, name, complaint", [
    (["-a", "email-reply"], "mail.example.test",
     "-a email-reply certifies email addresses (S/MIME, -d alice@example.com), but "
     "mail.example.test is a host name. Get a certificate for host names in a separate run, "
     "with -a email-dns, -a email-capability or another authenticator"),
    (["-a", "email-dns"], ALICE,
     "-a email-dns certifies host names (TLS, -d mail.example.com), but alice@example.test is "
     "an email address. Get an S/MIME certificate for addresses in a separate run, with -a "
     "email-reply"),
    (["-a", "email-capability", "--email-capability-service", "imaps"], ALICE,
     "-a email-capability certifies host names"),
])
def test_an_authenticator_given_the_wrong_kind_of_name_says_which_one_fits(
        lab: Lab, tmp_path: Path, test_ca: RunningTestCA, authenticator: list[str], name: str,
        complaint: str) -> None:
    credentials = mailbox_credentials(lab, "alice", tmp_path / "alice.ini")
    options = ["--email-reply-credentials", str(credentials)] if "email-reply" in \
        authenticator else []
    message = refused(certbot(tmp_path, "certonly", "--server", test_ca.directory_url,
                              *authenticator, *options, "-d", name, ca_root=test_ca.root))
    assert complaint in message
    assert "does not support any combination of challenges" not in message
    assert_ca_heard_nothing(lab, test_ca)


def test_a_name_whose_live_directory_outlived_certbot_delete_is_refused_before_the_order(
        lab: Lab, tmp_path: Path, test_ca: RunningTestCA) -> None:
    assert issue_for_alice(lab, tmp_path, test_ca).returncode == 0
    live = tmp_path / "config" / "live" / ALICE
    # The bundle is made by a hook of the admin's own, which certbot delete knows nothing of
    # (as from renewal-hooks/deploy/; certbot < 5.3 runs those only on renewal).
    subprocess.run([VENV_BIN / "certbot-email-pkcs12"], check=True, timeout=CERTBOT_TIMEOUT,
                   env={**os.environ, "RENEWED_LINEAGE": str(live)})
    assert (live / "bundle.p12").is_file()
    assert certbot(tmp_path, "delete", "--cert-name", ALICE).returncode == 0
    assert sorted(path.name for path in live.iterdir()) == ["bundle.p12"]
    orders_before = test_ca.log.read_text().count(ORDER_CREATED)
    lab.empty_mailbox("alice")
    message = refused(issue_for_alice(lab, tmp_path, test_ca))
    assert f"certbot has no certificate named '{ALICE}', but {live} is left over from an " \
        f"earlier one (it holds bundle.p12), as certbot delete leaves files it did not make." \
        in message
    assert f"move {live} away, or choose another name with --cert-name" in message
    assert test_ca.log.read_text().count(ORDER_CREATED) == orders_before
    shutil.rmtree(live)  # what the message says to do
    assert issue_for_alice(lab, tmp_path, test_ca).returncode == 0


# ---- the PKCS#12 hook from a virtualenv, and certbot delete ---------------------------------

def test_the_pkcs12_hook_works_by_absolute_path_and_goes_with_certbot_delete(
        lab: Lab, tmp_path: Path, test_ca: RunningTestCA) -> None:
    # certbot's pip instructions: a venv, and a symlink to its certbot; the venv's bin is not
    # in PATH.
    bin_dir = tmp_path / "usr-bin"
    bin_dir.mkdir()
    (bin_dir / "certbot").symlink_to(CERTBOT)
    path = f"{bin_dir}:/usr/bin:/bin"
    by_name = issue_for_alice(lab, tmp_path, test_ca, "--deploy-hook", "certbot-email-pkcs12",
                              path=path, executable=str(bin_dir / "certbot"))
    assert "Unable to find deploy-hook command certbot-email-pkcs12 in the PATH" in \
        refused(by_name)
    (readme_recipe,) = [line.strip() for line in README.read_text().splitlines()
                        if "readlink -f" in line and "certbot-email-pkcs12" in line]
    hook = subprocess.run(["bash", "-c", readme_recipe], env={"PATH": path}, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert hook == str(VENV_BIN / "certbot-email-pkcs12")
    issued = issue_for_alice(lab, tmp_path, test_ca, "--deploy-hook", hook, path=path,
                             executable=str(bin_dir / "certbot"))
    assert issued.returncode == 0, issued.stderr
    live = tmp_path / "config" / "live" / ALICE
    assert (live / "bundle.p12").stat().st_mode & 0o777 == 0o600
    assert f"renew_hook = {hook}" in (tmp_path / "config" / "renewal" / f"{ALICE}.conf").read_text()
    deleted = certbot(tmp_path, "delete", "--cert-name", ALICE, path=path,
                      executable=str(bin_dir / "certbot"))
    assert deleted.returncode == 0, deleted.stderr
    assert not live.exists()  # bundle.p12 went with the lineage, and so did the directory
    lab.empty_mailbox("alice")
    again = issue_for_alice(lab, tmp_path, test_ca, "--deploy-hook", hook, path=path,
                            executable=str(bin_dir / "certbot"))
    assert again.returncode == 0, again.stderr
    assert (live / "bundle.p12").is_file()


# ---- email-dns against nameservers that refuse connections ----------------------------------

def test_email_dns_gives_up_on_refusing_nameservers_and_names_the_options(
        lab: Lab, tmp_path: Path) -> None:
    bind = lab.dns
    credentials = tmp_path / "dns.ini"
    credentials.write_text(f"email_dns_server = {HOST}\nemail_dns_port = {bind.port}\n"
                           f"email_dns_name = {bind.key_name}.\n"
                           f"email_dns_secret = {bind.key_secret}\n"
                           f"email_dns_algorithm = {bind.key_algorithm}\n")
    credentials.chmod(0o600)
    wrong_port = free_port()  # reserved, so nothing listens on it
    host = f"refused-{secrets.token_hex(3)}.{lab.domain}"
    message = refused(certbot(tmp_path, "certonly", "--server", lab.pebble.directory_url,
                              "-a", "email-dns", "--email-dns-credentials", str(credentials),
                              "--email-dns-nameserver-port", str(wrong_port), "-d", host,
                              ca_root=lab.pebble.ca_bundle))
    assert f"nameserver ns.{lab.domain}. ({HOST}:{wrong_port}) refused every connection for " \
        f"3 s: nothing serves DNS at that address and port." in message
    assert "give it with --email-dns-nameserver-port" in message
    assert "--email-dns-check-servers HOST[:PORT]" in message
    assert "NOTIFY" not in message
    assert bind.txt(f"_acme-challenge.{host}") == []


# ---- the test CA --------------------------------------------------------------------------

def test_the_test_ca_revokes_by_certificate_key_and_refuses_a_second_revocation(
        lab: Lab, tmp_path: Path, test_ca: RunningTestCA) -> None:
    assert issue_for_alice(lab, tmp_path, test_ca).returncode == 0
    live = tmp_path / "config" / "live" / ALICE
    by_key = certbot(tmp_path, "revoke", "--server", test_ca.directory_url,
                     "--cert-path", str(live / "cert.pem"), "--key-path",
                     str(live / "privkey.pem"), "--reason", "keycompromise",
                     "--no-delete-after-revoke", ca_root=test_ca.root)
    assert by_key.returncode == 0, by_key.stderr
    assert "Congratulations! You have successfully revoked" in by_key.stdout
    serial = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes()).serial_number
    assert f"certificate {serial:x} REVOKED (reason 1) by the certificate's key" in \
        test_ca.log.read_text()
    again = certbot(tmp_path, "revoke", "--cert-name", ALICE, "--no-delete-after-revoke",
                    ca_root=test_ca.root)
    assert "the certificate is already revoked" in refused(again)


def test_the_test_ca_dkim_record_goes_into_the_zone_with_nsupdate_as_written(
        lab: Lab, tmp_path: Path) -> None:
    selector = f"nsupdate{secrets.token_hex(3)}"
    owner = f"{selector}._domainkey.{lab.domain}"
    with running_test_ca(lab, tmp_path / "testca", "--dkim-selector", selector):
        record_file = tmp_path / "testca" / "ca" / "dkim-record.txt"
        record = record_file.read_text()
        try:
            remove_txt(lab, owner)  # what running_test_ca published; nsupdate adds it again
            update = f"server {HOST} {lab.dns.port}\nupdate add {record}send\n"
            published = subprocess.run(["nsupdate", "-k", str(lab.dns.key_file)], input=update,
                                       capture_output=True, text=True, check=False)
            assert published.returncode == 0, published.stderr
            (value,) = lab.dns.txt(owner)
            assert value.startswith("v=DKIM1;") and len(value) > 255
        finally:
            remove_txt(lab, owner)


class Forwarder:
    """A TCP port that relays to the lab's IMAPS once started: an IMAP server coming back."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.listener: socket.socket | None = None

    def start(self) -> None:
        self.listener = socket.create_server((HOST, self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((HOST, self.target))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._copy, args=(source, sink), daemon=True).start()

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket) -> None:
        with source, sink:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()


def wait_for_line(log: Path, text: str, patience: float = 30) -> None:
    deadline = time.monotonic() + patience
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"no {text!r} in {log}:\n{log.read_text()}"
        time.sleep(0.1)


def test_the_test_ca_logs_an_imap_outage_once_and_its_end_once(lab: Lab, tmp_path: Path) -> None:
    port = free_port()
    forwarder = Forwarder(port, lab.ports.imaps)
    with running_test_ca(lab, tmp_path / "testca", "--imap-port", str(port),
                         "--poll-seconds", "0.1") as test_ca:
        try:
            wait_for_line(test_ca.log, "Cannot read the CA mailbox")
            time.sleep(1)  # ten more failed polls
            forwarder.start()
            wait_for_line(test_ca.log, "can be read again")
        finally:
            forwarder.stop()
    log = test_ca.log.read_text()
    assert log.count("Cannot read the CA mailbox ca@example.test on 127.0.0.1:") == 1
    assert "ConnectionRefusedError" in log
    assert log.count("can be read again") == 1
    assert "Traceback" not in log


# ---- manual mode --------------------------------------------------------------------------

def test_manual_mode_says_a_mistyped_mail_file_does_not_exist(
        lab: Lab, tmp_path: Path, test_ca: RunningTestCA) -> None:
    typo = tmp_path / "Downloads" / "challenge.eml"
    result = certbot(tmp_path, "certonly", "--server", test_ca.directory_url,
                     *email_reply(lab, None, "--email-reply-manual"), "-d", ALICE,
                     ca_root=test_ca.root, stdin=f"{typo}\n")
    message = " ".join((result.stdout + result.stderr).split())
    assert f"There is no file '{typo}'. Check the path of the saved mail, or paste the mail's " \
        f"Subject instead." in message
    assert "Subject does not start with" not in message
    assert result.returncode != 0  # no second answer came: no challenge mail was given
    challenge = email.message_from_bytes(lab.wait_for_mail("alice", "ACME:"),
                                         policy=email.policy.default)
    assert challenge["To"] == ALICE  # the CA did mail it; only the path was wrong
