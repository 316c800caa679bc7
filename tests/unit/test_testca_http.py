"""The test CA over HTTPS on loopback, driven by the ``acme`` library and by hand-made requests:
RFC 8555 flow, problem documents for bad input, and a CA that keeps serving afterwards.

No lab servers: DNS answers come from a dict through the CA's Network seam, and challenge
mails are dropped.
"""
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional

import josepy as jose
import pytest
import requests
from acme import errors as acme_errors
from acme import jws as acme_jws
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certbot_email.testing import rawclient, runtime
from certbot_email.testing.config import CAConfig

HOST = "mail.example.test"


@pytest.fixture(name="testca")
def fixture_testca(tmp_path) -> Iterator[runtime.LaunchedCA]:
    launched = runtime.launch(CAConfig(state_dir=tmp_path, port=0))
    records: dict[str, list[str]] = {}
    launched.ca.network.txt = lambda name: records.get(name, [])  # type: ignore[method-assign]
    launched.ca.network.address = lambda host: "127.0.0.1"  # type: ignore[method-assign]
    launched.ca.send_challenge_mail = lambda recipient, token_part1: None
    launched.records = records  # type: ignore[attr-defined]
    yield launched
    launched.stop()


def base(testca: runtime.LaunchedCA) -> str:
    return testca.directory_url.rsplit("/", 1)[0]


def nonce(testca: runtime.LaunchedCA) -> str:
    response = requests.head(f"{base(testca)}/acme/new-nonce", verify=testca.root_path,
                             timeout=10)
    return response.headers["Replay-Nonce"]


def post(testca: runtime.LaunchedCA, path: str, payload: bytes, key: jose.JWK,
         kid: Optional[str] = None, nonce_text: Optional[str] = None,
         body: Optional[bytes] = None) -> requests.Response:
    url = base(testca) + path
    if body is None:
        signed = acme_jws.JWS.sign(payload, key=key, alg=jose.RS256,
                                   nonce=jose.b64decode(nonce_text or nonce(testca)), url=url,
                                   kid=kid)
        body = signed.json_dumps().encode()
    return requests.post(url, data=body, headers={"Content-Type": "application/jose+json"},
                         verify=testca.root_path, timeout=10)


def problem_type(response: requests.Response) -> str:
    assert response.headers["Content-Type"] == "application/problem+json"
    return response.json()["type"].rsplit(":", 1)[1]


def still_serving(testca: runtime.LaunchedCA) -> bool:
    return requests.get(testca.directory_url, verify=testca.root_path, timeout=10).ok


def test_directory_names_the_extension_challenges(testca):
    directory = requests.get(testca.directory_url, verify=testca.root_path, timeout=10).json()
    assert "email-reply-00" in directory["meta"]["extensionChallenges"]
    assert "dns-email-00" in directory["meta"]["extensionChallenges"]
    assert "tests" in directory["meta"]["testCA"]


def test_tls_certificate_via_dns_email_with_srv_name(testca):
    client = rawclient.RawClient(testca.directory_url, testca.root_path)
    client.register()
    order = client.new_order("dns", (HOST,))
    challb = client.challenge(order.authorizations[0], "dns-email-00")
    testca.records[f"_993._imaps._acme-challenge.{HOST}"] = [
        challb.chall.validation(client.key)]
    client.answer(challb, challb.chall.scoped_response(client.key, "imaps"))
    assert client.wait_authz(order.authorizations[0]).body.status == messages.STATUS_VALID
    csr = rawclient.make_csr(rawclient.new_key(), (HOST,), srv=(("imaps", HOST),))
    done = client.finalize(order, csr)
    assert "BEGIN CERTIFICATE" in done.fullchain_pem
    assert any("dns-email-00 for mail.example.test VALID" in d for d in testca.ca.decisions)


def test_wrong_txt_invalidates_and_order_cannot_finalize(testca):
    client = rawclient.RawClient(testca.directory_url, testca.root_path)
    client.register()
    order = client.new_order("dns", (HOST,))
    challb = client.challenge(order.authorizations[0], "dns-01")
    testca.records[f"_acme-challenge.{HOST}"] = ["wrong"]
    client.answer(challb, challb.chall.response(client.key))
    authz = client.wait_authz(order.authorizations[0])
    assert authz.body.status == messages.STATUS_INVALID
    with pytest.raises(acme_errors.Error) as caught:
        client.acme.begin_finalization(order.update(
            csr_pem=rawclient.make_csr(rawclient.new_key(), (HOST,))))
    assert caught.value.typ.endswith("orderNotReady")


def authorized_dns01_order(testca):
    """An order for HOST whose authorization dns-01 has made valid, ready for finalize."""
    client = rawclient.RawClient(testca.directory_url, testca.root_path)
    client.register()
    order = client.new_order("dns", (HOST,))
    challb = client.challenge(order.authorizations[0], "dns-01")
    testca.records[f"_acme-challenge.{HOST}"] = [challb.chall.validation(client.key)]
    client.answer(challb, challb.chall.response(client.key))
    assert client.wait_authz(order.authorizations[0]).body.status == messages.STATUS_VALID
    return client, order


