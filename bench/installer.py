"""Renewal reload with the mailserver installer: time from restart() to the new certificate on
every TLS listener, against a deploy hook's `postfix reload; doveadm reload` timed the same way.

Each round renews like certbot does (a new certificate version behind the same live/ links),
then either calls the installer's restart() (config tests, file checks, reload, proof) or runs
the two reload commands and polls every listener until it serves the new certificate. Variants
alternate round by round so machine noise hits both alike. Meanwhile --clients threads keep
handshaking with the listeners, and each variant reports how many of their handshakes failed
while it ran: a graceful reload drops none. --hogs processes spin on the CPU meanwhile, as on a
busy host; a restart() that fails there is a false failure (the files are fine), and is counted.

    python bench/installer.py [--rounds N] [--clients N] [--hogs N]
"""
import argparse
import collections
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certbot import errors  # noqa: E402
from certbot.configuration import NamespaceConfig  # noqa: E402
from cryptography import x509  # noqa: E402

from certbot_email_smtpext.installer import MailServerInstaller  # noqa: E402
from certbot_email_smtpext.listeners import TlsListener  # noqa: E402
from certbot_email_smtpext.tls_probe import ProbeError, served_certificate  # noqa: E402
from tests.integration.handshake_load import HandshakeLoad  # noqa: E402
from tests.lab.lab import LOOPBACK_IPS, MAIL_CERT_NAMES, Lab  # noqa: E402


def renew(lab: Lab, live: Path, version: int) -> x509.Certificate:
    """A new certificate version behind live/privkey.pem and live/fullchain.pem."""
    chain, key = lab.ca.issue(f"bench-v{version}", MAIL_CERT_NAMES, LOOPBACK_IPS)
    for link, target in ((live / "fullchain.pem", chain), (live / "privkey.pem", key)):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return x509.load_pem_x509_certificates(chain.read_bytes())[0]


def make_installer(lab: Lab, state: Path) -> MailServerInstaller:
    """The mailserver installer on the lab's instances, with certbot's dirs under state."""
    namespace = argparse.Namespace(
        config_dir=str(state / "config"), work_dir=str(state / "work"),
        logs_dir=str(state / "logs"), server="https://127.0.0.1/dir", strict_permissions=False,
        http01_port=80, https_port=443, mailserver_reload_only=False,
        mailserver_alt_cert_name=None, mailserver_dane="off", mailserver_dane_resolver=None,
        mailserver_take_over_sni=False,
        mailserver_postfix_config_dir=str(lab.postfix.etc),
        mailserver_dovecot_config=str(lab.dovecot.dir / "dovecot.conf"))
    installer = MailServerInstaller(NamespaceConfig(namespace), "mailserver")
    installer.prepare()
    return installer


def deploy_hook_reload(lab: Lab, listeners: list[TlsListener], new: x509.Certificate) -> None:
    """The baseline: reload both daemons, then poll until every listener serves new."""
    subprocess.run(["postfix", "-c", str(lab.postfix.etc), "reload"], check=True,
                   capture_output=True)
    subprocess.run(["doveadm", "-c", str(lab.dovecot.dir / "dovecot.conf"), "reload"],
                   check=True, capture_output=True)
    pending, deadline = list(listeners), time.monotonic() + 15
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"still not serving the new certificate: {pending}")
        pending = [listener for listener in pending if not _serves(listener, new)]


def _serves(listener: TlsListener, certificate: x509.Certificate) -> bool:
    """Whether the listener serves certificate right now."""
    try:
        return served_certificate(listener) == certificate
    except ProbeError:
        return False


def spin() -> None:
    """A CPU hog: busy until terminated."""
    while True:
        pass


def main() -> None:
    """Run the rounds and print both medians, their ratio, and failed client handshakes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hogs", type=int, default=1)
    arguments = parser.parse_args()
    rounds = arguments.rounds
    timings: dict[str, list[float]] = {"installer restart()": [], "deploy-hook reload": []}
    false_failures: list[str] = []
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(arguments.hogs)]
    lab = Lab().start(dns=False, dkim=False, pebble=False)
    for hog in hogs:
        hog.start()
    with lab, tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch)
        live = state / "live"
        live.mkdir()
        renew(lab, live, 0)
        installer = make_installer(lab, state)
        installer.deploy_cert(lab.mail_host, str(live / "fullchain.pem"), str(live / "privkey.pem"),
                              None, str(live / "fullchain.pem"))
        installer.save("bench: deploy")
        installer.restart()
        listeners = [listener for daemon in installer.daemons
                     for listener in daemon.tls_listeners()]
        with HandshakeLoad(listeners, arguments.clients) as load:
            for version in range(1, 2 * rounds + 1):
                new = renew(lab, live, version)
                variant = "installer restart()" if version % 2 else "deploy-hook reload"
                load.phase = variant
                started = time.perf_counter()
                if version % 2:
                    try:
                        installer.restart()
                    except errors.PluginError as error:
                        false_failures.append(str(error))
                else:
                    deploy_hook_reload(lab, listeners, new)
                timings[variant].append(time.perf_counter() - started)
                load.phase = "idle"
        daemon_trouble = collections.Counter(
            line.split(": ", 1)[-1][:110]
            for log in (lab.postfix.log_path, lab.dovecot.dir / "dovecot.log")
            for line in log.read_text(errors="replace").splitlines()
            if any(word in line for word in ("fatal", "Fatal", "throttl", "panic")))
    for hog in hogs:
        hog.terminate()
    print(f"{len(listeners)} TLS listeners (Postfix and Dovecot), {rounds} rounds each, "
          f"{arguments.clients} clients handshaking throughout, {arguments.hogs} CPU hogs")
    medians = {name: statistics.median(values) for name, values in timings.items()}
    for name, values in timings.items():
        print(f"  {name:22} median {medians[name] * 1000:7.1f} ms   "
              f"min {min(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms   "
              f"client handshakes failed {load.by_phase[name, False]} "
              f"of {load.by_phase[name, False] + load.by_phase[name, True]}")
    ratio = medians["installer restart()"] / medians["deploy-hook reload"]
    print(f"  ratio installer/baseline: {ratio:.2f}")
    print(f"  restart() false failures: {len(false_failures)} of {rounds}")
    reasons = collections.Counter(error[:150] for error in load.errors)
    for reason, count in reasons.most_common(5):
        print(f"  client handshake failure x{count}: {reason}")
    for line, count in daemon_trouble.most_common(5):
        print(f"  daemon log x{count}: {line}")
    for failure in false_failures:
        print(f"    {failure}")


if __name__ == "__main__":
    main()
