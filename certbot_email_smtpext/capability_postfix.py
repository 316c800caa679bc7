"""Postfix for email-capability: swap one master.cf service's command to spawn(8) our responder.

Postfix has no way to add an EHLO keyword (notes/mail-protocol-proof.md §1.1). A master.cf
service that keeps its endpoint but changes its command keeps its listening socket across a
reload, and the old smtpd processes finish their sessions (§1.2), so the swap refuses no
connection and drops no mail: new sessions meet the responder, which answers EHLO with the
ACME lines and anything that tries to send with a temporary 421. A spawn entry that fails to
start throttles the port for a minute even after a restore (§1.4), so the entry is generated
from one template, parsed back by postconf in a scratch copy of the config, and its exact
command is run once as the spawn user on a socketpair before master.cf is touched.

In relay mode (§1.3 f) nobody notices the validation: a hidden copy of the smtpd service on a
free loopback port learns each client's address from a PROXY protocol header, and the spawned
responder relays every session to it, adding only the ACME lines to EHLO. The restore takes two
reloads, because removing a service kills its sessions: the public service goes back to smtpd
first, and the hidden one leaves master.cf once the relayed sessions have ended.
"""
import logging
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

from certbot import errors

from certbot_email_smtpext import capability_probe, capability_responder, postfix
from certbot_email_smtpext.capability_state import (
    RESPONDER_COPY,
    RUNTIME_PARENT,
    ValidationState,
    make_runtime_dir,
    write_for_group,
    write_throwaway_certificate,
    write_values,
)

logger = logging.getLogger(__name__)

DEFAULT_SPAWN_USER = "nobody"
HIDDEN_HOST = "127.0.0.1"
#: Tried in order when --email-capability-spawn-python is not given; the first that works wins.
FALLBACK_PYTHON = "/usr/bin/python3"
PRETEST_SECONDS = 10.0
#: master.cf columns: service type private unpriv chroot wakeup maxproc command...
_COLUMNS = 7
#: Commands run as one process for all clients; their maxproc (1) does not suit spawn.
SINGLE_PROCESS_COMMANDS = frozenset({"postscreen"})


def find_service(services: Sequence[postfix.MasterService], port: int) -> postfix.MasterService:
    """The inet service listening on ``port``; exactly one, or a PluginError saying what to fix."""
    found = [service for service in services
             if service.type == "inet" and postfix.service_port(service.service) == port]
    if len(found) != 1:
        listed = ", ".join(f"{s.service}/{s.type}" for s in found) or "none"
        raise errors.PluginError(
            f"master.cf must have exactly one inet service on port {port} to swap (found: "
            f"{listed}); check --email-capability-port and --email-capability-postfix-config-dir")
    return found[0]


def spawn_entry(fields: Sequence[str], spawn_user: str, argv: Sequence[str]) -> str:
    """The ``postconf -Me`` value: same endpoint and limits, command ``spawn`` as the user.

    spawn needs root to switch to ``user=``, so unpriv is ``n``; chroot is ``n`` because the
    responder runs a Python from outside any chroot. postscreen's process limit of 1 becomes
    the default limit.
    """
    if any(not word or any(c.isspace() for c in word) for word in argv):
        raise errors.PluginError(f"cannot put {list(argv)} in master.cf: a path has white "
                                 "space; use --email-capability-spawn-python without spaces")
    service, service_type, private, _, _, wakeup, maxproc = fields[:_COLUMNS]
    if fields[_COLUMNS] in SINGLE_PROCESS_COMMANDS:
        maxproc = "-"  # one spawn at a time would queue the CA behind any other client
    return (f"{service}/{service_type} = {service} {service_type} {private} n n {wakeup} "
            f"{maxproc} spawn user={spawn_user} argv={' '.join(argv)}")


def hidden_entry(fields: Sequence[str], port: int) -> str:
    """The hidden smtpd's ``postconf -Me`` value: the service on loopback, behind PROXY."""
    if fields[_COLUMNS] != "smtpd":
        raise errors.PluginError(
            f"relay mode needs an smtpd service, not {fields[_COLUMNS]!r} (postscreen in front "
            "of smtpd is not supported); use --email-capability-postfix-mode responder")
    endpoint = f"{HIDDEN_HOST}:{port}"
    return (f"{endpoint}/inet = {endpoint} inet {' '.join(fields[2:])} "
            "-o smtpd_upstream_proxy_protocol=haproxy")


