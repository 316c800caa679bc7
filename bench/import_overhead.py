"""What certbot-email costs every certbot run on the host: `certbot plugins` with and without us.

certbot imports every plugin module before it parses its command line, so our import time is
paid by nginx and apache renewals too. Both variants run through the same launcher, which hides
our entry points in the "without" rounds; rounds alternate so machine noise hits both alike.

    python bench/import_overhead.py [--rounds N]
"""
import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time

LAUNCHER = """
import importlib.metadata as metadata, os, sys
if os.environ.get("BENCH_HIDE_CERTBOT_EMAIL"):
    all_entry_points = metadata.entry_points
    def entry_points(**selection):
        found = all_entry_points(**selection)
        return metadata.EntryPoints(ep for ep in found
                                    if not ep.value.startswith("certbot_email"))
    metadata.entry_points = entry_points
from certbot.main import main
sys.exit(main(sys.argv[1:]))
"""


def run_plugins(workdir: str, hide_us: bool) -> float:
    """Wall time of one `certbot plugins` run."""
    env = dict(os.environ)
    env.pop("BENCH_HIDE_CERTBOT_EMAIL", None)
    if hide_us:
        env["BENCH_HIDE_CERTBOT_EMAIL"] = "1"
    args = [sys.executable, "-c", LAUNCHER, "plugins", "--config-dir", f"{workdir}/config",
            "--work-dir", f"{workdir}/work", "--logs-dir", f"{workdir}/logs"]
    start = time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"certbot plugins failed:\n{result.stderr}")
    listed = "* email-reply" in result.stdout
    if listed == hide_us:
        raise SystemExit("the launcher did not hide/show certbot-email as asked")
    return elapsed


def main() -> None:
    """Alternate the two variants, then print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    rounds = parser.parse_args().rounds
    # pip byte-compiles an installed package; an editable checkout (or PYTHONDONTWRITEBYTECODE)
    # would otherwise make every round compile our sources, a cost no real host pays.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for package in ("certbot_email", "certbot_email_dns", "certbot_email_smtpext"):
        compileall.compile_dir(os.path.join(root, package), quiet=1)
    with_us: list[float] = []
    without_us: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        run_plugins(workdir, hide_us=False)  # warm the page cache and .pyc files
        for _ in range(rounds):
            without_us.append(run_plugins(workdir, hide_us=True))
            with_us.append(run_plugins(workdir, hide_us=False))
    base, ours = statistics.median(without_us), statistics.median(with_us)
    print(f"certbot plugins, {rounds} rounds each, alternating")
    print(f"  without certbot-email: median {base * 1000:.0f} ms")
    print(f"  with certbot-email:    median {ours * 1000:.0f} ms")
    print(f"  ratio: {ours / base:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
