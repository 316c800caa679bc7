"""prepare()'s checks before the order: names, CA, credentials, SMTP login, leftover lineages."""
import os

import pytest
from certbot.tests import util as certbot_test_util

from certbot_email import preflight
from certbot_email.transport import MailboxSettings, TransportError, mailbox, smtp
from tests.unit.certbot_versions import config_name
from tests.unit.test_reply_plugin import PluginCase, write_private

ALICE, BOB = "alice@example.com", "bob@example.com"
HOST = "mail.example.com"
TEST_CA = "https://127.0.0.1:14000/directory"


class PreflightCase(PluginCase):
    """email-reply with a complete credentials file, a test CA, and SMTP logins recorded."""

    def setUp(self) -> None:
        super().setUp()
        self.config.server = TEST_CA
        self.config.dry_run = False
        self.config.duplicate = False
        self.config.certname = None
        self.config.csr = None
        self.logins: list[smtp.SmtpSettings] = []
        self.mailbox_logins: list[MailboxSettings] = []
        self.login_error: Exception | None = None
        self.mailbox_login_error: Exception | None = None
        patcher = pytest.MonkeyPatch()
        patcher.setattr(smtp, "check_login", self._check_login)
        patcher.setattr(mailbox, "check_login", self._check_mailbox_login)
        self.addCleanup(patcher.undo)

    def _check_login(self, settings: smtp.SmtpSettings) -> None:
        self.logins.append(settings)
        if self.login_error is not None:
            raise self.login_error

    def _check_mailbox_login(self, settings: MailboxSettings) -> None:
        self.mailbox_logins.append(settings)
        if self.mailbox_login_error is not None:
            raise self.mailbox_login_error

    def request(self, *names: str) -> None:
        self.config.domains = [config_name(name) for name in names]

    def refusal(self) -> str:
        with pytest.raises(preflight.PrepareError) as raised:
            self.plugin.prepare()
        assert repr(raised.value) == str(raised.value)  # certbot shows prepare errors by repr
        return str(raised.value)


class TestNamesAndCA(PreflightCase):

    def test_a_host_name_is_refused_naming_the_authenticators_for_it(self) -> None:
        self.request(ALICE, HOST)
        message = self.refusal()
        assert f"but {HOST} is a host name" in message
        assert "-a email-dns, -a email-capability" in message
        assert self.logins == []

    def test_lets_encrypt_is_refused_for_addresses_before_any_account(self) -> None:
        self.config.server = "https://acme-v02.api.letsencrypt.org/directory"
        self.request(ALICE)
        message = self.refusal()
        assert message.startswith("Let's Encrypt (certbot's default CA) does not issue")
        assert "--server DIRECTORY-URL" in message and "Which CA" in message

    def test_lets_encrypt_is_fine_for_host_names(self) -> None:
        self.config.server = "https://acme-v02.api.letsencrypt.org/directory"
        preflight.check_request(self.config, "email-dns", for_mailboxes=False)

    def test_mailboxes_are_refused_by_the_host_name_authenticators(self) -> None:
        self.request(HOST, ALICE, BOB)
        with pytest.raises(preflight.PrepareError,
                           match=f"-a email-capability certifies host names .* but {ALICE}, "
                                 f"{BOB} are email addresses.*-a email-reply"):
            preflight.check_request(self.config, "email-capability", for_mailboxes=False)


