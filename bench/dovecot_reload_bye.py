"""How many IMAP clients a Dovecot reload tells "* BYE Shutting down", on a loaded machine:
email-capability's validations (two reloads, spaced by the backend) against the baseline of
two plain ``doveadm reload`` run the same time apart, in the same run and under the same load
(two CPU hogs, four client loops reading the capabilities as the CA does).

Dovecot's log says which race each BYE came from: "waited 0 secs" is a login process stopped
before it reached auth at all (every reload has it); "waited N secs" with N > 0 is one stopped
while it retried auth after an earlier reload, the race the backend's spacing prevents.
Validations and baseline alternate round by round so machine noise hits both alike.

    python bench/dovecot_reload_bye.py [--rounds N]
"""
import argparse
import multiprocessing
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from certbot import reverter  # noqa: E402

from certbot_email_smtpext import capability_dovecot, capability_probe  # noqa: E402
from certbot_email_smtpext.capability_state import ValidationState  # noqa: E402
from tests.integration.test_email_capability import (  # noqa: E402
    LOGIN_SHUT_DOWN_BEFORE_AUTH,
    ClientLoop,
    dovecot_log,
    plugin_config,
    spin,
)
from tests.lab import HOST, Lab  # noqa: E402

PATIENCE = 30.0


def validation(lab: Lab, work: Path, value: str) -> None:
    """One email-capability round on the Dovecot backend, as the plugin runs it."""
    state = ValidationState(str(work / "state"), reverter.Reverter(plugin_config(work)))
    backend = capability_dovecot.DovecotImap(str(lab.dovecot.config_file))
    backend.advertise(state, [value])
    if not capability_probe.wait_until("imap", HOST, lab.ports.imap, False,
                                       capability_probe.shows_all([value]), PATIENCE)[0]:
        sys.exit("the atom never showed")
    backend.settle()
    if state.restore():
        sys.exit("restore failed")
    state.finish()


def plain_reloads(lab: Lab) -> None:
    """Two ``doveadm reload`` as far apart as the backend spaces its own."""
    for _ in range(2):
        subprocess.run(["doveadm", "-c", str(lab.dovecot.config_file), "reload"], check=True)
        time.sleep(capability_dovecot.RELOAD_SPACING_SECONDS)


def main() -> None:
    """Alternate the two kinds of round; print per kind the BYEs clients met and the log's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    lab = Lab().start(dns=False, mail=True, dkim=False, pebble=False)
    work = Path(tempfile.mkdtemp(prefix="bench-reload-bye-"))
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(2)]
    loops = [ClientLoop("imap", lab.ports.imap) for _ in range(4)]
    kinds = {"validation": types.SimpleNamespace(byes=0, waited_0=0, waited_more=0, sessions=0),
             "baseline doveadm reload": types.SimpleNamespace(byes=0, waited_0=0, waited_more=0,
                                                              sessions=0)}
    try:
        for hog in hogs:
            hog.start()
        for loop in loops:
            loop.__enter__()
        for round_number in range(rounds):
            for kind, tally in kinds.items():
                log_start = dovecot_log(lab).stat().st_size
                failures = sum(len(loop.failures) for loop in loops)
                sessions = sum(loop.sessions for loop in loops)
                if kind == "validation":
                    validation(lab, work / str(round_number), f"round-{round_number}")
                else:
                    plain_reloads(lab)
                capability_dovecot.DovecotImap(str(lab.dovecot.config_file)).settle()
                new = [failure for loop in loops for failure in loop.failures][failures:]
                tally.byes += sum("* BYE" in failure for failure in new)
                tally.sessions += sum(loop.sessions for loop in loops) - sessions
                with dovecot_log(lab).open("rb") as log:
                    log.seek(log_start)
                    waits = [int(seconds) for seconds in LOGIN_SHUT_DOWN_BEFORE_AUTH.findall(
                        log.read().decode(errors="replace"))]
                tally.waited_0 += waits.count(0)
                tally.waited_more += len(waits) - waits.count(0)
    finally:
        for loop in loops:
            loop.__exit__()
        for hog in hogs:
            hog.terminate()
        lab.stop()
    baseline = kinds["baseline doveadm reload"]
    print(f"{rounds} rounds of two reloads each, 2 CPU hogs, 4 client loops; BYEs clients met, "
          "Dovecot's log lines for login processes stopped before auth (waited 0 s / longer)")
    for kind, tally in kinds.items():
        ratio = f"x{tally.byes / baseline.byes:.2f}" if baseline.byes else "(baseline 0)"
        print(f"  {kind:24} {tally.byes:3} BYE in {tally.sessions:6} sessions  {ratio:12} "
              f"log: waited 0 s {tally.waited_0:3}, longer {tally.waited_more:3}")


if __name__ == "__main__":
    main()
