"""certbot-email: ACME for email (RFC 8823 S/MIME, draft-ietf-acme-email-tls) in stock certbot."""
from setuptools import find_packages, setup

setup(
    name="certbot-email",
    version="0.1.0.dev0",
    description="certbot plugins for S/MIME certificates (RFC 8823) and mail-server TLS",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["certbot_email", "certbot_email.*",
                                    "certbot_email_dns", "certbot_email_dns.*",
                                    "certbot_email_smtpext", "certbot_email_smtpext.*"]),
    install_requires=[
        # certbot_compat fits certbot 2.9 (Ubuntu 24.04) to 5.x; 2.9-3.x come with josepy 1.
        "certbot>=2.9,<6",
        "acme>=2.9,<6",
        "josepy>=1.13",
        "cryptography>=43",
        "dnspython>=2.6",
        "imapclient>=3.0",
        "dkimpy>=1.1",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6", "acme2certifier==0.46.3"],
        "lint": ["ruff", "mypy", "types-requests"],
        # bench/email_dns.py measures us against certbot's own RFC 2136 plugin.
        "bench": ["certbot-dns-rfc2136"],
    },
    entry_points={
        "certbot.plugins": [
            "email-reply = certbot_email.reply_plugin:Authenticator",
            "email-dns = certbot_email_dns.plugin:Authenticator",
            "postfix = certbot_email_smtpext.installer:PostfixInstaller",
            "dovecot = certbot_email_smtpext.installer:DovecotInstaller",
            "mailserver = certbot_email_smtpext.installer:MailServerInstaller",
            "email-capability = certbot_email_smtpext.capability_plugin:Authenticator",
        ],
        "console_scripts": [
            "certbot-email-testca = certbot_email.testing.cli:main",
            "certbot-email-pkcs12 = certbot_email.pkcs12_hook:main",
        ],
    },
)
