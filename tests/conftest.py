"""Suite-wide: no skipping in CI, and a tally per run for the test command's closing line."""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI") == "true"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """In CI a skip is a failure: a test that did not run proved nothing."""
    report: pytest.TestReport = yield
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Append ``<env> passed failed integration-passed skipped`` to $CERTBOT_EMAIL_TEST_TALLY."""
    tally = os.environ.get("CERTBOT_EMAIL_TEST_TALLY")
    passed = terminalreporter.stats.get("passed", [])
    failed = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    skipped = terminalreporter.stats.get("skipped", [])
    integration = [report for report in passed if report.nodeid.startswith("tests/integration/")]
    terminalreporter.write_line(f"integration tests passed in this run: {len(integration)}")
    if tally:
        with open(tally, "a", encoding="utf-8") as out:
            out.write(f"{os.environ.get('TOX_ENV_NAME', 'pytest')} {len(passed)} "
                      f"{len(failed)} {len(integration)} {len(skipped)}\n")
