"""The record of a validation in progress, so that no mail server is ever left changed.

Before any change, ``ValidationState.begin`` writes ``state.json`` (which backend, the commands
that reload the daemons once their files are back, the runtime directory to delete), and
certbot's reverter keeps byte copies of every file we are about to change in its temporary
checkpoint. ``restore()`` puts the files back, runs the recorded commands and deletes our files.
It is idempotent: ``cleanup()`` calls it, and ``prepare()`` calls it again when an earlier run
was killed in the middle.
"""
import datetime
import json
import logging
import os
import pwd
import shutil
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

from certbot import errors, reverter

from certbot_email_smtpext import commands

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
RESPONDER_COPY = "responder.py"
VALUES_FILE = "values.json"
CERT_FILE, KEY_FILE = "throwaway-cert.pem", "throwaway-key.pem"
#: Restore commands are reloads; one that hangs must not keep the server changed forever.
#: How long responders spawned just before the restore may still need the runtime files.
RUNTIME_DRAIN_SECONDS = 3.0
#: How long a restore waits for relayed sessions to end before removing what they talk to.
RELAY_DRAIN_SECONDS = 120.0


class ValidationState:
    """``state.json`` in the state directory plus certbot's temporary checkpoint."""

    def __init__(self, state_dir: str, files: reverter.Reverter) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.files = files

    def pending(self) -> Optional[dict[str, Any]]:
        """The record of a validation that has not been restored yet, if any."""
        try:
            with open(self.path, encoding="utf-8") as state_file:
                return dict(json.load(state_file))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise errors.PluginError(f"cannot read {self.path} ({error}); restore the mail "
                                     "server by hand, then delete that file") from error

    def begin(self, backend: str, after_restore: Sequence[Sequence[str]],
              runtime_dir: Optional[str] = None,
              handover: Sequence[Sequence[str]] = ()) -> None:
        """Record what ``restore`` must do, before anything changes.

        ``handover`` commands give the port back while our other changes stay, so that
        sessions our processes relay can end before the files are put back.
        """
        if self.pending() is not None:
            raise errors.PluginError(f"{self.path} records a validation that was not restored; "
                                     "run certbot again to repair it first")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        record = {"backend": backend, "pid": os.getpid(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "after_restore": [list(command) for command in after_restore],
                  "runtime_dir": runtime_dir,
                  "handover": [list(command) for command in handover]}
        temporary = self.path + ".new"
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                  encoding="utf-8") as state_file:
            json.dump(record, state_file, indent=1)
            state_file.flush()
            os.fsync(state_file.fileno())
        os.replace(temporary, self.path)

    def protect(self, path: str) -> None:
        """Keep the original of ``path`` (or note that we create it) before it is written."""
        if os.path.exists(path):
            self.files.add_to_temp_checkpoint({path}, f"email-capability: {path}\n")
        else:
            self.files.register_file_creation(True, path)

    def restore(self, before_commands: Optional[Callable[[], None]] = None) -> list[str]:
        """Hand over and let relays end, put the files back, reload; what failed.

        Between the files and the reloads ``before_commands`` runs.
        The standalone backend closes its responder in ``before_commands``: as late as
        possible, so that the port is without a listener only while the daemon reloads.
        """
        record = self.pending()
        if record is None:
            return []
        problems = []
        for command in record.get("handover", []):
            problems += _run(command)
        if record.get("handover") and not problems and record.get("runtime_dir"):
            _wait_for_processes_using(record["runtime_dir"], RELAY_DRAIN_SECONDS)
        try:
            self.files.revert_temporary_config()
        except errors.ReverterError as error:
            problems.append(f"restoring the saved configuration files failed: {error}")
        if before_commands is not None:
            before_commands()
        for command in record.get("after_restore", []):
            problems += _run(command)
        return problems

    def finish(self) -> None:
        """Once the real server answers again: delete the runtime files and the record.

        Not part of ``restore``: Postfix may still spawn a responder for a connection accepted
        just before its reload took effect, and that responder needs its files.
        """
        record = self.pending()
        if record is None:
            return
        runtime_dir = record.get("runtime_dir")
        if runtime_dir:
            _wait_for_processes_using(runtime_dir, RUNTIME_DRAIN_SECONDS)
            shutil.rmtree(runtime_dir, ignore_errors=True)
        os.remove(self.path)


def _wait_for_processes_using(directory: str, timeout: float) -> None:
    """Give responders that name ``directory`` on their command line time to load or finish."""
    deadline = time.monotonic() + timeout
    marker = directory.encode()
    while time.monotonic() < deadline:
        users = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if marker in cmdline.read():
                        users.append(pid)
            except OSError:
                continue
        if not users:
            return
        time.sleep(0.05)


def _run(command: Sequence[str]) -> list[str]:
    """Run one restore command; what went wrong, if anything (restoring goes on regardless)."""
    try:
        commands.run(command)
    except errors.PluginError as error:
        return [str(error)]
    return []


def make_runtime_dir(owner: str) -> str:
    """A fresh directory for what a spawned responder must read: root owns it and ``owner``'s
    group may only enter it, so the unprivileged user can plant nothing (no symlink) in it."""
    try:
        account = pwd.getpwnam(owner)
    except KeyError:
        raise errors.PluginError(f"user {owner!r} does not exist; name an unprivileged user "
                                 "that may run the responder") from None
    directory = tempfile.mkdtemp(prefix="certbot-email-capability-")
    os.chown(directory, 0, account.pw_gid)
    os.chmod(directory, 0o710)
    return directory


def write_for_group(path: str, data: bytes, directory: str) -> None:
    """Write a 0640 root file that ``directory``'s group may read, atomically; never through a
    symlink or onto an existing file."""
    temporary = path + ".new"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    with open(descriptor, "wb") as out:
        os.fchown(descriptor, -1, os.stat(directory).st_gid)
        out.write(data)
    os.replace(temporary, path)


def write_throwaway_certificate(directory: str, hostname: str) -> tuple[str, str]:
    """A self-signed P-256 certificate for the responder's TLS; the CA does not verify it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, CERT_FILE), os.path.join(directory, KEY_FILE)
    write_for_group(cert_path, certificate.public_bytes(serialization.Encoding.PEM), directory)
    write_for_group(key_path, key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), directory)
    return cert_path, key_path


def write_values(directory: str, values: Sequence[str]) -> str:
    """The values file a spawned responder reads on every connection."""
    path = os.path.join(directory, VALUES_FILE)
    write_for_group(path, json.dumps(list(values)).encode("utf-8"), directory)
    return path
