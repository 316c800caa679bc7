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
