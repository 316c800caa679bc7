"""The suite's own rules: in CI a skipped test fails the run; elsewhere it stays a skip."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 failed"), ("", "1 skipped")])
def test_a_skip_fails_only_in_ci(tmp_path: Path, ci: str, outcome: str) -> None:
    (tmp_path / "test_needs_a_server.py").write_text(
        "import pytest\n\ndef test_server():\n    pytest.skip('no server here')\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=ROOT, env={**os.environ, "CI": ci, "CERTBOT_EMAIL_TEST_TALLY": ""},
        capture_output=True, text=True, timeout=120, check=False)
    assert outcome in result.stdout, result.stdout + result.stderr
    assert ("skipped in CI, where every test must run" in result.stdout) == (ci == "true")
