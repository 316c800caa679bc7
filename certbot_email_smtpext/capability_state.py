"""The record of a validation in progress, so that no mail server is ever left changed.

Before any change, ``ValidationState.begin`` writes ``state.json`` (which backend, the commands
that reload the daemons once their files are back, the runtime directory to delete), and
certbot's reverter keeps byte copies of every file we are about to change in its temporary
checkpoint. ``restore()`` puts the files back, runs the recorded commands and deletes our files.
It is idempotent: ``cleanup()`` calls it, and ``repair()`` calls it again when an earlier run
was killed in the middle: every certbot run does, before its command starts (``at_startup``).
The record names commands that run as root, so it is only read from a root-owned directory and
file that nobody else may write.
"""
import datetime
import json
import logging
import os
import pwd
import shutil
import stat
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

from certbot import errors, reverter

from certbot_email_smtpext import commands

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
#: In the default state directory while a run keeps its record elsewhere (--state-dir), so that
#: a later run without that option still finds it.
POINTER_FILE = "state-dir"
#: Where the runtime directories go first: the daemons see /run, which PrivateTmp=true hides
#: nothing of (unlike certbot's /tmp).
RUNTIME_PARENT = "/run"
RUNTIME_PREFIX = "certbot-email-capability-"
RESPONDER_COPY = "responder.py"
VALUES_FILE = "values.json"
CERT_FILE, KEY_FILE = "throwaway-cert.pem", "throwaway-key.pem"
#: Restore commands are reloads; one that hangs must not keep the server changed forever.
#: How long responders spawned just before the restore may still need the runtime files.
RUNTIME_DRAIN_SECONDS = 3.0
#: How long a restore waits for relayed sessions to end before removing what they talk to.
RELAY_DRAIN_SECONDS = 120.0


class ValidationState:
    """``state.json`` in the state directory plus certbot's temporary checkpoint.

    ``default_dir`` is where a later run looks first; a record kept elsewhere leaves a pointer
    there.
    """

    def __init__(self, state_dir: str, files: reverter.Reverter,
                 default_dir: Optional[str] = None) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.files = files
        self.default_dir = default_dir or state_dir
        self._pointer = (None if _same_dir(self.default_dir, state_dir)
                         else os.path.join(self.default_dir, POINTER_FILE))

    def pending(self) -> Optional[dict[str, Any]]:
        """The record of a validation that has not been restored yet, if any."""
        if not os.path.lexists(self.path):
            return None
        check_private(self.state_dir)
        try:
            with open_private(self.path) as state_file:
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
        for directory in dict.fromkeys([self.default_dir, self.state_dir]):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            check_private(directory)
        if self.pending() is not None:
            raise errors.PluginError(f"{self.path} records a validation that was not restored; "
                                     "run certbot again to repair it first")
        record = {"backend": backend, "pid": os.getpid(), "pid_started": _started(os.getpid()),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "after_restore": [list(command) for command in after_restore],
                  "runtime_dir": runtime_dir,
                  "handover": [list(command) for command in handover]}
        if self._pointer is not None:
            _write_atomically(self._pointer, os.path.abspath(self.state_dir).encode())
        _write_atomically(self.path, json.dumps(record, indent=1).encode())

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
        runtime_dir = _runtime_dir(record)
        for command in record.get("handover", []):
            problems += _run(command)
        if record.get("handover") and not problems and runtime_dir:
            _wait_for_processes_using(runtime_dir, RELAY_DRAIN_SECONDS)
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
        runtime_dir = _runtime_dir(record)
        if runtime_dir:
            _wait_for_processes_using(runtime_dir, RUNTIME_DRAIN_SECONDS)
            shutil.rmtree(runtime_dir, ignore_errors=True)
        os.remove(self.path)
        if self._pointer is not None and os.path.lexists(self._pointer):
            os.remove(self._pointer)


def repair(state: ValidationState) -> bool:
    """Undo what a killed run left changed; whether there was anything. PluginError if that
    run is still alive or the restore fails (the record then stays for the next try)."""
    record = state.pending()
    if record is None:
        return False
    pid = record.get("pid")
    started = record.get("pid_started")
    if isinstance(pid, int) and pid != os.getpid() and started and _started(pid) == started:
        raise errors.PluginError(f"{state.path}: process {pid} is still in the middle of an "
                                 "email-capability validation; let it finish first")
    logger.warning("Restoring the mail server after an interrupted email-capability "
                   "validation (backend %s, started %s by pid %s)", record.get("backend"),
                   record.get("started"), pid)
    problems = state.restore()
    if problems:
        raise errors.PluginError("Could not restore the mail server after an interrupted "
                                 "validation: " + "; ".join(problems) +
                                 f". The record stays in {state.path}; the next certbot run "
                                 "retries.")
    state.finish()
    return True


