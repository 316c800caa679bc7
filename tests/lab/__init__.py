"""Integration-test lab: real BIND, Postfix, Dovecot, OpenDKIM and Pebble on loopback.

Plain Python (no pytest), so that tests, benchmarks and the demo share it::

    from tests.lab import Lab
    with Lab() as lab:
        lab.submit_mail("alice", lab.message("alice", "ca", "hello"))
        raw = lab.wait_for_mail("ca", "hello")
"""

from .bind import Bind
from .certs import CertificateAuthority
from .dkim import RFC8823_SIGNED_HEADERS, OpenDkim
from .dovecot import Dovecot
from .lab import DOMAIN, MAIL_HOST, USERS, Lab, User
from .pebble import Pebble
from .ports import HOST, Ports
from .postfix import Postfix
from .process import LabError

__all__ = [
    "DOMAIN", "HOST", "MAIL_HOST", "RFC8823_SIGNED_HEADERS", "USERS",
    "Bind", "CertificateAuthority", "Dovecot", "Lab", "LabError", "OpenDkim", "Pebble", "Ports",
    "Postfix", "User",
]
