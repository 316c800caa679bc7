"""certbot-email-pkcs12 against lineages made in the test: what mail clients will import."""
import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certbot_email import pkcs12_hook

ALICE = "alice@example.test"
PASSWORD = b"correct horse"


def certificate(subject: str, issuer_key: ec.EllipticCurvePrivateKey,
                public_key: ec.EllipticCurvePublicKey, issuer: str) -> x509.Certificate:
    """A minimal certificate; the hook only carries certificates, it does not judge them."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(issuer_key, hashes.SHA256()))


def write_lineage(lineage: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate,
                                          x509.Certificate]:
    """privkey.pem, cert.pem and chain.pem as certbot lays them out; returns what it wrote."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, ca_key.public_key(), "test CA")
    leaf = certificate(ALICE, ca_key, key.public_key(), "test CA")
    lineage.mkdir(exist_ok=True)
    pem = serialization.Encoding.PEM
    (lineage / "privkey.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (lineage / "cert.pem").write_bytes(leaf.public_bytes(pem))
    (lineage / "chain.pem").write_bytes(ca.public_bytes(pem))
    return key, leaf, ca


@pytest.fixture(name="lineage")
def fixture_lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lineage named after alice, announced to the hook as certbot does."""
    lineage = tmp_path / "live" / ALICE
    lineage.parent.mkdir()
    monkeypatch.setenv(pkcs12_hook.LINEAGE_VARIABLE, str(lineage))
    return lineage


def password_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "p12-password"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_bundle_without_password_holds_key_certificate_chain_and_name(lineage: Path) -> None:
    key, leaf, ca = write_lineage(lineage)
    assert pkcs12_hook.main([]) == 0
    bundle_path = lineage / pkcs12_hook.BUNDLE_NAME
    assert bundle_path.stat().st_mode & 0o777 == 0o600
    bundle = pkcs12.load_pkcs12(bundle_path.read_bytes(), None)
    assert bundle.key is not None and bundle.key.private_numbers() == key.private_numbers()
    assert bundle.cert is not None and bundle.cert.certificate == leaf
    assert bundle.cert.friendly_name == ALICE.encode()
    assert [extra.certificate for extra in bundle.additional_certs] == [ca]


@pytest.mark.parametrize(("profile", "openssl_names"), [
    ("modern", "PBES2"), ("legacy", "pbeWithSHA1And3-KeyTripleDES-CBC")])
def test_password_protects_the_bundle_with_the_named_profile(
        lineage: Path, tmp_path: Path, profile: str, openssl_names: str) -> None:
    write_lineage(lineage)
    secret = password_file(tmp_path, PASSWORD + b"\n")
    assert pkcs12_hook.main(["--password-file", str(secret), "--profile", profile]) == 0
    raw = (lineage / pkcs12_hook.BUNDLE_NAME).read_bytes()
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(raw, b"wrong")
    assert pkcs12.load_pkcs12(raw, PASSWORD).key is not None
    info = subprocess.run(
        ["openssl", "pkcs12", "-info", "-noout", "-legacy", "-passin", f"pass:{PASSWORD.decode()}"],
        input=raw, capture_output=True, check=True)
    assert openssl_names in info.stderr.decode()


def test_renewal_replaces_the_bundle(lineage: Path) -> None:
    write_lineage(lineage)
    assert pkcs12_hook.main([]) == 0
    _, renewed, _ = write_lineage(lineage)
    assert pkcs12_hook.main([]) == 0
    bundle = pkcs12.load_pkcs12((lineage / pkcs12_hook.BUNDLE_NAME).read_bytes(), None)
    assert bundle.cert is not None and bundle.cert.certificate == renewed
    assert sorted(path.name for path in lineage.iterdir()) == [
        pkcs12_hook.BUNDLE_NAME, "cert.pem", "chain.pem", "privkey.pem"]


@pytest.mark.parametrize(("content", "mode", "message"), [
    (PASSWORD, 0o640, "readable by group or others"),
    (b"", 0o600, "is empty"),
])
def test_bad_password_file_is_refused_and_writes_nothing(
        lineage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        content: bytes, mode: int, message: str) -> None:
    write_lineage(lineage)
    assert pkcs12_hook.main(["--password-file", str(password_file(tmp_path, content, mode))]) == 1
    assert message in capsys.readouterr().err
    assert not (lineage / pkcs12_hook.BUNDLE_NAME).exists()


def test_missing_password_file_is_named(lineage: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    write_lineage(lineage)
    assert pkcs12_hook.main(["--password-file", str(tmp_path / "absent")]) == 1
    assert str(tmp_path / "absent") in capsys.readouterr().err


def test_incomplete_lineage_is_an_error(lineage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_lineage(lineage)
    (lineage / "chain.pem").unlink()
    assert pkcs12_hook.main([]) == 1
    assert "chain.pem" in capsys.readouterr().err
    assert not (lineage / pkcs12_hook.BUNDLE_NAME).exists()


def test_key_that_pkcs12_cannot_carry_is_named(lineage: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    write_lineage(lineage)
    (lineage / "privkey.pem").write_bytes(x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert pkcs12_hook.main([]) == 1
    assert "X25519PrivateKey cannot go into PKCS#12" in capsys.readouterr().err


def test_without_certbot_environment_it_says_how_to_run(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(pkcs12_hook.LINEAGE_VARIABLE, raising=False)
    assert pkcs12_hook.main([]) == 2
    assert "--deploy-hook" in capsys.readouterr().err


def renewal_conf(tmp_path: Path, renew_hook: str) -> str:
    """A renewal configuration naming live/alice's cert.pem and the given deploy hook."""
    live = tmp_path / "live" / ALICE
    live.mkdir(parents=True)
    path = tmp_path / f"{ALICE}.conf"
    path.write_text(f"cert = {live / 'cert.pem'}\n[renewalparams]\nrenew_hook = {renew_hook}\n")
    return str(path)


@pytest.mark.parametrize("hook", ["certbot-email-pkcs12 --profile legacy",
                                  "/venv/bin/python -m certbot_email.pkcs12_hook"])
def test_remove_bundle_deletes_what_the_hook_made(tmp_path: Path, hook: str) -> None:
    conf = renewal_conf(tmp_path, hook)
    bundle = tmp_path / "live" / ALICE / pkcs12_hook.BUNDLE_NAME
    bundle.write_bytes(b"bundle")
    assert pkcs12_hook.remove_bundle(conf) == bundle
    assert not bundle.exists()


def test_remove_bundle_leaves_other_hooks_files_and_symlinks(tmp_path: Path) -> None:
    conf = renewal_conf(tmp_path, "systemctl reload postfix")
    bundle = tmp_path / "live" / ALICE / pkcs12_hook.BUNDLE_NAME
    bundle.write_bytes(b"someone else's")
    assert pkcs12_hook.remove_bundle(conf) is None and bundle.exists()
    bundle.unlink()
    target = tmp_path / "elsewhere.p12"
    target.write_bytes(b"not ours to delete")
    bundle.symlink_to(target)
    (tmp_path / "ours.conf").write_text(Path(conf).read_text().replace(
        "systemctl reload postfix", "certbot-email-pkcs12"))
    assert pkcs12_hook.remove_bundle(str(tmp_path / "ours.conf")) is None
    assert bundle.is_symlink() and target.exists()
