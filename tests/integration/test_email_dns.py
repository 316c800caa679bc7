"""email-dns with the real certbot CLI, the lab's BIND (TSIG updates) and Pebble (dns-01).

Every test ends by asking BIND for the TXT records the run could have touched: none may be left.
"""
import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rdatatype
import dns.tsig
import pytest
from cryptography import x509

from certbot_email.protocol import csr as csr_names
from certbot_email.testing import runtime
from certbot_email.testing.config import CAConfig
from certbot_email.testing.runtime import LaunchedCA
from certbot_email_dns import propagation, rfc2136
from tests.lab.bind import Bind
from tests.lab.lab import Lab
from tests.lab.ports import HOST, PortReservation
from tests.lab.process import wait_gone

CERTBOT = [str(Path(sys.executable).with_name("certbot"))]
ZONE = "example.test"
#: _acme-challenge.alias is delegated (CNAME) to a name below "delegated".
DELEGATION_RECORDS = ["_acme-challenge.alias IN CNAME _acme-challenge.target.delegated"]
DELEGATION_TARGET = f"_acme-challenge.target.delegated.{ZONE}"

#: certbot whose TSIG signatures carry a time one hour behind (BIND's fudge is 300 s).
CERTBOT_WITH_SKEWED_TSIG_CLOCK = [sys.executable, "-c", textwrap.dedent("""
    import sys, time, types
    import dns.message
    dns.message.time = types.SimpleNamespace(time=lambda: time.time() - 3600)
    from certbot.main import main
    sys.exit(main(sys.argv[1:]))
""")]


def _require(missing: list[str]) -> None:
    if missing:
        message = f"missing: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(name="dns_lab", scope="module")
def fixture_dns_lab() -> Iterator[Lab]:
    _require(Lab.missing_requirements(dns=True, mail=False, dkim=False, pebble=True))
    lab = Lab().start(mail=False, dkim=False, pebble=True, zone_records=DELEGATION_RECORDS)
    try:
        yield lab
    finally:
        lab.stop()


def write_credentials(path: Path, bind: Bind, **overrides: str) -> Path:
    """A 0600 credentials INI for the lab's BIND; ``overrides`` replace or add keys."""
    settings = {"server": HOST, "port": str(bind.port), "name": f"{bind.key_name}.",
                "secret": bind.key_secret, "algorithm": bind.key_algorithm}
    settings.update(overrides)
    path.write_text("".join(f"email_dns_{key} = {value}\n" for key, value in settings.items()))
    path.chmod(0o600)
    return path


def run_certbot(lab: Lab, root: Path, credentials: Path, *args: str,
                command: list[str] = CERTBOT, ca: Optional[LaunchedCA] = None
                ) -> subprocess.CompletedProcess:
    """certbot certonly -a email-dns against the lab's Pebble (or ``ca``), state below root."""
    env = lab.pebble.certbot_environment()
    ca_options = lab.pebble.certbot_options(root)
    if ca is not None:
        env["REQUESTS_CA_BUNDLE"] = ca.root_path
        ca_options[ca_options.index("--server") + 1] = ca.directory_url
    return subprocess.run(
        [*command, "certonly", "-a", "email-dns", "--email-dns-credentials", str(credentials),
         "--email-dns-nameserver-port", str(lab.dns.port), *args, *ca_options, "-vv"],
        env=env, capture_output=True, text=True, timeout=180, check=False)


def certificate_names(root: Path, lineage: str) -> list[str]:
    pem = (root / "config" / "live" / lineage / "cert.pem").read_bytes()
    san = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def srv_names(root: Path, lineage: str) -> list[str]:
    pem = (root / "config" / "live" / lineage / "cert.pem").read_bytes()
    san = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return sorted(csr_names.srv_names(san))


def assert_no_txt(bind: Bind, *names: str) -> None:
    leftovers = {name: bind.txt(name) for name in names if bind.txt(name)}
    assert leftovers == {}


