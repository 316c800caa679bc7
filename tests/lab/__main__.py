"""``python -m tests.lab DIR``: the lab's mail and DNS servers, by hand, until Ctrl-C or SIGTERM.

For the README's walk-through of the test CA: starts BIND, Postfix, Dovecot and OpenDKIM for
example.test on free loopback ports with all state in DIR, then writes ``DIR/lab.env``, shell
variables naming the ports, the TLS and TSIG files and the mailbox passwords (``. DIR/lab.env``).
The file appears only once every server answers, so its existence means "ready".
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from .lab import Lab
from .ports import HOST

ENV_FILE = "lab.env"


def environment(lab: Lab) -> dict[str, str]:
    """What a person (or the README's commands) needs to talk to the running lab."""
    ports = lab.ports
    values = {
        "LAB_HOST": HOST,
        "LAB_DOMAIN": lab.domain,
        "LAB_DNS_PORT": ports.dns,
        "LAB_SMTP_PORT": ports.smtp,
        "LAB_SUBMISSION_PORT": ports.submission,
        "LAB_SUBMISSIONS_PORT": ports.submissions,
        "LAB_IMAP_PORT": ports.imap,
        "LAB_IMAPS_PORT": ports.imaps,
        "LAB_POP3_PORT": ports.pop3,
        "LAB_POP3S_PORT": ports.pop3s,
        "LAB_CA_FILE": lab.ca_file,
        "LAB_TSIG_KEY_FILE": lab.dns.key_file,
    }
    values.update({f"LAB_{name.upper()}_PASSWORD": user.password
                   for name, user in lab.users.items()})
    return {name: str(value) for name, value in values.items()}


def write_environment(lab: Lab, path: Path) -> None:
    """Write the variables atomically: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(f"{name}={shlex.quote(value)}\n"
                                 for name, value in environment(lab).items()))
    temporary.chmod(0o600)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    """Start, announce, wait for a signal, stop."""
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.split(
        "\n\n", 1)[0])
    parser.add_argument("dir", type=Path, help="where the servers keep their state (at most "
                        "60 characters: Unix socket paths are short); created if missing, and "
                        "made world-traversable for the servers' own users")
    directory = parser.parse_args(argv).dir.resolve()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    lab = Lab(directory).start(pebble=False)
    env_file = directory / ENV_FILE
    try:
        write_environment(lab, env_file)
        print(f"lab ready: . {env_file}", flush=True)
        stop.wait()
    finally:
        env_file.unlink(missing_ok=True)
        lab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
