"""Free loopback ports for one lab, reserved so that labs running side by side do not collide."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import random
import socket
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
HOST6 = "::1"

# Below the kernel's ephemeral range (32768-60999), so no outgoing connection can hold one of them.
PORT_RANGE = range(20000, 32000)
# A lab holds an flock on one file per port here; the kernel drops the lock if the lab dies.
RESERVATIONS = Path("/tmp/lab-ports")


@dataclasses.dataclass(frozen=True)
class Ports:
    """Every TCP (and for DNS also UDP) port of one lab, on 127.0.0.1 and ::1."""

    dns: int
    smtp: int  # port 25 role: no AUTH, no DKIM signing, for injecting test mail
    submission: int  # port 587 role: STARTTLS required, SASL AUTH, DKIM signed
    submissions: int  # port 465 role: implicit TLS, SASL AUTH, DKIM signed
    lmtp: int
    imap: int
    imaps: int
    pop3: int
    pop3s: int
    milter: int  # OpenDKIM, 127.0.0.1 only
    acme: int  # Pebble's ACME directory (HTTPS)
    acme_management: int  # Pebble's management API (HTTPS: /roots/0, /intermediates/0)
    http01: int  # where Pebble connects for http-01 (certbot --http-01-port)
    tlsalpn01: int  # where Pebble connects for tls-alpn-01


class PortReservation:
    """Holds the per-port locks of one lab until release()."""

    def __init__(self) -> None:
        self._locks: dict[Path, IO[bytes]] = {}

    def allocate(self, **fixed: int) -> Ports:
        """Pick a free port for every field of Ports not given in `fixed`."""
        names = [f.name for f in dataclasses.fields(Ports)]
        unknown = set(fixed) - set(names)
        if unknown:
            raise TypeError(f"unknown port names: {sorted(unknown)}")
        chosen = dict(fixed)
        candidates = random.sample(PORT_RANGE, len(PORT_RANGE))
        for name in names:
            while name not in chosen:
                if not candidates:
                    raise RuntimeError(f"no free port left in {PORT_RANGE}")
                port = candidates.pop()
                if port not in chosen.values() and self._reserve(port, udp=name == "dns"):
                    chosen[name] = port
        return Ports(**chosen)

    def one(self) -> int:
        """Reserve one more free TCP port, until release()."""
        for port in random.sample(PORT_RANGE, len(PORT_RANGE)):
            if self._reserve(port, udp=False):
                return port
        raise RuntimeError(f"no free port left in {PORT_RANGE}")

    def release(self) -> None:
        """Let other labs use the ports again."""
        for path, lock in self._locks.items():
            path.unlink(missing_ok=True)  # while still locked: see _reserve
            lock.close()
        self._locks.clear()

    def _reserve(self, port: int, *, udp: bool) -> bool:
        RESERVATIONS.mkdir(mode=0o1777, exist_ok=True)
        path = RESERVATIONS / str(port)
        lock = open(path, "ab")  # noqa: SIM115 - stays open: the lock is the reservation
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # a lab that released the port unlinked the file first: a lock on it means nothing
            current = os.fstat(lock.fileno()).st_ino == path.stat().st_ino
        except (BlockingIOError, FileNotFoundError):
            current = False
        if not current or not _bindable(port, udp=udp):
            lock.close()
            return False
        self._locks[path] = lock
        return True


def _bindable(port: int, *, udp: bool) -> bool:
    """True when nothing else listens on the port, on both loopback addresses."""
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for family, host in ((socket.AF_INET, HOST), (socket.AF_INET6, HOST6)):
        for kind in kinds:
            with socket.socket(family, kind) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    return False
    return True


_TEST_PORTS = PortReservation()


def free_port() -> int:
    """A port for a test's own server: outside the ephemeral range, so no client connection
    can take it between the pick and the bind; reserved until the process ends."""
    return _TEST_PORTS.one()
