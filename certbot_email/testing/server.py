"""HTTPS front of the test CA: routes RFC 8555 requests to ``TestCA`` and writes the answers.

Standard-library HTTP server, TLS with a certificate from the CA's own root, bound to one
address. Any failure inside a request becomes a problem document; the server keeps serving.
"""
import http.server
import json
import logging
import re
import socketserver
import ssl
import threading
from typing import Any, Optional

from certbot_email.testing import jws, problems
from certbot_email.testing.authority import TestCA
from certbot_email.testing.model import PROCESSING

logger = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
JOSE_JSON = "application/jose+json"
PROBLEM_JSON = "application/problem+json"
BANNER = "certbot-email test CA: for tests, demos and evaluation only; never for production"
EXTENSION_CHALLENGES = ("email-reply-00", "dns-email-00", "capability-smtp-00",
                        "capability-imap-00", "capability-pop-00")
_ROUTE = re.compile(r"^/acme/(acct|order|authz|chall|finalize|cert)/([A-Za-z0-9_-]+)"
                    r"(/orders)?$")


class Reply:
    """One HTTP answer: status, body, extra headers."""

    def __init__(self, status: int, body: Any, headers: Optional[dict[str, str]] = None,
                 content_type: str = "application/json") -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.content_type = content_type


class Handler(http.server.BaseHTTPRequestHandler):
    """Parses one request, checks its JWS, and dispatches to the CA."""

    server: "CAServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Access log through ``logging`` rather than stderr."""
        logger.debug("%s " + format, self.address_string(), *args)

    @property
    def base(self) -> str:
        """``https://host:port`` as the client addressed us; JWS urls must match it."""
        return f"https://{self.headers.get('Host') or self.server.netloc}"

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        """newNonce by HEAD (RFC 8555 §7.2)."""
        self._guarded(lambda: self._nonce_reply(200), head=True)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """The directory and newNonce; everything else needs POST-as-GET."""
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        """Every signed ACME request."""
        self._guarded(self._post)

    def _guarded(self, action: Any, head: bool = False) -> None:
        """Run ``action``; problems and crashes become problem documents."""
        try:
            reply = action()
        except problems.AcmeProblemError as problem:
            logger.info("%s %s -> %s", self.command, self.path, problem)
            reply = Reply(problem.status, problem.to_json(), content_type=PROBLEM_JSON)
        except Exception:  # noqa: BLE001 - the CA keeps serving whatever happens
            logger.exception("%s %s crashed", self.command, self.path)
            internal = problems.AcmeProblemError("serverInternal", "internal error", 500)
            reply = Reply(500, internal.to_json(), content_type=PROBLEM_JSON)
        self._send(reply, head)

    def _send(self, reply: Reply, head: bool) -> None:
        """Write status, headers (always a fresh nonce and the index link) and body."""
        data = reply.body if isinstance(reply.body, bytes) else \
            json.dumps(reply.body, indent=1).encode("utf-8") if reply.body is not None else b""
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(0 if head else len(data)))
        self.send_header("Replay-Nonce", self.server.ca.store.new_nonce())
        self.send_header("Cache-Control", "no-store")
        self.send_header("Link", f'<{self.base}/directory>;rel="index"')
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _nonce_reply(self, status: int) -> Reply:
        return Reply(status, None)

    def _get(self) -> Reply:
        if self.path == "/directory":
            return Reply(200, self._directory())
        if self.path == "/acme/new-nonce":
            return self._nonce_reply(204)
        if self.path == "/":
            return Reply(200, BANNER.encode("ascii") + b"\n", content_type="text/plain")
        raise problems.AcmeProblemError("malformed", "use POST-as-GET for ACME resources", 405)

    def _directory(self) -> dict[str, Any]:
        base = self.base
        return {"newNonce": f"{base}/acme/new-nonce", "newAccount": f"{base}/acme/new-account",
                "newOrder": f"{base}/acme/new-order", "revokeCert": f"{base}/acme/revoke-cert",
                "meta": {"website": f"{base}/", "externalAccountRequired": False,
                         "extensionChallenges": list(EXTENSION_CHALLENGES),
                         "identifierTypes": ["dns", "email"],
                         "testCA": BANNER}}

    def _read_body(self) -> bytes:
        """The request body, bounded, with the JOSE content type (RFC 8555 §6.2)."""
        if self.headers.get("Content-Type", "").split(";")[0].strip() != JOSE_JSON:
            raise problems.AcmeProblemError("malformed", f"Content-Type must be {JOSE_JSON}", 415)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise problems.malformed("Content-Length is required") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise problems.malformed(f"the body must be at most {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _post(self) -> Reply:
        body = self._read_body()
        ca, base, path = self.server.ca, self.base, self.path
        url = base + path
        prefix = f"{base}/acme/acct/"
        if path == "/acme/new-account":
            request = jws.verify_request(body, url, ca.store, prefix, new_account=True)
            account, created = ca.new_account(request)
            return Reply(201 if created else 200, account.to_json(base),
                         {"Location": prefix + account.ident})
        if path == "/acme/revoke-cert":
            ca.revoke(jws.verify_request(body, url, ca.store, prefix, key_or_account=True))
            return Reply(200, None)
        request = jws.verify_request(body, url, ca.store, prefix)
        if path == "/acme/new-order":
            order = ca.new_order(request)
            return Reply(201, ca.store.order_json(order, base),
                         {"Location": f"{base}/acme/order/{order.ident}"})
        match = _ROUTE.match(path)
        if match is None:
            raise problems.not_found(f"no resource at {path}")
        kind, ident, orders_suffix = match.groups()
        return self._resource(request, kind, ident, bool(orders_suffix))

    def _resource(self, request: jws.SignedRequest, kind: str, ident: str,
                  orders_list: bool) -> Reply:
        ca, base = self.server.ca, self.base
        retry = {"Retry-After": str(ca.config.retry_after_seconds)}
        if kind == "acct" and orders_list:
            account = ca.update_account(request, ident)
            with ca.store.lock:
                urls = [f"{base}/acme/order/{o.ident}" for o in ca.store.orders.values()
                        if o.account_id == account.ident]
            return Reply(200, {"orders": urls})
        if kind == "acct":
            return Reply(200, ca.update_account(request, ident).to_json(base))
        if kind in ("order", "finalize"):
            order = ca.order(request, ident) if kind == "order" else ca.finalize(request, ident)
            body = ca.store.order_json(order, base)
            headers = {"Location": f"{base}/acme/order/{order.ident}"}
            return Reply(200, body, {**headers, **retry} if body["status"] == PROCESSING
                         else headers)
        if kind == "authz":
            authz = ca.authorization(request, ident)
            return Reply(200, ca.store.authz_json(authz, base),
                         retry if ca.authz_processing(authz) else {})
        if kind == "chall":
            challenge = ca.challenge(request, ident)
            headers = {"Link": f'<{base}/acme/authz/{challenge.authz_id}>;rel="up"'}
            with ca.store.lock:
                body = challenge.to_json(base)
            return Reply(200, body, {**headers, **retry} if body["status"] == PROCESSING
                         else headers)
        chain = ca.certificate(request, ident)
        return Reply(200, chain.encode("ascii"), content_type="application/pem-certificate-chain")


class CAServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threading HTTPS server bound to one address, carrying the CA."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], ca: TestCA, context: ssl.SSLContext) -> None:
        super().__init__(address, Handler)
        self.ca = ca
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        self.netloc = f"{host}:{self.server_address[1]}"
        self.socket = context.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """TLS handshake failures and resets are logged, not printed."""
        logger.debug("connection from %s failed", client_address, exc_info=True)


class RunningServer:
    """A CA server on a background thread; ``stop()`` shuts it down."""

    def __init__(self, server: CAServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name="testca-http",
                                       daemon=True)
        self.thread.start()

    @property
    def directory_url(self) -> str:
        """The directory URL for clients."""
        return f"https://{self.server.netloc}/directory"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