def test_dns01_certificate_with_wildcard(dns_lab, tmp_path):
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns)
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"dns01.{ZONE}",
                         "-d", f"*.dns01.{ZONE}")
    assert result.returncode == 0, result.stderr
    assert certificate_names(tmp_path, f"dns01.{ZONE}") == [f"*.dns01.{ZONE}", f"dns01.{ZONE}"]
    # Two values at one name (name and wildcard), checked on ns.example.test's A and AAAA.
    assert f"Waiting for 2 nameserver(s) of {ZONE}. to serve 2 record(s)" in result.stdout + \
        result.stderr
    assert_no_txt(dns_lab.dns, f"_acme-challenge.dns01.{ZONE}")
    renewal = (tmp_path / "config" / "renewal" / f"dns01.{ZONE}.conf").read_text()
    assert "authenticator = email-dns" in renewal and "email_dns_credentials" in renewal
    assert bind_secret_absent(renewal, dns_lab.dns)
    renewed = subprocess.run(
        [*CERTBOT, "renew", "--force-renewal", "--no-random-sleep-on-renew",
         *dns_lab.pebble.certbot_options(tmp_path)],
        env=dns_lab.pebble.certbot_environment(), capture_output=True, text=True, timeout=180,
        check=False)
    assert renewed.returncode == 0, renewed.stderr
    assert len(list((tmp_path / "config" / "archive" / f"dns01.{ZONE}").glob("cert*.pem"))) == 2
    assert_no_txt(dns_lab.dns, f"_acme-challenge.dns01.{ZONE}")


def bind_secret_absent(text: str, bind: Bind) -> bool:
    return bind.key_secret not in text


def test_server_given_as_hostname_with_port(dns_lab, tmp_path):
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns,
                                    server=f"localhost:{dns_lab.dns.port}", port="")
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"byname.{ZONE}")
    assert result.returncode == 0, result.stderr
    assert certificate_names(tmp_path, f"byname.{ZONE}") == [f"byname.{ZONE}"]
    assert_no_txt(dns_lab.dns, f"_acme-challenge.byname.{ZONE}")


def test_cname_delegation_updates_the_target(dns_lab, tmp_path):
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns)
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"alias.{ZONE}")
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "logs" / "letsencrypt.log").read_text()
    assert f"_acme-challenge.alias.{ZONE}. is a CNAME for {DELEGATION_TARGET}." in log
    assert f"at {DELEGATION_TARGET}. (zone {ZONE}.)" in log
    assert certificate_names(tmp_path, f"alias.{ZONE}") == [f"alias.{ZONE}"]
    assert_no_txt(dns_lab.dns, DELEGATION_TARGET)


def test_failed_check_still_removes_every_record(dns_lab, own_ports, tmp_path):
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns)
    silent = f"{HOST}:{own_ports[0]}"  # reserved, nothing listens there
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"first.{ZONE}",
                         "-d", f"second.{ZONE}", "--email-dns-check-servers", silent,
                         "--email-dns-propagation-timeout", "1")
    assert result.returncode != 0
    assert (f"nameserver {silent} still lacks TXT" in " ".join(result.stderr.split()))
    log = (tmp_path / "logs" / "letsencrypt.log").read_text()
    assert log.count("Added TXT") == 2
    assert_no_txt(dns_lab.dns, f"_acme-challenge.first.{ZONE}", f"_acme-challenge.second.{ZONE}")


@pytest.mark.parametrize("overrides, host, expected", [
    ({"name": "wrong-key."}, f"badkey.{ZONE}",
     "answered BADKEY: the server rejected TSIG key 'wrong-key.': check the key name"),
    ({"secret": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, f"badsig.{ZONE}",
     "answered BADSIG: the server rejected the signature of TSIG key 'acme-key.'"),
    ({"zone": "other.test."}, f"notauth.{ZONE}",
     "answered NOTAUTH: the server is not authoritative (primary) for zone 'other.test.'"),
    ({"zone": f"{ZONE}."}, "notzone.elsewhere.test",
     f"answered NOTZONE: the name is not inside zone '{ZONE}.'"),
    ({}, "nozone.elsewhere.test",
     "is not authoritative for any zone containing _acme-challenge.nozone.elsewhere.test."),
    ({"algorithm": "hmac-sha512"}, f"badalg.{ZONE}",
     "answered BADKEY: the server rejected TSIG key 'acme-key.'"),
])
def test_refusals_name_the_cause(dns_lab, tmp_path, overrides, host, expected):
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns, **overrides)
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", host)
    assert result.returncode != 0
    assert expected in " ".join(result.stderr.split())
    if host.endswith(ZONE):
        assert_no_txt(dns_lab.dns, f"_acme-challenge.{host}")


