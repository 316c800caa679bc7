"""Integration tests run against real servers on loopback: one tests.lab.Lab for the whole session.

A missing server binary skips these tests locally but fails them when CI=true, so that CI can
never go green by skipping. Every test in this directory is marked `integration`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # `pytest tests/integration` from anywhere must find tests.lab
    sys.path.insert(0, str(ROOT))

from tests.lab import Lab  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test below this directory `integration` (so `-m "not integration"` works)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """All lab servers, started once per session and stopped at its end."""
    missing = Lab.missing_requirements()
    if missing:
        reason = f"lab unavailable, missing {', '.join(missing)}: see tools/install-system-deps.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with Lab() as running:
        yield running


@pytest.fixture
def fresh_mailboxes(lab: Lab) -> None:
    """Empty INBOXes: the session's mailboxes are shared, and a challenge mail another test left
    behind is as genuine as the one this test waits for."""
    for user in lab.users:
        lab.empty_mailbox(user)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every server log to the report of a failed test that used the lab."""
    report = yield
    running = getattr(item, "funcargs", {}).get("lab")
    if report.failed and isinstance(running, Lab):
        report.sections.append(("lab server logs", running.format_logs()))
    return report