def recorded_state_dirs(default_dir: str, given: Optional[str] = None) -> list[str]:
    """The state directories that hold a record now: cheap (a few stat calls) when none does."""
    candidates = [default_dir, *([given] if given else [])]
    pointer = os.path.join(default_dir, POINTER_FILE)
    if os.path.lexists(pointer):
        check_private(default_dir)
        with open_private(pointer) as pointed:
            candidates.append(pointed.read().strip())
    found = [d for d in candidates if os.path.lexists(os.path.join(d, STATE_FILE))]
    return list({os.path.realpath(d): d for d in found}.values())


def check_private(directory: str) -> None:
    """Refuse a state directory that anyone but root could write to, or whose path they could
    redirect: the record in it is a list of commands to run as root."""
    path = os.path.realpath(directory)
    while True:
        status = os.stat(path)
        problem = _unsafe(status, path == os.path.realpath(directory))
        if problem:
            raise errors.PluginError(
                f"refusing the email-capability state directory {directory}: {path} is "
                f"{problem}, so another user could plant the root commands a repair runs. Make "
                f"it root-owned and not group/world writable (chown root {path}; chmod go-w "
                f"{path}) or give another --email-capability-state-dir")
        if path == os.path.dirname(path):
            return
        path = os.path.dirname(path)


def open_private(path: str) -> Any:
    """Open a root-owned, not group/world writable regular file for reading (no symlink)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    status = os.fstat(descriptor)
    problem = "not a regular file" if not stat.S_ISREG(status.st_mode) else _unsafe(status, True)
    if problem:
        os.close(descriptor)
        raise errors.PluginError(f"refusing {path}: it is {problem}, so another user could have "
                                 "written the root commands it lists. Check who did, restore "
                                 "the mail server by hand and delete it")
    return open(descriptor, encoding="utf-8")


def _unsafe(status: os.stat_result, own: bool) -> Optional[str]:
    """Why others could change this file or directory (an ancestor may be sticky, like /tmp)."""
    if status.st_uid != os.geteuid():
        return f"owned by uid {status.st_uid}"
    writable = status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and (own or not status.st_mode & stat.S_ISVTX):
        return "writable by its group or others"
    return None


def _same_dir(first: str, second: str) -> bool:
    return os.path.realpath(first) == os.path.realpath(second)


def _write_atomically(path: str, data: bytes) -> None:
    """A 0600 file written in full or not at all (a kill leaves the old one or the new one)."""
    temporary = path + ".new"
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
              "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def proc_stat(pid: int | str) -> Optional[tuple[str, list[str]]]:
    """A process's name and the fields of /proc/PID/stat after it (state, ppid, ...); None if
    there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as proc:
            name, _, rest = proc.read().partition(" (")[2].rpartition(")")
    except OSError:
        return None
    return (name, rest.split()) if rest else None


def _started(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks since boot), or None if there is none: a pid
    reused by another process does not pass for the run that wrote the record."""
    found = proc_stat(pid)
    return found[1][19] if found and len(found[1]) > 19 else None


def _runtime_dir(record: dict[str, Any]) -> Optional[str]:
    """The record's runtime directory, only if it is one of ours (a repair deletes it)."""
    runtime_dir = record.get("runtime_dir")
    if isinstance(runtime_dir, str) and os.path.basename(runtime_dir).startswith(RUNTIME_PREFIX):
        return runtime_dir
    return None


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


def make_runtime_dir(owner: str, parent: str = RUNTIME_PARENT) -> str:
    """A fresh directory for what a spawned responder must read: root owns it and ``owner``'s
    group may only enter it, so the unprivileged user can plant nothing (no symlink) in it.

    Never in $TMPDIR: under systemd's PrivateTmp=true certbot's /tmp is its own, and the
    daemon that spawns the responder would not find the files.
    """
    try:
        account = pwd.getpwnam(owner)
    except KeyError:
        raise errors.PluginError(f"user {owner!r} does not exist; name an unprivileged user "
                                 "that may run the responder") from None
    directory = tempfile.mkdtemp(prefix=RUNTIME_PREFIX, dir=parent)
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