def test_badtime_names_the_clock(dns_lab, tmp_path):
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns)
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"badtime.{ZONE}",
                         command=CERTBOT_WITH_SKEWED_TSIG_CLOCK)
    assert result.returncode != 0
    assert "answered BADTIME" in result.stderr and "synchronise the clocks" in result.stderr
    assert_no_txt(dns_lab.dns, f"_acme-challenge.badtime.{ZONE}")


# -- dns-email-00 against certbot_email.testing's CA (Pebble knows only dns-01) ---------------

@pytest.fixture(name="test_ca")
def fixture_test_ca(dns_lab, tmp_path) -> Iterator[Callable[..., LaunchedCA]]:
    launched: list[LaunchedCA] = []
    reservation = PortReservation()

    def launch(**options: object) -> LaunchedCA:
        port = reservation.allocate().acme
        settings: dict = {"dns_server": HOST, "dns_port": dns_lab.dns.port, **options}
        ca = runtime.launch(CAConfig(state_dir=tmp_path / f"ca{port}", port=port, **settings))
        launched.append(ca)
        return ca
    yield launch
    for ca in launched:
        ca.stop()
    reservation.release()


def test_dns_email_00_scoped_record_and_srv_name(dns_lab, test_ca, tmp_path):
    ca = test_ca()
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns)
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"imap.{ZONE}",
                         "--email-dns-service", "imaps", "--email-dns-srv-names", ca=ca)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "logs" / "letsencrypt.log").read_text()
    assert f"at _993._imaps._acme-challenge.imap.{ZONE}." in log
    assert '"service": "imaps"' in log and '"port": 993' in log
    assert certificate_names(tmp_path, f"imap.{ZONE}") == [f"imap.{ZONE}"]
    assert srv_names(tmp_path, f"imap.{ZONE}") == [f"_imaps.imap.{ZONE}"]
    assert_no_txt(dns_lab.dns, f"_993._imaps._acme-challenge.imap.{ZONE}")


def test_dns_email_00_arrays_prove_two_services(dns_lab, test_ca, tmp_path):
    ca = test_ca(dns_email_arrays=True)
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns)
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"mail.{ZONE}",
                         "--email-dns-service", "imap,imaps", "--email-dns-arrays",
                         "--email-dns-srv-names", ca=ca)
    assert result.returncode == 0, result.stderr
    assert srv_names(tmp_path, f"mail.{ZONE}") == [f"_imap.mail.{ZONE}", f"_imaps.mail.{ZONE}"]
    assert_no_txt(dns_lab.dns, f"_143._imap._acme-challenge.mail.{ZONE}",
                  f"_993._imaps._acme-challenge.mail.{ZONE}")


def test_dns_email_00_arrays_refused_by_a_strict_ca(dns_lab, test_ca, tmp_path):
    ca = test_ca()
    credentials = write_credentials(tmp_path / "dns.ini", dns_lab.dns)
    result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"pop.{ZONE}",
                         "--email-dns-service", "pop3,pop3s", "--email-dns-arrays", ca=ca)
    assert result.returncode != 0
    assert "arrays variant is not enabled" in result.stderr + result.stdout
    assert_no_txt(dns_lab.dns, f"_110._pop3._acme-challenge.pop.{ZONE}",
                  f"_995._pop3s._acme-challenge.pop.{ZONE}")


# -- servers of our own: a restrictive update-policy, and a primary with a lagging secondary --

class OwnBind(Bind):
    """A BIND besides the lab's (for example.test unless told), named.conf edited by ``edit``."""

    def __init__(self, workdir: Path, port: int, edit: dict[str, str], zone: str = ZONE,
                 records: tuple[str, ...] = ()) -> None:
        super().__init__(workdir, port, zone, list(records))
        self.edit = edit

    def configure(self) -> None:
        super().configure()
        conf = self.dir / "named.conf"
        text = conf.read_text()
        for old, new in self.edit.items():
            assert old in text, f"lab named.conf no longer has {old!r}"
            text = text.replace(old, new)
        conf.write_text(text)


