"""certbot-email-testca: a strict ACME test CA for RFC 8823 and the email-tls challenges.

For tests, the demo and evaluation only; never for production (see README.rst). Pure logic:
``problems``, ``model``, ``jws``, ``issuance``, ``mailcheck`` and the composing/parsing parts of
``mailer`` and ``validators``. Sockets: ``validators.Network``, ``mailer.Mailer``, ``mailbox``,
``server``. Wiring: ``authority`` (what each request does), ``runtime``, ``cli``.
"""
