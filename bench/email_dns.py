"""One dns-01 certificate from the lab's Pebble: email-dns vs certbot-dns-rfc2136 vs --standalone.

All three run the real certbot CLI against the same Pebble; the two DNS plugins update the
same BIND with the same TSIG key. certbot-dns-rfc2136 keeps its defaults (60 s propagation
sleep) except the algorithm, which must match the lab's hmac-sha256 key (its default, MD5,
would be refused). Variants alternate round by round so machine noise hits all alike.

    python bench/email_dns.py [--rounds N]    (needs: pip install certbot-dns-rfc2136)
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab.lab import Lab  # noqa: E402  (the repository root must be on sys.path first)
from tests.lab.ports import HOST  # noqa: E402

CERTBOT = str(Path(sys.executable).with_name("certbot"))
ZONE = "example.test"


def write_ini(path: Path, lab: Lab, prefix: str) -> Path:
    """A 0600 credentials INI for the lab's BIND with the given plugin key prefix."""
    bind = lab.dns
    path.write_text(f"{prefix}_server = {HOST}\n{prefix}_port = {bind.port}\n"
                    f"{prefix}_name = {bind.key_name}.\n{prefix}_secret = {bind.key_secret}\n"
                    f"{prefix}_algorithm = HMAC-SHA256\n")
    path.chmod(0o600)
    return path


def variant_args(variant: str, lab: Lab, root: Path, round_number: int) -> list[str]:
    """certbot arguments for one issuance with ``variant``."""
    if variant == "standalone":
        return ["--standalone", "--preferred-challenges", "http-01", "--http-01-port",
                str(lab.ports.http01), "-d", f"imap.{ZONE}"]
    name = f"bench-{variant}-{round_number}.{ZONE}"
    if variant == "email-dns":
        ini = write_ini(root / "email-dns.ini", lab, "email_dns")
        return ["-a", "email-dns", "--email-dns-credentials", str(ini),
                "--email-dns-nameserver-port", str(lab.dns.port), "-d", name]
    ini = write_ini(root / "rfc2136.ini", lab, "dns_rfc2136")
    return ["-a", "dns-rfc2136", "--dns-rfc2136-credentials", str(ini), "-d", name]


def issue(lab: Lab, variant: str, round_number: int) -> float:
    """Wall time of one `certbot certonly` from a fresh config dir (new account each time)."""
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as workdir:
        root = Path(workdir)
        args = [CERTBOT, "certonly", *variant_args(variant, lab, root, round_number),
                *lab.pebble.certbot_options(root)]
        start = time.perf_counter()
        result = subprocess.run(args, env=lab.pebble.certbot_environment(),
                                capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{result.stdout}{result.stderr}")
        return elapsed


def main() -> None:
    """Alternate the variants for --rounds rounds and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if importlib.util.find_spec("certbot_dns_rfc2136") is None:
        raise SystemExit("certbot-dns-rfc2136 is not installed: pip install certbot-dns-rfc2136")
    variants = ["email-dns", "dns-rfc2136", "standalone"]
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    lab = Lab().start(mail=False, dkim=False, pebble=True)
    try:
        for round_number in range(args.rounds):
            order = variants if round_number % 2 == 0 else variants[::-1]
            for variant in order:
                times[variant].append(issue(lab, variant, round_number))
                print(f"round {round_number + 1}: {variant:12} {times[variant][-1]:7.2f} s",
                      flush=True)
    finally:
        lab.stop()
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    print(f"\nmedian of {args.rounds} issuance(s), dns-01 from Pebble via the lab's BIND:")
    for variant in variants:
        print(f"  {variant:12} {medians[variant]:7.2f} s")
    print(f"certbot-dns-rfc2136 / email-dns: {medians['dns-rfc2136'] / medians['email-dns']:.1f}x")
    print(f"email-dns / standalone (http-01): {medians['email-dns'] / medians['standalone']:.2f}x")


if __name__ == "__main__":
    main()