class SecondaryBind(Bind):
    """A secondary for example.test, transferring from ``primary`` with its TSIG key."""

    name = "secondary"

    def __init__(self, workdir: Path, port: int, primary: Bind) -> None:
        super().__init__(workdir, port, ZONE, [])
        self.primary = primary

    def configure(self) -> None:
        self.key_file.write_text(self.primary.key_file.read_text())
        self.key_secret = self.primary.key_secret
        (self.dir / "named.conf").write_text(textwrap.dedent(f"""\
            include "{self.key_file}";
            options {{
                directory "{self.dir}";
                pid-file "{self.dir}/named.pid";
                session-keyfile "{self.dir}/session.key";
                managed-keys-directory "{self.dir}";
                listen-on port {self.port} {{ 127.0.0.1; }};
                listen-on-v6 {{ none; }};
                recursion no;
                notify no;
                dnssec-validation no;
                querylog yes;
            }};
            zone "{ZONE}" {{
                type secondary;
                file "{self.dir}/{ZONE}.zone";
                primaries {{ 127.0.0.1 port {self.primary.port} key {self.key_name}; }};
                allow-notify {{ 127.0.0.1; }};
            }};
            """))


@contextlib.contextmanager
def running(*daemons: Bind) -> Iterator[None]:
    """Start the daemons in order, stop them all at the end."""
    started = []
    try:
        for daemon in daemons:
            daemon.configure()
            daemon.launch()
            started.append(daemon)
            daemon.wait_ready(time.monotonic() + 15)
        yield
    finally:
        for daemon in reversed(started):
            wait_gone(daemon.request_stop(), 10)
            daemon.reap()


@pytest.fixture(name="own_ports")
def fixture_own_ports() -> Iterator[list[int]]:
    _require(Lab.missing_requirements(dns=True, mail=False, dkim=False, pebble=False))
    reservation = PortReservation()
    ports = reservation.allocate()
    yield [ports.dns, ports.smtp]
    reservation.release()


def test_refused_by_update_policy(dns_lab, own_ports, tmp_path):
    narrow = OwnBind(tmp_path, own_ports[0], {
        "grant acme-key zonesub TXT;": f"grant acme-key name _acme-challenge.only.{ZONE}. TXT;"})
    with running(narrow):
        credentials = write_credentials(tmp_path / "dns.ini", narrow)
        result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"refused.{ZONE}")
        assert result.returncode != 0
        assert ("answered REFUSED: the server's update-policy/allow-update does not let key "
                "'acme-key.' change TXT records there") in " ".join(result.stderr.split())
        assert_no_txt(narrow, f"_acme-challenge.refused.{ZONE}")


def test_cname_at_another_provider_found_through_the_resolver(dns_lab, own_ports, tmp_path):
    customer = OwnBind(tmp_path, own_ports[0], {}, zone="customer.test", records=(
        f"_acme-challenge.www IN CNAME {DELEGATION_TARGET}.",))
    with running(customer):
        bind = dns_lab.dns
        key = rfc2136.TSIGKey(bind.key_name, bind.key_secret, dns.tsig.HMAC_SHA256)
        without = rfc2136.RFC2136Client(rfc2136.Endpoint(HOST, bind.port), key)
        assert without.follow_cnames("_acme-challenge.www.customer.test") == \
            "_acme-challenge.www.customer.test."
        client = rfc2136.RFC2136Client(rfc2136.Endpoint(HOST, bind.port), key,
                                       cname_resolver=rfc2136.Endpoint(HOST, customer.port))
        target = client.follow_cnames("_acme-challenge.www.customer.test")
        assert target == f"{DELEGATION_TARGET}."
        zone = client.find_zone(target)
        client.add_txt(zone, target, "via-resolver", 60)
        assert bind.txt(DELEGATION_TARGET) == ["via-resolver"]
        client.delete_txt(zone, target, "via-resolver")
        assert_no_txt(bind, DELEGATION_TARGET)


