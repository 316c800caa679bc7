"""The answered-mail journal: remembered across runs, pruned, robust to a damaged file."""
import datetime
import json
import logging
import os
from pathlib import Path

import pytest

from certbot_email.reply_journal import KEEP, AnsweredJournal


def test_recorded_keys_are_loaded_by_a_later_run(tmp_path: Path) -> None:
    path = str(tmp_path / "work" / "journal.json")
    AnsweredJournal(path).record(["token-part1:abc", "message-id:<1@ca>"])
    AnsweredJournal(path).record(["token-part1:def"])
    assert AnsweredJournal(path).load() == {"token-part1:abc", "message-id:<1@ca>",
                                           "token-part1:def"}
    assert oct(os.stat(tmp_path / "work").st_mode & 0o777) == "0o700"


def test_missing_file_is_an_empty_journal(tmp_path: Path) -> None:
    assert AnsweredJournal(str(tmp_path / "none.json")).load() == set()


def test_old_entries_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    old = datetime.datetime.now(datetime.timezone.utc) - KEEP - datetime.timedelta(days=1)
    path.write_text(json.dumps({"token-part1:old": old.isoformat(), "token-part1:bad": "x"}))
    journal = AnsweredJournal(str(path))
    journal.record(["token-part1:new"])
    assert journal.load() == {"token-part1:new"}
    assert set(json.loads(path.read_text())) == {"token-part1:new"}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_damaged_file_is_reported_and_replaced(tmp_path: Path, content: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        assert AnsweredJournal(str(path)).load() == set()
    assert "may be answered again" in caplog.text
    AnsweredJournal(str(path)).record(["token-part1:x"])
    assert AnsweredJournal(str(path)).load() == {"token-part1:x"}


def test_the_journal_keeps_only_the_newest_entries(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("certbot_email.reply_journal.MAX_ENTRIES", 3)
    journal = AnsweredJournal(str(tmp_path / "journal.json"))
    for key in ("a", "b", "c", "d"):
        journal.record([f"token-part1:{key}"])
    assert journal.load() == {"token-part1:b", "token-part1:c", "token-part1:d"}
