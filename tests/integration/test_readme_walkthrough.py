"""README.rst's walk-through of the test CA on the lab, typed exactly as written there.

The commands are every literal block between the ``.. walk-through: begin`` and ``.. walk-through:
end`` comments of README.rst, in order, run in one bash from the checkout, as a person pastes
them after ``. .venv/bin/activate`` (here: this interpreter's bin directory first in PATH). The
test adds only a marker line before each step, so that each step's output can be judged, and
``set -e``, so that a failing command stops the run where it failed. The walk-through starts
its own lab, so it shares nothing with the session's.
"""
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.lab.lab import Lab

ROOT = Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.rst"
BEGIN, END = ".. walk-through: begin", ".. walk-through: end"
MARKER = "=== walk-through step"
#: Generous: the lab starts, and certbot runs four times with a mail round trip twice.
RUN_TIMEOUT = 600


def walkthrough_steps(text: str) -> list[str]:
    """The literal blocks (after a ``::`` line, indented) between the two markers, dedented."""
    section = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    lines = section.splitlines()
    steps: list[str] = []
    index = 0
    while index < len(lines):
        if not lines[index].rstrip().endswith("::"):
            index += 1
            continue
        indent = len(lines[index]) - len(lines[index].lstrip())
        block: list[str] = []
        index += 1
        while index < len(lines) and (not lines[index].strip() or
                                      len(lines[index]) - len(lines[index].lstrip()) > indent):
            block.append(lines[index])
            index += 1
        steps.append(textwrap.dedent("\n".join(block)).strip("\n"))
    return steps


def script(steps: list[str]) -> str:
    """The steps as one bash script, each announced by a marker naming it and $LAB."""
    parts = ["set -eo pipefail"]
    for number, step in enumerate(steps, 1):
        parts.append(f'echo "{MARKER} {number} LAB=${{LAB:-}}"')
        parts.append(step)
    parts.append(f'echo "{MARKER} done"')
    return "\n".join(parts) + "\n"


def split_output(output: str) -> tuple[dict[int, str], str]:
    """Each step's output by number, and the lab directory the script made."""
    outputs: dict[int, str] = {}
    lab_dir = ""
    pieces = re.split(rf"^{MARKER} (\d+|done)(?: LAB=(\S*))?$", output, flags=re.MULTILINE)
    for number, lab, text in zip(pieces[1::3], pieces[2::3], pieces[3::3], strict=True):
        if number != "done":
            outputs[int(number)] = text
        lab_dir = lab or lab_dir
    return outputs, lab_dir


def test_the_walkthrough_is_eight_steps_of_commands():
    steps = walkthrough_steps(README.read_text(encoding="utf-8"))
    assert len(steps) == 8
    assert steps[0].startswith("LAB=$(mktemp -d") and steps[-1].startswith("kill ")
    assert all("certbot " in step for step in steps[4:7])


def test_readme_walkthrough_issues_renews_revokes_and_deletes():
    missing = Lab.missing_requirements(pebble=False)
    if missing:
        reason = f"the walk-through needs {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    steps = walkthrough_steps(README.read_text(encoding="utf-8"))
    environment = {key: value for key, value in os.environ.items()
                   if not key.lower().endswith("_proxy") and key != "REQUESTS_CA_BUNDLE"}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    process = subprocess.Popen(["bash", "-c", script(steps)], cwd=ROOT, env=environment,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:  # a step hung: stop the lab and CA it started
            os.killpg(process.pid, signal.SIGTERM)
            process.communicate(timeout=60)
    outputs, lab_dir = split_output(output)
    assert process.returncode == 0, output
    assert f"{MARKER} done" in output
    assert "Successfully received certificate." in outputs[5]
    assert "email:alice@example.test" in outputs[5] and "E-mail Protection" in outputs[5]
    assert "bundle.p12" in outputs[5].split()
    assert "Congratulations, all renewals succeeded" in outputs[6]
    assert "Congratulations! You have successfully revoked" in outputs[7]
    assert re.search(r"certificate [0-9a-f]+ REVOKED \(reason 4\) by account \S+, which "
                     r"ordered it", outputs[7])
    deleted = "Deleted all files relating to certificate alice@example.test."
    assert deleted in outputs[7]
    assert outputs[7].split(deleted)[1].split() == ["README"]  # live/ holds certbot's README only
    assert lab_dir.startswith("/tmp/lab-") and not Path(lab_dir).exists()  # step 8 cleaned up
