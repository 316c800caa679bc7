"""The daemons' tools: output, failures and hangs."""
import pytest
from certbot import errors

from certbot_email_smtpext import commands


def test_output_is_returned_and_a_failure_shows_the_tools_words():
    assert commands.run(["echo", "hello"]) == "hello\n"
    with pytest.raises(errors.PluginError, match="exit status 3: boom"):
        commands.run(["sh", "-c", "echo boom >&2; exit 3"])


def test_a_hanging_tool_is_an_error_not_a_hung_renewal(monkeypatch):
    monkeypatch.setattr(commands, "TIMEOUT_SECONDS", 0.2)
    with pytest.raises(errors.PluginError, match="did not finish within 0.2 s"):
        commands.run(["sleep", "5"])
    assert commands.status(["false"]).returncode == 1


def test_a_tool_with_no_output_says_where_to_look_and_a_judged_warning_fails():
    with pytest.raises(errors.PluginError, match=r"exit status 1: no output \(see the mail log\)"):
        commands.run(["false"])
    judge = {"Warning: bad": "bad is a failure"}.get
    assert commands.run(["sh", "-c", "echo fine >&2"], judge) == ""
    with pytest.raises(errors.PluginError, match="^bad is a failure$"):
        commands.run(["sh", "-c", "echo 'Warning: bad' >&2; echo 'Warning: bad' >&2"], judge)