def free_loopback_port() -> int:
    """A port nothing listens on now, for the hidden smtpd."""
    with socket.socket() as sock:
        sock.bind((HIDDEN_HOST, 0))
        return int(sock.getsockname()[1])


def responder_argv(python: str, runtime_dir: str, hostname: str, values_file: str,
                   cert: str, key: str, implicit_tls: bool) -> list[str]:
    """The spawned command: the responder copy in the runtime dir, isolated from the env."""
    argv = [python, "-I", os.path.join(runtime_dir, RESPONDER_COPY), "--protocol", "smtp",
            "--values-file", values_file, "--hostname", hostname, "--tls-cert", cert,
            "--tls-key", key]
    return [*argv, "--implicit-tls"] if implicit_tls else argv


def pretest(argv: Sequence[str], spawn_user: str, implicit_tls: bool,
            values: Sequence[str], namespace: Optional[str] = None) -> Optional[str]:
    """Run ``argv`` once as spawn does (socket on stdin/stdout, as the user, in the mount
    ``namespace`` if given); why it failed."""
    ours, theirs = socket.socketpair()
    account = pwd.getpwnam(spawn_user)
    try:
        if namespace:  # nsenter switches the user itself, after entering the namespace
            # ... and the master's root directory (/proc/PID/root), which entering a mount
            # namespace alone resets to the namespace's own (wrong when certbot is chrooted)
            root = os.path.join(os.path.dirname(os.path.dirname(namespace)), "root")
            process = subprocess.Popen(
                ["nsenter", f"--mount={namespace}", f"--root={root}",
                 f"--setgid={account.pw_gid}", f"--setuid={account.pw_uid}", "--wd=/", "--",
                 *argv],
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE, cwd="/")
        else:
            process = subprocess.Popen(list(argv), stdin=theirs.fileno(), stdout=theirs.fileno(),
                                       stderr=subprocess.PIPE, user=spawn_user,
                                       group=account.pw_gid, extra_groups=[], cwd="/")
    except OSError as error:
        ours.close()
        theirs.close()
        return f"cannot start it: {error}"
    theirs.close()
    sock = ours
    try:
        ours.settimeout(PRETEST_SECONDS)
        if implicit_tls:
            sock = capability_probe.unverified_tls().wrap_socket(ours)
        seen = capability_probe.session_values("smtp", sock)
    except (OSError, ssl.SSLError, capability_probe.ProbeError) as error:
        seen = None
        failure = f"{type(error).__name__}: {error}"
    finally:
        sock.close()
        ours.close()
        try:
            _, stderr = process.communicate(timeout=PRETEST_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            stderr = b""
    if seen is None:
        return f"{failure} {stderr.decode('utf-8', 'replace').strip()}".strip()
    if not set(values) <= set(seen):
        return f"it advertised {seen}, not {list(values)}"
    return None


class PostfixSwap:
    """One Postfix instance whose service on one port is swapped to the responder and back."""

    def __init__(self, config_dir: str, port: int, implicit_tls: bool,
                 spawn_user: str = DEFAULT_SPAWN_USER, python: Optional[str] = None,
                 mode: str = "responder") -> None:
        self.config_dir = os.path.abspath(config_dir)  # postfix -c wants it absolute
        self.daemon = postfix.Postfix(self.config_dir)
        self.master_cf = os.path.join(self.config_dir, "master.cf")
        self.port = port
        self.implicit_tls = implicit_tls
        self.spawn_user = spawn_user
        self.relay = mode == "relay"
        self.pythons = [python] if python else list(dict.fromkeys([sys.executable,
                                                                  FALLBACK_PYTHON]))

    def reload_command(self) -> list[str]:
        """What restores the running daemon once master.cf is back."""
        return ["postfix", "-c", self.config_dir, "reload"]

    def advertise(self, state: ValidationState, values: Sequence[str]) -> None:
        """Prepare and pre-test the responder, then swap the service and reload."""
        service = find_service(self.daemon.services(), self.port)
        name = f"{service.service}/{service.type}"
        fields = self.daemon.postconf("-M", name).split()
        hostname = self.daemon.postconf("-h", "myhostname").strip() or "localhost"
        entries, relay_to = [], []
        if self.relay:
            port = free_loopback_port()
            entries.append(hidden_entry(fields, port))
            relay_to = ["--relay", f"{HIDDEN_HOST}:{port}"]
        runtime_dir, argv = self._tested_responder(hostname, values)
        handover = [self._postconf_command("-Me", f"{name} = {' '.join(fields)}"),
                    self.reload_command()] if self.relay else []
        try:
            state.begin("postfix", [self.reload_command()], runtime_dir, handover)
        except BaseException:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise
        entries.append(spawn_entry(fields, self.spawn_user, [*argv, *relay_to]))
        self._check_parses(entries, fields[:2])
        state.protect(self.master_cf)
        for entry in entries:  # the hidden smtpd first: relays must find it
            self.daemon.postconf("-Me", entry)
        self.daemon.reload()

    def settle(self) -> None:
        """Postfix may reload again at once."""

    def _postconf_command(self, *arguments: str) -> list[str]:
        """A postconf command line for this instance, to be run later (the handover)."""
        return ["postconf", "-c", self.config_dir, *arguments]

    def master_namespace(self) -> Optional[str]:
        """The running master's mount namespace (/proc/PID/ns/mnt) when it is not ours; None
        when it is, or when Postfix is stopped (then our ``postfix start`` runs it here)."""
        queue = self.daemon.postconf("-h", "queue_directory").strip()
        try:
            with open(os.path.join(queue, "pid", "master.pid"), encoding="ascii") as pid_file:
                namespace = f"/proc/{int(pid_file.read().strip())}/ns/mnt"
            if os.readlink(namespace) == os.readlink("/proc/self/ns/mnt"):
                return None
        except (OSError, ValueError):
            return None
        return namespace

    def _tested_responder(self, hostname: str, values: Sequence[str]) -> tuple[str, list[str]]:
        """A runtime dir (in /run, else the config dir) and a responder command that passed the
        pre-test as spawn will run it; nothing of Postfix is touched yet."""
        namespace = self.master_namespace()
        failures = []
        for parent in (RUNTIME_PARENT, self.config_dir):
            try:
                runtime_dir = make_runtime_dir(self.spawn_user, parent)
            except OSError as error:
                failures.append(f"{parent}: {error}")
                continue
            try:
                argvs = self._write_runtime(runtime_dir, hostname, values)
                for python, argv in argvs:
                    failure = pretest(argv, self.spawn_user, self.implicit_tls, values, namespace)
                    if failure is None:
                        logger.info("The responder for Postfix's spawn runs from %s (pre-tested "
                                    "as %s%s)", runtime_dir, self.spawn_user,
                                    f" in {namespace}" if namespace else "")
                        return runtime_dir, argv
                    failures.append(f"{python} in {runtime_dir}: {failure}")
            except BaseException:
                shutil.rmtree(runtime_dir, ignore_errors=True)
                raise
            shutil.rmtree(runtime_dir, ignore_errors=True)
        seen_from = (f"the mount namespace of Postfix's master ({namespace}), which differs from "
                     "certbot's" if namespace else "Postfix's view")
        raise errors.PluginError(
            f"the responder does not run as spawn would run it (user {self.spawn_user!r}, in "
            f"{seen_from}): {'; '.join(failures)}. Name a python3 that user may execute with "
            "--email-capability-spawn-python, and make /run or the Postfix config directory "
            "visible to Postfix; master.cf was left untouched")

    def _write_runtime(self, runtime_dir: str, hostname: str,
                       values: Sequence[str]) -> list[tuple[str, list[str]]]:
        """The responder copy, values and throwaway key; a command line per python to try."""
        with open(capability_responder.__file__, "rb") as source:
            write_for_group(os.path.join(runtime_dir, RESPONDER_COPY), source.read(), runtime_dir)
        values_file = write_values(runtime_dir, values)
        cert, key = write_throwaway_certificate(runtime_dir, hostname)
        return [(python, responder_argv(python, runtime_dir, hostname, values_file, cert, key,
                                        self.implicit_tls)) for python in self.pythons]

    def _check_parses(self, entries: Sequence[str], endpoint: Sequence[str]) -> None:
        """Apply the entries to a scratch config; postconf must read the spawn entry back."""
        scratch = tempfile.mkdtemp(prefix="certbot-email-postconf-")
        try:
            for name in ("main.cf", "master.cf"):
                shutil.copy2(os.path.join(self.config_dir, name), scratch)
            copy = postfix.Postfix(scratch)
            for entry in entries:
                copy.postconf("-Me", entry)
            parsed = copy.postconf("-M", "/".join(endpoint)).split()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        expected = entries[-1].split(" = ", 1)[1].split()
        if parsed != expected or parsed[3] != "n" or f"user={self.spawn_user}" not in parsed:
            raise errors.PluginError(f"postconf reads the spawn entry back as {parsed}, not "
                                     f"{expected}; master.cf was left untouched")