def test_csr_that_does_not_match_the_order_is_bad_csr(testca):
    client, order = authorized_dns01_order(testca)
    for names, srv in [((HOST, "www.example.test"), ()), ((HOST,), (("imaps", HOST),))]:
        with pytest.raises(acme_errors.Error) as caught:
            client.acme.begin_finalization(order.update(
                csr_pem=rawclient.make_csr(rawclient.new_key(), names, srv=srv)))
        assert caught.value.typ.endswith("badCSR")
    assert client.finalize(order, rawclient.make_csr(rawclient.new_key(), (HOST,))).fullchain_pem


def test_bad_requests_get_problem_documents(testca):
    key = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
    created = post(testca, "/acme/new-account", b'{"termsOfServiceAgreed": true}', key)
    assert created.status_code == 201
    kid = created.headers["Location"]
    used = nonce(testca)
    assert post(testca, "/acme/new-order", b'{"identifiers": []}', key, kid, used) \
        .status_code == 400
    replayed = post(testca, "/acme/new-order", b"{}", key, kid, used)
    assert problem_type(replayed) == "badNonce"
    assert replayed.headers["Replay-Nonce"]
    assert problem_type(post(testca, "/acme/new-order", b"{}", key,
                             kid + "nope")) == "accountDoesNotExist"
    other = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
    assert problem_type(post(testca, "/acme/new-order", b"{}", other, kid)) == "malformed"
    assert problem_type(post(testca, "/acme/new-order", b"", key, body=b"{not json")) \
        == "malformed"
    bad_ident = json.dumps({"identifiers": [{"type": "ip", "value": "127.0.0.1"}]}).encode()
    assert problem_type(post(testca, "/acme/new-order", bad_ident, key, kid)) \
        == "unsupportedIdentifier"
    mixed = json.dumps({"identifiers": [{"type": "dns", "value": HOST},
                                        {"type": "email", "value": "a@example.test"}]}).encode()
    assert problem_type(post(testca, "/acme/new-order", mixed, key, kid)) == "rejectedIdentifier"
    assert problem_type(post(testca, "/acme/order/unknown", b"", key, kid)) == "malformed"
    plain = requests.post(f"{base(testca)}/acme/new-order", data=b"{}", timeout=10,
                          verify=testca.root_path)
    assert plain.status_code == 415
    assert still_serving(testca)


def test_post_as_get_is_required_and_retry_after_is_sent_while_processing(testca):
    client = rawclient.RawClient(testca.directory_url, testca.root_path)
    client.register()
    order = client.new_order("email", ("alice@example.test",))
    authz_url = order.authorizations[0].uri
    with pytest.raises(acme_errors.Error) as caught:
        client.acme._post(authz_url, messages.NewOrder())  # noqa: SLF001
    assert caught.value.typ.endswith("malformed")
    challb = client.challenge(order.authorizations[0], "email-reply-00")
    assert challb.chall.sender == testca.ca.config.mail.sender
    response = client.acme._post(challb.uri, challb.chall.response(client.key))  # noqa: SLF001
    assert response.json()["status"] == "processing"
    assert response.headers["Retry-After"] == "1"


