"""Dovecot for email-capability: one included snippet we own, config-tested, then reloaded.

The IMAP backend writes ``protocol imap { imap_capability = ... }`` with every pending
``ACME=<v>`` atom added to the value in force (Dovecot keeps every session alive across a
reload; notes/mail-protocol-proof.md §2.1). Each of our reloads comes at least
RELOAD_SPACING_SECONDS after the instance's previous one (``settle``). The standalone backend
uses the same snippet to switch one listener off (``port = 0``) while our responder holds its
port (POP3, submission: Dovecot cannot add a line to their capability lists, §2.2-2.3).
"""
import os
import re
import time
from typing import Callable, Optional, Sequence

from certbot import errors

from certbot_email.protocol.challenges import imap_capability
from certbot_email_smtpext import dovecot
from certbot_email_smtpext.capability_state import ValidationState, proc_stat

SNIPPET_NAME = "certbot-email-capability.conf"
#: lib-auth retries a failed connection to auth after 5 s. A login process started while a reload
#: had the auth socket away holds its client that long, and a second reload meanwhile makes it
#: send "* BYE Shutting down" instead of a greeting; so each of our reloads waits this long after
#: the last reload of the instance (the validation's two, and another run's). A login process
#: that had not yet reached auth at all is stopped by any reload ("waited 0 secs" in the log);
#: that BYE is Dovecot's own, and spacing cannot prevent it.
RELOAD_SPACING_SECONDS = 6.0
_HEADER = "# Written by certbot-email (email-capability) for one validation; removed after it.\n"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def imap_capability_value(current: str, atoms: Sequence[str]) -> str:
    """Dovecot 2.3: ``+`` keeps the defaults; an explicit list keeps its atoms and gains ours."""
    current = current.strip()
    if not current:
        return "+" + " ".join(atoms)
    return " ".join([current, *atoms])


def capability_atoms(effective: str) -> set[str]:
    """The atoms of imap_capability as ``doveconf -h`` prints it: ``+A B`` (2.3, or a 2.4
    string, which replaces any list read before it) or 2.4's list, one ``"A" = yes`` a line."""
    entries = [line.partition(" = ") for line in effective.splitlines()]
    if entries and all(sep for _, sep, _ in entries):
        return {key.strip().strip('"') for key, _, value in entries if value.strip() == "yes"}
    return set(effective.lstrip("+").split())


def imap_snippet(version: tuple[int, ...], current: str, values: Sequence[str]) -> str:
    """The snippet advertising ``ACME=<v>`` for every value, inside ``protocol imap``."""
    atoms = [imap_capability(value) for value in values]
    if dovecot.setting_names(version).capability_boollist:
        entries = "".join(f'    "{atom}" = yes\n' for atom in atoms)
        body = f"  imap_capability {{\n{entries}  }}\n"
    else:
        body = f"  imap_capability = {imap_capability_value(current, atoms)}\n"
    return f"{_HEADER}protocol imap {{\n{body}}}\n"


def parse_listener(text: str) -> tuple[str, str]:
    """``pop3-login/pop3`` -> (service, inet_listener) for --email-capability-dovecot-listener."""
    service, sep, listener = text.partition("/")
    if not sep or not _NAME.match(service) or not _NAME.match(listener):
        raise errors.MisconfigurationError(
            f"--email-capability-dovecot-listener {text!r}: expected SERVICE/LISTENER as in "
            "dovecot.conf, e.g. pop3-login/pop3 or submission-login/submission")
    return service, listener


def listener_off_snippet(service: str, listener: str) -> str:
    """The snippet that makes Dovecot let go of one inet listener's port."""
    return (f"{_HEADER}service {service} {{\n  inet_listener {listener} {{\n    port = 0\n"
            f"  }}\n}}\n")


class DovecotSnippet:
    """Our snippet in one Dovecot instance: installed under the validation state, then reloaded."""

    def __init__(self, config_file: str, snippet_path: str = "") -> None:
        self.daemon = dovecot.Dovecot(config_file)
        self.config_file = config_file
        self.path = snippet_path or os.path.join(self.daemon.config_dir, SNIPPET_NAME)

    def imap_capability(self) -> str:
        """The imap_capability in force for IMAP (``protocol imap`` filter applied)."""
        return self.daemon.doveconf("-h", "-f", "protocol=imap", "imap_capability").strip()

    def listener_port(self, service: str, listener: str) -> Optional[int]:
        """The port of ``service``'s inet_listener ``listener`` in force, if it exists."""
        for block in self.daemon.config().blocks:
            if block.kind == "service" and block.name == service:
                for inner in block.blocks:
                    if inner.kind == "inet_listener" and inner.name == listener:
                        port = inner.settings.get("port", "")
                        return int(port) if port.isdigit() else None
        return None

    def reload_command(self) -> list[str]:
        """What restores the running daemon once the files are back."""
        return ["doveadm", "-c", os.path.abspath(self.config_file), "reload"]

    def seconds_since_reload(self) -> Optional[float]:
        """How long ago the master last (re)loaded its config, if it runs: every reload starts
        a new log process."""
        base_dir = self.daemon.doveconf("-h", "base_dir").strip()
        try:
            with open(os.path.join(base_dir, "master.pid"), encoding="ascii") as pid_file:
                master = pid_file.read().strip()
            with open("/proc/uptime", encoding="ascii") as uptime_file:
                uptime = float(uptime_file.read().split()[0])
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        ages = [uptime - int(found[1][19]) / ticks
                for found in map(proc_stat, filter(str.isdigit, os.listdir("/proc")))
                if found and found[0] == "log" and found[1][1] == master]
        return min(ages) if ages else None

    def settle(self) -> None:
        """Wait until a reload harms no login process still retrying to reach auth."""
        age = self.seconds_since_reload()
        if age is not None and age < RELOAD_SPACING_SECONDS:
            time.sleep(RELOAD_SPACING_SECONDS - age)

    def begin(self, state: ValidationState) -> None:
        """Record the validation: restoring means putting files back and reloading."""
        state.begin("dovecot", [self.reload_command()], None)

    def install(self, state: ValidationState, text: str,
                before_reload: Optional[Callable[[], None]] = None) -> None:
        """Write the snippet (and its include), refuse it unless doveconf passes, reload."""
        state.protect(self.path)
        self.daemon.include(self.path, state.protect)
        with open(self.path, "w", encoding="utf-8") as snippet:
            snippet.write(text)
        try:
            self.daemon.config_test()
        except errors.PluginError as error:
            raise errors.PluginError(f"Dovecot refuses the snippet {self.path}, so it was not "
                                     f"loaded and is being removed: {error}") from None
        if before_reload is not None:
            before_reload()
        self.settle()
        self.daemon.reload()


class DovecotImap(DovecotSnippet):
    """The IMAP backend: every value added to imap_capability, checked by doveconf, reloaded."""

    def advertise(self, state: ValidationState, values: Sequence[str]) -> None:
        """Record, write the snippet, check the value in force, reload."""
        version, current = self.daemon.version(), self.imap_capability()
        atoms = [imap_capability(value) for value in values]

        def check_effective() -> None:
            effective = self.imap_capability()
            if not set(atoms) <= capability_atoms(effective):
                raise errors.PluginError(
                    f"{self.path} sets imap_capability, but Dovecot still uses "
                    f"{effective or 'the default'}: a `protocol imap "
                    f"{{ imap_capability }}` read after it (local.conf?) wins; include "
                    f"{self.path} last")
        self.begin(state)
        self.install(state, imap_snippet(version, current, values), check_effective)


