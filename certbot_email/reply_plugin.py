"""certbot plugin layer of ``email-reply``: S/MIME certificates through RFC 8823."""
from typing import Any, Callable, Iterable

from acme import challenges
from certbot import achallenges, errors, interfaces
from certbot.plugins import common

from certbot_email import certbot_compat
from certbot_email.protocol import identifiers
from certbot_email.protocol.challenges import EmailReply00

certbot_compat.install()


class Authenticator(common.Plugin, interfaces.Authenticator):
    """Answers RFC 8823 challenge mails for the mailboxes being certified."""

    description = "Obtain S/MIME certificates for email addresses (RFC 8823 email-reply-00)"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        """No options yet."""

    def prepare(self) -> None:
        """Refuse on a certbot whose internals our hooks do not fit."""
        certbot_compat.require_support()
        if getattr(self.config, "allow_subset_of_names", False):
            raise errors.MisconfigurationError(
                "--allow-subset-of-names is not supported for email addresses")

    def more_info(self) -> str:
        """Shown by ``certbot plugins``."""
        return ("Proves control of a mailbox by answering the CA's challenge mail "
                "(RFC 8823); use with certonly -d you@example.com.")

    def get_chall_pref(self, identifier: str) -> Iterable[type[challenges.Challenge]]:
        """email-reply-00 for mailboxes, nothing for host names."""
        return [EmailReply00] if identifiers.is_mailbox(identifier) else []

    def perform(self, achalls: list[achallenges.AnnotatedChallenge]
                ) -> list[challenges.ChallengeResponse]:
        """Not built yet (issue 4)."""
        raise errors.PluginError("email-reply cannot answer challenge mails yet")

    def cleanup(self, achalls: list[Any]) -> None:
        """Nothing to undo yet."""
