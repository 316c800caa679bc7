"""``certbot-email-testca``: run the strict ACME test CA from the command line."""
import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from certbot_email.protocol import challenges as email_challenges
from certbot_email.testing import runtime
from certbot_email.testing.config import CAConfig, MailSettings, ReplyJoining
from certbot_email.testing.server import BANNER


def _service_port(text: str) -> tuple[str, int]:
    """``SERVICE=PORT`` for --service-port."""
    service, sep, port = text.partition("=")
    if not sep or service not in email_challenges.SERVICE_PORTS or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected SERVICE=PORT with SERVICE one of "
            f"{', '.join(sorted(email_challenges.SERVICE_PORTS))}")
    return service, int(port)


def build_parser() -> argparse.ArgumentParser:
    """Every option of the test CA, documented."""
    parser = argparse.ArgumentParser(
        prog="certbot-email-testca", description=BANNER + ". A strict ACME (RFC 8555) CA "
        "that also offers RFC 8823 email-reply-00 and the email-tls draft's dns-email-00 and "
        "capability-smtp/imap/pop-00 challenges, plus http-01 and dns-01.")
    ca = parser.add_argument_group("ACME server")
    ca.add_argument("--listen-address", default="127.0.0.1",
                    help="address the HTTPS listener binds to (default: %(default)s)")
    ca.add_argument("--port", type=int, default=14000,
                    help="HTTPS port; 0 picks a free one (default: %(default)s)")
    ca.add_argument("--state-dir", type=Path, default=Path("testca-state"),
                    help="where the root (root.pem, for clients), keys and DKIM record are "
                    "kept (default: %(default)s)")
    ca.add_argument("--validity-days", type=int, default=7,
                    help="lifetime of issued certificates (default: %(default)s)")
    ca.add_argument("--retry-after", type=int, default=1,
                    help="Retry-After seconds on processing objects (default: %(default)s)")
    net = parser.add_argument_group("validation")
    net.add_argument("--dns-server", default=None,
                     help="DNS server address for every lookup (TXT, A, DKIM keys); the "
                     "system resolver is never used")
    net.add_argument("--dns-port", type=int, default=53, help="its port (default: %(default)s)")
    net.add_argument("--http01-port", type=int, default=80,
                     help="port the http-01 check connects to (default: %(default)s)")
    net.add_argument("--service-port", type=_service_port, action="append", default=[],
                     metavar="SERVICE=PORT",
                     help="connect to PORT instead when checking SERVICE's capability "
                     "(for servers on unprivileged test ports); repeatable")
    net.add_argument("--any-port", action="store_true",
                     help="accept a 'port' other than the service's default port in "
                     "email-tls responses (default: default ports only)")
    net.add_argument("--dns-email-arrays", action="store_true",
                     help="accept the draft's open 'services'/'ports' arrays variant in "
                     "dns-email-00 responses")
    net.add_argument("--srv-for-any-method", action="store_true",
                     help="allow SRVName SANs for any validated host (RFC 7817 §4.1), not only "
                     "for the service an email-tls challenge proved")
    mail = parser.add_argument_group("email-reply-00 (RFC 8823)")
    mail.add_argument("--mail-from", default="acme@example.test",
                      help="From of challenge mails, and the challenge's 'from' "
                      "(default: %(default)s)")
    mail.add_argument("--reply-to", default=None, help="optional Reply-To of challenge mails")
    mail.add_argument("--smtp-host", default="127.0.0.1",
                      help="SMTP server for challenge mails (default: %(default)s)")
    mail.add_argument("--smtp-port", type=int, default=25, help="its port (default: %(default)s)")
    mail.add_argument("--local-hostname", default="testca.localhost",
                      help="name in our EHLO (default: %(default)s)")
    mail.add_argument("--dkim-selector", default="testca",
                      help="DKIM selector; publish <state-dir>/dkim-record.txt under it "
                      "(default: %(default)s)")
    mail.add_argument("--dkim-key", type=Path, default=None,
                      help="PEM RSA key for DKIM (default: one kept in the state directory)")
    mail.add_argument("--imap-host", default="127.0.0.1",
                      help="IMAP server of the CA's mailbox (default: %(default)s)")
    mail.add_argument("--imap-port", type=int, default=143, help="its port (default: %(default)s)")
    mail.add_argument("--imap-tls", action="store_true", help="IMAP over implicit TLS")
    mail.add_argument("--imap-user", default=None,
                      help="IMAP login of the CA's mailbox; without it replies are not read")
    mail.add_argument("--imap-password-file", type=Path, default=None,
                      help="file holding the IMAP password (kept off the command line)")
    mail.add_argument("--poll-seconds", type=float, default=1.0,
                      help="how often the mailbox is read (default: %(default)s)")
    mail.add_argument("--token-lifetime", type=int, default=24 * 3600,
                      help="seconds a token-part1 stays usable (default: %(default)s, the CA/B "
                      "S/MIME BR limit)")
    imitate = parser.add_argument_group("imitating other deployed CAs")
    imitate.add_argument("--send-on-post", action="store_true",
                         help="send the challenge mail only after the client's POST (akamu)")
    imitate.add_argument("--token-joining", choices=[j.value for j in ReplyJoining],
                         default=ReplyJoining.EITHER.value,
                         help="'either' uses a 24-byte token-part1 so both readings agree; "
                         "'string' or 'bytes' use 32 bytes and accept only that reading "
                         "(default: %(default)s)")
    imitate.add_argument("--unsigned-challenge", action="store_true",
                         help="send challenge mails without a DKIM signature")
    imitate.add_argument("--no-auto-submitted", action="store_true",
                         help="leave the Auto-Submitted header out of challenge mails")
    imitate.add_argument("--smime-challenge", action="store_true",
                         help="S/MIME-sign challenge mails (multipart/signed over a "
                         "message/rfc822 copy, for header protection) instead of DKIM")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def config_from_args(args: argparse.Namespace) -> CAConfig:
    """Turn parsed options into a ``CAConfig``."""
    password = None
    if args.imap_password_file is not None:
        password = args.imap_password_file.read_text(encoding="utf-8").strip()
    mail = MailSettings(
        sender=args.mail_from, reply_to=args.reply_to, smtp_host=args.smtp_host,
        smtp_port=args.smtp_port, local_hostname=args.local_hostname,
        dkim_selector=args.dkim_selector, dkim_key=args.dkim_key, imap_host=args.imap_host,
        imap_port=args.imap_port, imap_tls=args.imap_tls, imap_user=args.imap_user,
        imap_password=password, poll_seconds=args.poll_seconds,
        token_lifetime_seconds=args.token_lifetime, send_on_post=args.send_on_post,
        joining=ReplyJoining(args.token_joining), unsigned=args.unsigned_challenge,
        omit_auto_submitted=args.no_auto_submitted, smime=args.smime_challenge)
    return CAConfig(
        state_dir=args.state_dir, listen_address=args.listen_address, port=args.port,
        validity_days=args.validity_days, dns_server=args.dns_server, dns_port=args.dns_port,
        http01_port=args.http01_port, default_ports_only=not args.any_port,
        dns_email_arrays=args.dns_email_arrays, srv_for_any_method=args.srv_for_any_method,
        service_port_overrides=dict(args.service_port), retry_after_seconds=args.retry_after,
        mail=mail)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        launched = runtime.launch(config_from_args(args))
    except ValueError as error:
        build_parser().error(str(error))
    print(f"{BANNER}\ndirectory: {launched.directory_url}\nroot: {launched.root_path}\n"
          f"DKIM record: {args.state_dir / runtime.DKIM_RECORD_FILE}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    launched.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
