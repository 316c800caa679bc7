"""certbot-email mail-server plugins: Postfix and Dovecot installers, capability proofs."""
