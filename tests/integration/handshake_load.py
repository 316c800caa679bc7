"""TLS clients that keep handshaking while certificates are renewed: did a reload drop any?

Shared by the installer load test and bench/installer.py, which differ only in how many
clients run, how fast, and whether the counts are read per listener or per phase.
"""
import threading
from collections import Counter

from certbot_email_smtpext.listeners import TlsListener
from certbot_email_smtpext.tls_probe import ProbeError, served_certificate


class HandshakeLoad:
    """Client threads that handshake with the listeners in turn until the block is left.

    Client i of n probes listeners i, i+n, i+2n, ... (wrapping), so n equal to the number of
    listeners gives each its own client. Successes and failures are counted per listener and per
    phase (set `phase` as the phases change).
    """

    def __init__(self, listeners: list[TlsListener], clients: int, pause_seconds: float = 0.0,
                 max_handshakes: int | None = None) -> None:
        self.listeners = listeners
        self.phase = "idle"
        self.by_listener: Counter[tuple[str, bool]] = Counter()
        self.by_phase: Counter[tuple[str, bool]] = Counter()
        self.errors: list[str] = []
        self.pause_seconds = pause_seconds
        self.max_handshakes = max_handshakes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(offset,), daemon=True)
                         for offset in range(clients)]

    def _loop(self, offset: int) -> None:
        """Handshake round-robin until stopped (or max_handshakes, should a renewal hang)."""
        done = 0
        while self.max_handshakes is None or done < self.max_handshakes:
            if self._stop.wait(self.pause_seconds):
                return
            listener = self.listeners[(offset + done * len(self._threads)) % len(self.listeners)]
            done += 1
            phase = self.phase
            try:
                served_certificate(listener)
                succeeded, error = True, ""
            except ProbeError as failure:
                succeeded, error = False, f"{listener}: {failure}"
            with self._lock:
                self.by_listener[str(listener), succeeded] += 1
                self.by_phase[phase, succeeded] += 1
                if error:
                    self.errors.append(error)

    def __enter__(self) -> "HandshakeLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
