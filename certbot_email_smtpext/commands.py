"""Running the mail daemons' command-line tools (postconf, doveconf, postfix, doveadm, ...)."""
import logging
import subprocess
from collections.abc import Sequence

from certbot import errors

logger = logging.getLogger(__name__)


def run(argv: Sequence[str]) -> str:
    """Run a tool for its stdout: a failure becomes a PluginError showing its output."""
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          check=False)
    if done.returncode != 0:
        raise errors.PluginError(f"`{' '.join(argv)}` failed with exit status "
                                 f"{done.returncode}: {(done.stderr or done.stdout).strip()}")
    for line in done.stderr.splitlines():
        logger.info("%s: %s", argv[0], line)
    return done.stdout
