"""certbot objects as the running certbot makes them (5.3+ and older): for the unit tests."""
import importlib.util
from typing import Any

from acme import messages
from certbot import achallenges, util

#: certbot >= 5.2.1 keeps names as ``san.DNSName``; older certbot as ``str``.
HAS_SAN = importlib.util.find_spec("certbot._internal.san") is not None


def annotated_challenge(challb: messages.ChallengeBody, account_key: Any, typ: str,
                        value: str) -> achallenges.KeyAuthorizationAnnotatedChallenge:
    """What certbot's auth handler passes to perform(): ``identifier`` since 5.3, else
    ``domain`` (which 5.3 deprecates)."""
    cls = achallenges.KeyAuthorizationAnnotatedChallenge
    if "identifier" in cls.__slots__:
        return cls(challb=challb, account_key=account_key,
                   identifier=messages.Identifier(typ=typ, value=value))
    return cls(challb=challb, account_key=account_key, domain=value)


def config_name(name: str) -> Any:
    """One ``-d`` name as certbot keeps it in ``config.domains``."""
    if HAS_SAN:
        from certbot._internal import san
        return san.DNSName(name)
    return util.enforce_domain_sanity(name)