def test_check_waits_for_a_lagging_secondary(own_ports, tmp_path):
    primary = OwnBind(tmp_path, own_ports[0],
                      {"allow-transfer { none; };": "allow-transfer { key acme-key; };"})
    secondary = SecondaryBind(tmp_path, own_ports[1], primary)
    polls: list[float] = []

    def notify_secondary_then_sleep(seconds: float) -> None:
        """The primary sends no NOTIFY; the test sends one at the first wait, as a late one."""
        if not polls:
            send_notify(secondary)
        polls.append(seconds)
        time.sleep(seconds)

    with running(primary, secondary):
        client = rfc2136.RFC2136Client(
            rfc2136.Endpoint(HOST, primary.port),
            rfc2136.TSIGKey(primary.key_name, primary.key_secret, dns.tsig.HMAC_SHA256))
        servers = [rfc2136.Endpoint(HOST, primary.port, "primary"),
                   rfc2136.Endpoint(HOST, secondary.port, "secondary")]
        name = f"_acme-challenge.lag.{ZONE}."
        zone = dns.name.from_text(ZONE)
        client.add_txt(zone, name, "lagging-value", 60)
        try:
            assert propagation.served_txt(servers[1], name) == []  # not transferred
            propagation.wait_until_served(servers, [(name, "lagging-value")], timeout=30,
                                          sleep=notify_secondary_then_sleep)
            assert polls  # it waited for the secondary
            assert propagation.served_txt(servers[1], name) == ["lagging-value"]
        finally:
            client.delete_txt(zone, name, "lagging-value")
        assert propagation.served_txt(servers[0], name) == []


def send_notify(secondary: Bind) -> None:
    """What a primary sends after a change: the secondary then transfers the zone."""
    notify = dns.message.make_query(ZONE, dns.rdatatype.SOA)
    notify.flags = dns.flags.AA
    notify.set_opcode(dns.opcode.NOTIFY)
    dns.query.udp(notify, HOST, port=secondary.port, timeout=5)


def notify_once_queried(secondary: Bind, name: str, stop: threading.Event) -> None:
    """Send NOTIFY only after the secondary was asked for ``name`` (and lacked it)."""
    while not stop.is_set():
        if f"query: {name} IN TXT" in secondary.log_path.read_text(errors="replace"):
            send_notify(secondary)
            return
        stop.wait(0.02)


def test_certbot_waits_for_a_lagging_secondary(dns_lab, test_ca, own_ports, tmp_path):
    """Primary and secondary of our own (the test CA asks the primary). The primary sends no
    NOTIFY; the test sends one once the plugin has asked the secondary, so it must wait."""
    primary = OwnBind(tmp_path, own_ports[0],
                      {"allow-transfer { none; };": "allow-transfer { key acme-key; };"})
    secondary = SecondaryBind(tmp_path, own_ports[1], primary)
    with running(primary, secondary):
        ca = test_ca(dns_server=HOST, dns_port=primary.port)
        credentials = write_credentials(tmp_path / "dns.ini", primary)
        stop = threading.Event()
        notifier = threading.Thread(target=notify_once_queried, args=(
            secondary, f"_acme-challenge.lag.{ZONE}", stop))
        notifier.start()
        try:
            result = run_certbot(dns_lab, tmp_path, credentials, "-d", f"lag.{ZONE}",
                                 "--email-dns-check-servers",
                                 f"{HOST}:{primary.port},{HOST}:{secondary.port}", ca=ca)
        finally:
            stop.set()
            notifier.join()
        assert result.returncode == 0, result.stderr
        log = (tmp_path / "logs" / "letsencrypt.log").read_text()
        assert f"Not yet served by {HOST}:{secondary.port}" in log
        assert f"Not yet served by {HOST}:{primary.port}" not in log
        assert certificate_names(tmp_path, f"lag.{ZONE}") == [f"lag.{ZONE}"]
        assert_no_txt(primary, f"_acme-challenge.lag.{ZONE}")


def test_lagging_secondary_times_out_with_its_name(own_ports, tmp_path):
    primary = OwnBind(tmp_path, own_ports[0], {})
    orphan = OwnBind(Path(tempfile.mkdtemp(dir=tmp_path)), own_ports[1], {})
    with running(primary, orphan):
        client = rfc2136.RFC2136Client(
            rfc2136.Endpoint(HOST, primary.port),
            rfc2136.TSIGKey(primary.key_name, primary.key_secret, dns.tsig.HMAC_SHA256))
        name = f"_acme-challenge.never.{ZONE}."
        client.add_txt(dns.name.from_text(ZONE), name, "v", 60)
        try:
            with pytest.raises(propagation.PropagationTimeoutError,
                               match=rf"nameserver stale \(127.0.0.1:{orphan.port}\) still lacks"):
                propagation.wait_until_served(
                    [rfc2136.Endpoint(HOST, primary.port, "primary"),
                     rfc2136.Endpoint(HOST, orphan.port, "stale")], [(name, "v")], timeout=1)
        finally:
            client.delete_txt(dns.name.from_text(ZONE), name, "v")
