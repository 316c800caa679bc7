"""Running the mail daemons' command-line tools (postconf, doveconf, postfix, doveadm, ...)."""
import logging
import subprocess
from collections.abc import Callable, Sequence

from certbot import errors

logger = logging.getLogger(__name__)

#: A stuck tool (a hung NFS mount, a wedged master) must not hang `certbot renew` for ever.
TIMEOUT_SECONDS = 120


def run(argv: Sequence[str],
        judge: Callable[[str], str | None] | None = None) -> str:
    """Run a tool for its stdout: a failure becomes a PluginError showing its output.

    judge: turns a stderr line that is a failure (not just a notice) into the reason why.
    """
    done = status(argv)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip() or "no output (see the mail log)"
        raise errors.PluginError(f"`{' '.join(argv)}` failed with exit status "
                                 f"{done.returncode}: {output}")
    failures = [reason for line in dict.fromkeys(done.stderr.splitlines())
                if judge is not None and (reason := judge(line))]
    if failures:
        raise errors.PluginError("; ".join(failures))
    for line in done.stderr.splitlines():
        logger.info("%s: %s", argv[0], line)
    return done.stdout


def status(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a tool whose exit status is the answer; only a hang is an error."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=TIMEOUT_SECONDS, check=False)
    except OSError as error:
        raise errors.PluginError(f"cannot run `{' '.join(argv)}`: {error}") from None
    except subprocess.TimeoutExpired:
        raise errors.PluginError(f"`{' '.join(argv)}` did not finish within {TIMEOUT_SECONDS} s; "
                                 "check that the daemon and its config directory respond") from None
