"""certbot-email: the base package (RFC 8823 ``email-reply`` and shared protocol code)."""
