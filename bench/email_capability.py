"""email-capability issuance per backend: wall time of `certbot certonly`, and the longest time
the affected listener did not serve real traffic, against `certbot certonly --standalone`
(http-01) issued by the same test CA in the same run.

A client thread loops on the listener for the whole run, classifying every connection by its
greeting: the real daemon (Postfix or Dovecot, also through the postfix backend's relay), our
responder, or a failure (refused, reset, closed). "Not real" is the longest stretch between two
real answers with something else in between; "answered nobody" the same for failures alone.
Backends and the baseline alternate round by round so machine noise hits all alike.

    python bench/email_capability.py [--rounds N]
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certbot_email.testing import runtime  # noqa: E402
from certbot_email.testing.config import CAConfig  # noqa: E402
from certbot_email_smtpext import capability_probe  # noqa: E402
from certbot_email_smtpext.capability_plugin import PROTOCOL_OF_SERVICE  # noqa: E402
from tests.lab import HOST, MAIL_HOST, Lab  # noqa: E402
from tests.lab.ports import PortReservation  # noqa: E402

CERTBOT = str(Path(sys.executable).with_name("certbot"))
#: backend name -> (service, extra certbot options)
VARIANTS = {
    "dovecot (imap)": ("imap", []),
    "postfix (submission)": ("submission", []),
    "postfix relay (submission)": ("submission", ["--email-capability-postfix-mode", "relay"]),
    "standalone (pop3)": ("pop3", ["--email-capability-dovecot-listener", "pop3-login/pop3"]),
}
REAL_GREETINGS = (b"ESMTP Postfix", b"Dovecot")


class ListenerWatch:
    """Loops connect → greeting → close on one plaintext listener, recording what answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, str]] = []  # (time, "real" | "other" | "failed")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as sock:
                    greeting = sock.makefile("rb").readline(1000)
                kind = ("real" if any(mark in greeting for mark in REAL_GREETINGS)
                        else "other" if greeting else "failed")
            except OSError:
                kind = "failed"
            self.samples.append((time.monotonic(), kind))

    def longest(self, good: tuple[str, ...]) -> float:
        """Longest time from the last ``good`` answer before a bad one to the next good one."""
        longest, last_good, gap = 0.0, None, False
        for when, kind in self.samples:
            if kind in good:
                if gap and last_good is not None:
                    longest = max(longest, when - last_good)
                last_good, gap = when, False
            else:
                gap = True
        return longest

    def __enter__(self) -> "ListenerWatch":
        self._thread.start()
        return self

    def __exit__(self, *unused: object) -> None:
        self._stop.set()
        self._thread.join()


def certbot(ca: runtime.LaunchedCA, root: Path, *arguments: str) -> float:
    """Run one issuance; its wall time in seconds (a failure stops the benchmark)."""
    env = {key: val for key, val in os.environ.items() if not key.lower().endswith("_proxy")}
    env["REQUESTS_CA_BUNDLE"] = ca.root_path
    started = time.monotonic()
    done = subprocess.run(
        [CERTBOT, "certonly", "-d", MAIL_HOST, "--server", ca.directory_url, "--non-interactive",
         "--agree-tos", "--register-unsafely-without-email", "--config-dir",
         str(root / "config"), "--work-dir", str(root / "work"), "--logs-dir",
         str(root / "logs"), *arguments], env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"certbot {' '.join(arguments)} failed:\n{done.stderr}")
    return elapsed


def capability_options(lab: Lab, service: str) -> list[str]:
    return ["-a", "email-capability", "--email-capability-service", service,
            "--email-capability-port", str(getattr(lab.ports, service)),
            "--email-capability-probe-address", HOST,
            "--email-capability-postfix-config-dir", str(lab.postfix.etc),
            "--email-capability-dovecot-config", str(lab.dovecot.config_file)]


def main() -> None:
    """Run the rounds and print per variant the median wall time, the worst outage, the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    lab = Lab().start(dns=True, mail=True, dkim=False, pebble=False)
    reservation = PortReservation()
    work = Path(tempfile.mkdtemp(prefix="bench-capability-"))
    ca = runtime.launch(CAConfig(state_dir=work / "ca", port=reservation.allocate().acme,
                                 dns_server=HOST, dns_port=lab.dns.port,
                                 default_ports_only=False, http01_port=lab.ports.http01))
    walls: dict[str, list[float]] = {name: [] for name in [*VARIANTS, "baseline --standalone"]}
    outages: dict[str, list[float]] = {name: [] for name in VARIANTS}
    refusals: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for round_number in range(rounds):
            for index, (name, (service, extra)) in enumerate(VARIANTS.items()):
                root = work / f"{round_number}-{index}-{service}"  # fresh: nothing to renew
                with ListenerWatch(getattr(lab.ports, service)) as watch:
                    walls[name].append(certbot(ca, root, *capability_options(lab, service),
                                               *extra))
                outages[name].append(watch.longest(("real",)))
                refusals[name].append(watch.longest(("real", "other")))
                assert capability_probe.advertised_values(
                    PROTOCOL_OF_SERVICE[service], HOST, getattr(lab.ports, service), False) == []
            walls["baseline --standalone"].append(certbot(
                ca, work / f"{round_number}-standalone", "--standalone", "--http-01-port",
                str(lab.ports.http01), "--http-01-address", HOST))
    finally:
        ca.stop()
        reservation.release()
        lab.stop()
    baseline = statistics.median(walls["baseline --standalone"])
    print(f"{rounds} rounds; median wall time of one issuance and its ratio to the baseline; "
          "worst round's longest time the listener did not serve real traffic, and longest "
          "time it answered nobody (refused, reset or closed)")
    for name, times in walls.items():
        outage = (f"not real {max(outages[name]) * 1000:7.1f} ms, answered nobody "
                  f"{max(refusals[name]) * 1000:5.1f} ms" if name in outages
                  else "(http-01 on its own port, no mail listener)")
        median = statistics.median(times)
        print(f"  {name:26} {median:6.2f} s  x{median / baseline:.2f}  {outage}")


if __name__ == "__main__":
    main()