class TokenServer(http.server.ThreadingHTTPServer):
    """Serves one http-01 key authorization on loopback."""

    def __init__(self, path: str, body: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                found = self.path == path
                self.send_response(200 if found else 404)
                self.end_headers()
                self.wfile.write(body.encode() if found else b"")

            def log_message(self, *unused: object) -> None:
                """Quiet."""

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_http01(testca):
    client = rawclient.RawClient(testca.directory_url, testca.root_path)
    client.register()
    order = client.new_order("dns", (HOST,))
    challb = client.challenge(order.authorizations[0], "http-01")
    response, validation = challb.response_and_validation(client.key)
    server = TokenServer(challb.chall.path, validation)
    try:
        testca.ca.network.http01_port = server.server_address[1]
        client.answer(challb, response)
        assert client.wait_authz(order.authorizations[0]).body.status == messages.STATUS_VALID
    finally:
        server.shutdown()
        server.server_close()


def test_console_script_serves_and_stops(tmp_path):
    script = Path(sys.executable).with_name("certbot-email-testca")
    process = subprocess.Popen([str(script), "--port", "0", "--state-dir", str(tmp_path)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        directory_url = process.stdout.readline().split(": ", 1)[1].strip()
        root = process.stdout.readline().split(": ", 1)[1].strip()
        assert "never for production" in banner
        assert requests.get(directory_url, verify=root, timeout=10).json()["newOrder"]
        assert (tmp_path / "root.pem").exists() and (tmp_path / "dkim-record.txt").exists()
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def test_srv_name_after_dns01_needs_the_policy_switch(testca):
    client, order = authorized_dns01_order(testca)
    csr = rawclient.make_csr(rawclient.new_key(), (HOST,), srv=(("submission", HOST),))
    with pytest.raises(acme_errors.Error):
        client.acme.begin_finalization(order.update(csr_pem=csr))
    testca.ca.config.srv_for_any_method = True
    assert client.finalize(order, csr).fullchain_pem


FUZZ_KEY = rsa.generate_private_key(65537, 2048)
ENDPOINTS = ["/acme/new-account", "/acme/new-order", "/acme/finalize/x", "/acme/chall/x",
             "/acme/authz/x", "/acme/cert/x", "/acme/acct/x", "/nowhere"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ENDPOINTS), body=st.one_of(
    st.binary(max_size=200),
    st.fixed_dictionaries({"protected": st.text(max_size=80), "payload": st.text(max_size=80),
                           "signature": st.text(max_size=80)}).map(
        lambda value: json.dumps(value).encode())))
def test_fuzzed_posts_get_problem_documents(testca, path, body):
    response = post(testca, path, b"", jose.JWKRSA(key=FUZZ_KEY), body=body)
    assert 400 <= response.status_code < 500
    assert response.json()["type"].startswith("urn:ietf:params:acme:error:")


def test_signed_fuzzed_finalize_payloads_are_bad_csr_or_malformed(testca):
    client, order = authorized_dns01_order(testca)
    kid = client.net.account.uri

    @settings(max_examples=40, deadline=None)
    @given(payload=st.one_of(st.binary(max_size=120).map(
        lambda data: json.dumps({"csr": jose.b64encode(data).decode()}).encode()),
        st.text(max_size=40).map(lambda text: json.dumps({"csr": text}).encode()),
        st.binary(max_size=40)))
    def finalize_with(payload: bytes) -> None:
        response = post(testca, order.body.finalize.replace(base(testca), ""), payload,
                        client.key, kid)
        assert response.status_code == 400
        assert problem_type(response) in {"badCSR", "malformed", "badPublicKey"}

    finalize_with()
    assert still_serving(testca)


# -- revokeCert (RFC 8555 §7.6) ----------------------------------------------------------

def revocable(cert: x509.Certificate) -> object:
    """The certificate as this acme's revoke() takes it: acme < 4 (josepy 1) wants its
    pyOpenSSL wrapper."""
    if not hasattr(jose, "ComparableX509"):
        return cert
    from OpenSSL import crypto
    return jose.ComparableX509(crypto.X509.from_cryptography(cert))


def issued_certificate(testca):
    """A fresh account's TLS certificate for HOST, with the key it was issued for."""
    client, order = authorized_dns01_order(testca)
    key = rawclient.new_key("rsa")  # RS256: what RawClient's ClientNetwork signs with
    leaf_pem = client.finalize(order, rawclient.make_csr(key, (HOST,))).fullchain_pem.split(
        "-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return client, x509.load_pem_x509_certificate(leaf_pem.encode()), key


def client_with_key(testca, key, register=True):
    """A RawClient whose account key is ``key``: registered, or just signing with jwk."""
    client = rawclient.RawClient(testca.directory_url, testca.root_path,
                                 account_key=jose.JWKRSA(key=key))
    if register:
        client.register()
    return client


def revocations(testca):
    return [decision for decision in testca.ca.decisions if "REVOKED" in decision]


def test_the_ordering_account_revokes_and_a_second_revocation_is_refused(testca):
    client, cert, _key = issued_certificate(testca)
    client.acme.revoke(revocable(cert), 4)
    assert revocations(testca) == [
        f"certificate {cert.serial_number:x} REVOKED (reason 4) by account "
        f"{client.acme.net.account.uri.rsplit('/', 1)[1]}, which ordered it"]
    with pytest.raises(messages.Error) as raised:
        client.acme.revoke(revocable(cert), 4)
    assert raised.value.code == "alreadyRevoked"


def test_the_certificate_key_revokes_without_any_account(testca):
    _client, cert, key = issued_certificate(testca)
    client_with_key(testca, key, register=False).acme.revoke(revocable(cert), 1)
    assert revocations(testca) == [
        f"certificate {cert.serial_number:x} REVOKED (reason 1) by the certificate's key"]


def test_an_account_authorized_for_every_identifier_may_revoke(testca):
    _client, cert, _key = issued_certificate(testca)
    other, _order = authorized_dns01_order(testca)  # another account, also valid for HOST
    other.acme.revoke(revocable(cert), 0)
    assert "authorized for every identifier" in revocations(testca)[0]


def test_strangers_and_bad_reasons_are_refused(testca):
    _client, cert, _key = issued_certificate(testca)
    stranger = rawclient.RawClient(testca.directory_url, testca.root_path)
    stranger.register()
    with pytest.raises(messages.Error) as raised:
        stranger.acme.revoke(revocable(cert), 0)
    assert raised.value.code == "unauthorized"
    with pytest.raises(messages.Error) as raised:
        client_with_key(testca, rawclient.new_key("rsa"), register=False).acme.revoke(
            revocable(cert), 0)
    assert raised.value.code == "unauthorized"
    with pytest.raises(messages.Error) as raised:
        stranger.acme.revoke(revocable(cert), 7)
    assert raised.value.code == "badRevocationReason"
    assert revocations(testca) == []
    assert still_serving(testca)