class TestMailAccounts(PreflightCase):

    def test_missing_credentials_option_is_refused_before_the_order(self) -> None:
        self.config.email_reply_credentials = None
        self.request(ALICE)
        message = self.refusal()
        assert "needs --email-reply-credentials PATH" in message
        assert "--email-reply-manual" in message

    def test_missing_credentials_file_is_named(self) -> None:
        missing = os.path.join(self.tempdir, "typo.ini")
        self.config.email_reply_credentials = missing
        self.request(ALICE)
        assert f"--email-reply-credentials {missing}: there is no such file" in self.refusal()

    def test_unreadable_credentials_file_is_named(self) -> None:
        patcher = pytest.MonkeyPatch()
        patcher.setattr(os, "access", lambda path, mode: path != self.credentials)
        self.addCleanup(patcher.undo)
        self.request(ALICE)
        assert "this user cannot read it" in self.refusal()

    def test_incomplete_account_for_an_address_is_named(self) -> None:
        write_private(self.credentials, "[bob@example.com]\nimap_host = imap.example.com\n")
        self.request(BOB)
        message = self.refusal()
        assert "sets no imap_user, imap_password for bob@example.com" in message
        assert self.logins == []

    def test_each_submission_server_is_logged_in_to_once(self) -> None:
        self.request(ALICE, BOB, "carol@example.com")
        self.plugin.prepare()
        assert sorted((s.host, s.user) for s in self.logins) == [
            ("imap.example.com", "alice"), ("smtp.example.com", "bob")]

    def test_each_mailbox_is_logged_in_to_once(self) -> None:
        self.request(ALICE, BOB, "carol@example.com")
        self.plugin.prepare()
        # carol has no section, so she shares the top-level mailbox with alice.
        assert sorted((m.host, m.user) for m in self.mailbox_logins) == [
            ("imap.example.com", "alice"), ("imap.example.com", "bob")]

    def test_a_refused_mailbox_login_is_found_before_the_order(self) -> None:
        self.mailbox_login_error = TransportError("IMAP login as 'bob' at imap.example.com was "
                                                  "refused; check the user and password")
        self.request(BOB)
        message = self.refusal()
        assert message.startswith("IMAP login as 'bob' at imap.example.com was refused")
        assert message.endswith(f"(for {BOB}, from {self.credentials})")

    def test_a_refused_login_names_the_addresses_and_the_file(self) -> None:
        self.login_error = TransportError("SMTP submission server smtp.example.com:587 "
                                          "refused the login as 'bob' (535)")
        self.request(BOB)
        message = self.refusal()
        assert message.endswith(f"(535) (for {BOB}, from {self.credentials})")

    def test_manual_mode_needs_no_credentials(self) -> None:
        self.config.email_reply_credentials = None
        self.config.email_reply_manual = True
        self.config.noninteractive_mode = False
        self.request(ALICE)
        self.plugin.prepare()
        assert self.logins == [] and self.mailbox_logins == []


class TestLeftoverLineage(PreflightCase):

    def leave_behind(self, name: str, *files: str) -> str:
        live = os.path.join(self.config.live_dir, name)
        os.makedirs(live)
        for file in files:
            open(os.path.join(live, file), "wb").close()
        return live

    def test_a_live_directory_left_by_certbot_delete_is_refused(self) -> None:
        live = self.leave_behind(ALICE, "bundle.p12")
        self.request(ALICE)
        message = self.refusal()
        assert f"certbot has no certificate named '{ALICE}', but {live} is left over" in message
        assert "(it holds bundle.p12)" in message and "--cert-name" in message
        assert self.logins == []

    def test_an_archive_directory_left_over_is_refused_too(self) -> None:
        archive = os.path.join(self.config.default_archive_dir, "alice")
        os.makedirs(archive)
        open(os.path.join(archive, "cert1.pem"), "wb").close()
        self.config.certname = "alice"
        self.request(ALICE)
        assert f"{archive} is left over" in self.refusal()

    def test_an_empty_live_directory_is_no_obstacle(self) -> None:
        self.leave_behind(ALICE)
        self.request(ALICE)
        self.plugin.prepare()

    def test_a_lineage_of_that_name_is_renewed_not_refused(self) -> None:
        self.leave_behind(ALICE, "bundle.p12")
        os.makedirs(self.config.renewal_configs_dir)
        open(os.path.join(self.config.renewal_configs_dir, f"{ALICE}.conf"), "w").close()
        self.request(ALICE)
        self.plugin.prepare()

    def test_a_dry_run_saves_nothing_so_is_not_refused(self) -> None:
        self.leave_behind(ALICE, "bundle.p12")
        self.config.dry_run = True
        self.request(ALICE)
        self.plugin.prepare()

    def test_names_an_existing_lineage_covers_go_to_that_lineage(self) -> None:
        certbot_test_util.make_lineage(self.config.config_dir, "sample-renewal.conf")
        host = "c.encryption-example.com"  # the name in certbot's sample lineage
        self.leave_behind(host, "stray.txt")
        self.request(host)
        preflight.check_request(self.config, "email-dns", for_mailboxes=False)
        self.request(host, "other.example.com")  # a superset: certbot offers to expand it
        preflight.check_request(self.config, "email-dns", for_mailboxes=False)
        self.config.duplicate = True
        preflight.check_request(self.config, "email-dns", for_mailboxes=False)
        self.config.duplicate = False
        self.leave_behind("other.example.com", "stray.txt")  # no lineage covers this one
        self.request("other.example.com")
        with pytest.raises(preflight.PrepareError, match="other.example.com is left over"):
            preflight.check_request(self.config, "email-dns", for_mailboxes=False)

