"""email-reply (RFC 8823) against --standalone (http-01), both from the project's test CA.

One lab (BIND, Postfix, Dovecot, OpenDKIM) and one certbot-email-testca serve every run. Part 1
alternates `certbot certonly -a email-reply -d alice@example.test` with `certbot certonly
--standalone -d imap.example.test` round by round so machine noise hits both alike, and prints
the medians and their ratio (target: email-reply at most 1.5x standalone). Part 2 issues one
certificate for --addresses plus-addresses of alice (alice+1@example.test, ...), which all land
in alice's INBOX and so are answered over one IMAP connection, and prints the cost per address.
Every run starts from a fresh certbot config dir (a new account), as in bench/email_dns.py.

    python bench/email_reply.py [--rounds N] [--addresses N]
"""
import argparse
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab.lab import Lab  # noqa: E402  (the repository root must be on sys.path first)
from tests.lab.ports import HOST  # noqa: E402
from tests.lab.testca import RunningTestCA, mailbox_credentials, running_test_ca  # noqa: E402

CERTBOT = str(Path(sys.executable).with_name("certbot"))
ALICE = "alice@example.test"
HTTP01_NAME = "imap.example.test"  # A 127.0.0.1 only in the lab zone
#: Older challenge mails in alice's INBOX are this bench's own; the shared journal skips them.
LOOKBACK_SECONDS = 10
READY_TIMEOUT = 30.0


def enable_plus_addressing(lab: Lab) -> None:
    """Let Postfix deliver alice+N@ to alice (Dovecot's LMTP strips '+N' by default)."""
    etc = str(lab.postfix.etc)
    subprocess.run(["postconf", "-c", etc, "-e", "recipient_delimiter = +"], check=True)
    subprocess.run(["postfix", "-c", etc, "reload"], check=True, capture_output=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:  # a reload takes effect per new smtpd process: probe until one accepts alice+0
        try:
            lab.submit_mail("ca", lab.message("ca", "alice+0", "plus addressing probe"))
            break
        except smtplib.SMTPRecipientsRefused as error:  # "User unknown" until the reload
            if time.monotonic() > deadline:
                raise SystemExit(f"Postfix never accepted alice+0@: {error}") from error
            time.sleep(0.2)
    lab.wait_for_mail("alice", "plus addressing probe", timeout=READY_TIMEOUT)


class Runner:
    """Runs certbot against the test CA, each run in a fresh config dir, timing the whole CLI."""

    def __init__(self, lab: Lab, test_ca: RunningTestCA, root: Path) -> None:
        self.lab, self.test_ca, self.root = lab, test_ca, root
        self.credentials = mailbox_credentials(lab, "alice", root / "email-reply.ini")
        self.work_dir = root / "work"  # one host: one email-reply journal for every run

    def email_reply(self, addresses: list[str]) -> float:
        """certonly -a email-reply for addresses, all delivered to alice's mailbox."""
        return self._certonly([
            "-a", "email-reply", "--email-reply-credentials", str(self.credentials),
            "--email-reply-dkim-dns-server", f"{HOST}:{self.lab.dns.port}",
            "--email-reply-lookback-seconds", str(LOOKBACK_SECONDS),
            *(argument for address in addresses for argument in ("-d", address))])

    def standalone(self) -> float:
        """certonly --standalone for one DNS name, the test CA fetching http-01 on loopback."""
        return self._certonly([
            "--standalone", "--preferred-challenges", "http-01",
            "--http-01-port", str(self.lab.ports.http01), "--http-01-address", HOST,
            "-d", HTTP01_NAME])

    def _certonly(self, arguments: list[str]) -> float:
        with tempfile.TemporaryDirectory(dir=self.root) as config:
            command = [CERTBOT, "certonly", *arguments, "--server", self.test_ca.directory_url,
                       "--agree-tos", "--register-unsafely-without-email", "--non-interactive",
                       "--config-dir", config, "--work-dir", str(self.work_dir),
                       "--logs-dir", str(Path(config) / "logs")]
            environment = {**os.environ, "REQUESTS_CA_BUNDLE": str(self.test_ca.root)}
            start = time.perf_counter()
            result = subprocess.run(command, env=environment, capture_output=True, text=True,
                                    check=False)
            elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(arguments[:2])} failed:\n{result.stderr}")
        return elapsed


def main() -> None:
    """Alternate the two variants for --rounds rounds, then one many-address issuance."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--addresses", type=int, default=20)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"email-reply": [], "standalone": []}
    lab = Lab().start(pebble=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-reply-") as workdir:
            root = Path(workdir)
            with running_test_ca(lab, root / "testca", "--http01-port",
                                 str(lab.ports.http01)) as test_ca:
                runner = Runner(lab, test_ca, root)
                for round_number in range(args.rounds):
                    order = list(times) if round_number % 2 == 0 else list(times)[::-1]
                    for variant in order:
                        elapsed = runner.email_reply([ALICE]) if variant == "email-reply" \
                            else runner.standalone()
                        times[variant].append(elapsed)
                        print(f"round {round_number + 1}: {variant:12} {elapsed:7.2f} s",
                              flush=True)
                enable_plus_addressing(lab)
                addresses = [f"alice+{n}@{lab.domain}" for n in range(1, args.addresses + 1)]
                many = runner.email_reply(addresses)
    finally:
        lab.stop()
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    print(f"\nmedian of {args.rounds} issuance(s) of one name from certbot-email-testca:")
    for variant, median in medians.items():
        print(f"  {variant:12} {median:7.2f} s")
    print(f"email-reply / standalone (http-01): "
          f"{medians['email-reply'] / medians['standalone']:.2f}x (target <= 1.5x)")
    print(f"\none certificate for {args.addresses} addresses over one IMAP connection: "
          f"{many:.2f} s, {many / args.addresses:.3f} s per address "
          f"(one address alone: {medians['email-reply']:.2f} s)")


if __name__ == "__main__":
    main()
