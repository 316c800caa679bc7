"""Suite-wide: tally results per run, so the test command can print one closing line."""
import os

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Append ``<env> passed failed integration-passed`` to $CERTBOT_EMAIL_TEST_TALLY."""
    tally = os.environ.get("CERTBOT_EMAIL_TEST_TALLY")
    passed = terminalreporter.stats.get("passed", [])
    failed = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    integration = [report for report in passed if "/integration/" in report.nodeid or
                   report.nodeid.startswith("tests/integration/")]
    terminalreporter.write_line(f"integration tests passed in this run: {len(integration)}")
    if tally:
        with open(tally, "a", encoding="utf-8") as out:
            out.write(f"{os.environ.get('TOX_ENV_NAME', 'pytest')} {len(passed)} "
                      f"{len(failed)} {len(integration)}\n")
