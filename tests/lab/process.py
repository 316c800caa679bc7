"""Process plumbing shared by the lab servers: start, readiness polling, stop by PID, log tails."""

from __future__ import annotations

import abc
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .ports import HOST

POLL_INTERVAL = 0.02
# Server binaries live in sbin, which a CI user's PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class LabError(RuntimeError):
    """A lab server failed to start, to answer, or to stop."""


def find_binary(name: str) -> str | None:
    """The absolute path of a server binary, looking in sbin as well."""
    return shutil.which(name, path=SEARCH_PATH)


def binary(name: str) -> str:
    """find_binary(), or LabError naming the missing program."""
    path = find_binary(name)
    if path is None:
        raise LabError(f"{name} is not installed (see tools/install-system-deps.sh)")
    return path


def run(argv: list[str]) -> str:
    """Run a helper command and return its stdout; on failure, LabError with all its output."""
    argv = [binary(argv[0]), *argv[1:]]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        output = done.stdout + done.stderr
        raise LabError(f"{' '.join(argv)} failed with {done.returncode}:\n{output}")
    return done.stdout


def is_alive(pid: int) -> bool:
    """False once the process is gone or a zombie (the sandbox's init reaps orphans late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """All living descendants of pid, so that a stop waits for the workers as well as the master."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send sig to each pid that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid has exited; return those still alive at the timeout."""
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        remaining = [pid for pid in remaining if is_alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(POLL_INTERVAL)


def poll_until(
    what: str, check: Callable[[], bool], deadline: float, alive: Callable[[], bool]
) -> None:
    """Call check() until it is True; fail at once when the server died, else at the deadline."""
    while True:
        try:
            if check():
                return
        except OSError:  # includes refused connections, TLS errors and socket timeouts
            pass
        if not alive():
            raise LabError(f"{what}: the server exited")
        if time.monotonic() >= deadline:
            raise LabError(f"{what}: not ready in time")
        time.sleep(POLL_INTERVAL)


def greets(port: int, greeting: bytes, tls: ssl.SSLContext | None, server_hostname: str) -> bool:
    """True when the server on 127.0.0.1:port (over implicit TLS if tls) says greeting first."""
    with socket.create_connection((HOST, port), timeout=2) as raw:
        if tls is None:
            return raw.recv(200).startswith(greeting)
        with tls.wrap_socket(raw, server_hostname=server_hostname) as wrapped:
            return wrapped.recv(200).startswith(greeting)


def accepts(port: int) -> bool:
    """True when 127.0.0.1:port accepts TCP connections (for servers that send no banner)."""
    with socket.create_connection((HOST, port), timeout=2):
        return True


def tail(path: Path, lines: int) -> str:
    """The last lines of a log file, or a note that it does not exist yet."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


class Daemon(abc.ABC):
    """One lab server. By default launched in the foreground, as our child, logging to log_path."""

    name = "daemon"
    # Seconds a graceful stop may take before the lab sends SIGKILL.
    stop_grace = 8.0

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / self.name
        self.dir.mkdir(mode=0o755, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def configure(self) -> None:
        """Write the config files."""

    @abc.abstractmethod
    def launch(self) -> None:
        """Start the process(es); return without waiting for readiness."""

    @abc.abstractmethod
    def wait_ready(self, deadline: float) -> None:
        """Return once the server answers on every port; raise LabError otherwise."""

    def _spawn(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        argv = [binary(argv[0]), *argv[1:]]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,  # a ^C in the terminal must reach the lab, not the servers
            )

    @property
    def pid(self) -> int | None:
        """The master process ID, or None before launch()."""
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        """True while the master process runs."""
        return self.pid is not None and is_alive(self.pid)

    def request_stop(self) -> list[int]:
        """Ask the server to stop (SIGTERM to the master); return every PID to wait for."""
        pid = self.pid
        if pid is None or not is_alive(pid):
            return []
        pids = [pid, *descendants(pid)]
        signal_pids([pid], signal.SIGTERM)
        return pids

    def reap(self) -> None:
        """Collect our child's exit status, so that no zombie is left behind."""
        if self._proc is not None:
            self._proc.wait(timeout=5)
            self._proc = None

    def logs(self, lines: int) -> dict[str, str]:
        """Log name -> its last lines."""
        return {self.name: tail(self.log_path, lines)}
