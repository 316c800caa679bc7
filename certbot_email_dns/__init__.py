"""certbot-email ``email-dns``: dns-email-00 and dns-01 over RFC 2136."""
