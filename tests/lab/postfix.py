"""Postfix: port-25 MX, submission and submissions for example.test, delivering to Dovecot."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from .config import render
from .ports import HOST, Ports
from .process import Daemon, LabError, descendants, greets, is_alive, poll_until, run


class Postfix(Daemon):
    """A private instance (`postfix -c DIR`). It daemonizes, so its master is not our child."""

    name = "postfix"

    def __init__(
        self,
        workdir: Path,
        ports: Ports,
        domain: str,
        mail_host: str,
        cert: tuple[Path, Path],
        mailboxes: Iterable[str],
        sasl_path: Path,
        milter_port: int | None,
        client_tls: ssl.SSLContext,
    ) -> None:
        super().__init__(workdir)
        self.log_path = self.dir / "maillog"
        self.etc = self.dir / "etc"  # for `postfix -c` and `postconf -c`
        self.ports = ports
        self.domain = domain
        self.mail_host = mail_host
        self.cert_file, self.key_file = cert
        self.mailboxes = list(mailboxes)
        self.sasl_path = sasl_path
        self.milter_port = milter_port
        self.client_tls = client_tls
        self._master: int | None = None

    def configure(self) -> None:
        # the spool must exist and be root's; data_directory must NOT be pre-created by root
        for sub in ("etc", "spool"):
            (self.dir / sub).mkdir(mode=0o755, exist_ok=True)
        (self.etc / "vmailbox").write_text("".join(f"{box} OK\n" for box in self.mailboxes))
        p = self.ports
        values = dict(
            dir=self.dir,
            domain=self.domain,
            mail_host=self.mail_host,
            cert_file=self.cert_file,
            key_file=self.key_file,
            sasl_path=self.sasl_path,
            milters="" if self.milter_port is None else f"inet:{HOST}:{self.milter_port}",
            smtp=p.smtp,
            submission=p.submission,
            submissions=p.submissions,
            lmtp=p.lmtp,
        )
        render("main.cf", self.etc / "main.cf", **values)
        render("master.cf", self.etc / "master.cf", **values)
        # Postfix reads a config file only once it is over a second old, napping 300 ms at a
        # time: ~2 s for every fresh instance. Backdated, `postfix start` takes 0.25 s.
        settled = time.time() - 10
        for path in self.etc.iterdir():
            os.utime(path, (settled, settled))

    def launch(self) -> None:
        run(["postfix", "-c", str(self.etc), "start"])  # returns once the master runs
        self._master = int((self.dir / "spool" / "pid" / "master.pid").read_text().strip())

    @property
    def pid(self) -> int | None:
        return self._master

    def wait_ready(self, deadline: float) -> None:
        p, tls, host = self.ports, self.client_tls, self.mail_host
        for what, port, context in (
            (f"postfix smtp {p.smtp}", p.smtp, None),
            (f"postfix submission {p.submission}", p.submission, None),
            (f"postfix submissions {p.submissions}", p.submissions, tls),
        ):
            poll_until(what, partial(greets, port, b"220", context, host), deadline, self.alive)

    def request_stop(self) -> list[int]:
        """`postfix -c DIR stop`; the master and its workers exit about 1.2 s later."""
        if self._master is None or not is_alive(self._master):
            return []
        pids = [self._master, *descendants(self._master)]
        try:
            run(["postfix", "-c", str(self.etc), "stop"])
        except LabError:
            pass  # the lab sends SIGKILL to whatever still runs after stop_grace
        return pids

    def reap(self) -> None:
        self._master = None  # not our child: the sandbox's init reaps it
