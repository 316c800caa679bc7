"""Certificate and key file checks the installers run before every reload."""
import datetime
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certbot_email_smtpext.checks import (
    KeyAndChain,
    check_pair,
    covers,
    default_without_gone,
    dns_names,
    gone_files,
    key_algorithm,
    leaf_certificate,
    pair_chain_files,
    server_certificate_problem,
)

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, issuer: str,
                 issuer_key: ec.EllipticCurvePrivateKey, not_after: datetime.datetime,
                 ca: bool, usages: Sequence[x509.ObjectIdentifier] = ()) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - 30 * DAY).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        san = x509.RFC822Name(subject) if "@" in subject else x509.DNSName(subject)
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*objects: x509.Certificate | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """PEM text of keys and certificates, in the order given."""
    return b"".join(
        item.public_bytes(serialization.Encoding.PEM) if isinstance(item, x509.Certificate)
        else item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        for item in objects)


def write_lineage(directory: Path, leaf_not_after: datetime.datetime = NOW + 60 * DAY,
                  name: str = "mail.example.test", rsa_leaf: bool = False,
                  usages: Sequence[x509.ObjectIdentifier] = ()) -> KeyAndChain:
    """privkey.pem (0600) and fullchain.pem (leaf, intermediate) like a certbot lineage.

    A name with `@` gets an rfc822Name SAN (S/MIME); usages become the leaf's EKU."""
    root_key, ca_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    if rsa_leaf:
        leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    intermediate = _certificate("Test Intermediate", ca_key, "Test Root", root_key,
                                NOW + 365 * DAY, ca=True)
    leaf = _certificate(name, leaf_key, "Test Intermediate", ca_key,
                        leaf_not_after, ca=False, usages=usages)
    directory.mkdir(parents=True, exist_ok=True)
    key_file, chain_file = directory / "privkey.pem", directory / "fullchain.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(pem(leaf_key))
    chain_file.write_bytes(pem(leaf, intermediate))
    return KeyAndChain(str(key_file), str(chain_file))


def test_a_certbot_like_lineage_passes(tmp_path):
    pair = write_lineage(tmp_path)
    assert check_pair(pair, NOW) == []
    assert leaf_certificate(pair).subject == _name("mail.example.test")


def test_missing_key_file_is_named(tmp_path):
    pair = write_lineage(tmp_path)
    Path(pair.key_file).unlink()
    assert check_pair(pair, NOW) == [
        f"{pair.key_file} does not exist or is not a regular file"]


def test_key_readable_by_everyone_is_refused(tmp_path):
    pair = write_lineage(tmp_path)
    Path(pair.key_file).chmod(0o644)
    assert check_pair(pair, NOW) == [
        f"the private key {pair.key_file} is readable by every user (mode 0644);"
        " run chmod o-r on it"]


def test_group_readable_key_is_accepted(tmp_path):
    pair = write_lineage(tmp_path)
    Path(pair.key_file).chmod(0o640)
    assert check_pair(pair, NOW) == []


def test_key_of_another_lineage_is_a_mismatch(tmp_path):
    pair = write_lineage(tmp_path / "a")
    other = write_lineage(tmp_path / "b")
    [problem] = check_pair(KeyAndChain(other.key_file, pair.chain_file), NOW)
    assert problem.startswith(f"the private key {other.key_file} does not match the certificate "
                              "'CN=mail.example.test'")


def test_leaf_without_its_chain_is_refused(tmp_path):
    pair = write_lineage(tmp_path)
    leaf_only = tmp_path / "cert.pem"
    leaf_only.write_bytes(pem(leaf_certificate(pair)))
    [problem] = check_pair(KeyAndChain(pair.key_file, str(leaf_only)), NOW)
    assert "holds only the leaf" in problem and "deploy fullchain.pem, not cert.pem" in problem


def test_chain_in_the_wrong_order_is_refused(tmp_path):
    pair = write_lineage(tmp_path)
    leaf, intermediate = x509.load_pem_x509_certificates(Path(pair.chain_file).read_bytes())
    Path(pair.chain_file).write_bytes(pem(leaf, leaf, intermediate))
    problems = check_pair(pair, NOW)
    assert len(problems) == 1 and "is not issued by the next certificate" in problems[0]


def test_expired_leaf_is_refused(tmp_path):
    pair = write_lineage(tmp_path, leaf_not_after=NOW - DAY)
    [problem] = check_pair(pair, NOW)
    assert "'CN=mail.example.test'" in problem
    assert f"is not valid at {NOW:%Y-%m-%d %H:%M} UTC" in problem


def test_garbage_key_file_is_named(tmp_path):
    pair = write_lineage(tmp_path)
    Path(pair.key_file).write_text("not a key\n")
    assert check_pair(pair, NOW) == [
        f"cannot read the private key in {pair.key_file}: no unencrypted PEM private key found"]


def test_encrypted_key_is_named(tmp_path):
    pair = write_lineage(tmp_path)
    key = serialization.load_pem_private_key(Path(pair.key_file).read_bytes(), password=None)
    Path(pair.key_file).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    [problem] = check_pair(pair, NOW)
    assert problem.startswith(f"cannot read the private key in {pair.key_file}: ")
    assert "encrypted" in problem


def test_empty_chain_file_is_named(tmp_path):
    pair = write_lineage(tmp_path)
    Path(pair.chain_file).write_text("")
    assert check_pair(pair, NOW) == [f"{pair.chain_file} holds no readable PEM certificate"]


def test_chain_files_pair_a_key_file_with_the_chain_file_after_it(tmp_path):
    pair = write_lineage(tmp_path)
    assert pair_chain_files([pair.key_file, pair.chain_file]) == [pair]


def test_chain_files_accept_key_and_chain_in_one_file(tmp_path):
    pair = write_lineage(tmp_path)
    combined = tmp_path / "combined.pem"
    combined.write_bytes(Path(pair.key_file).read_bytes() + Path(pair.chain_file).read_bytes())
    assert pair_chain_files([str(combined)]) == [KeyAndChain(str(combined), str(combined))]


def test_chain_files_keep_a_missing_file_for_the_checks_to_report(tmp_path):
    missing = str(tmp_path / "gone.pem")
    [pair] = pair_chain_files([missing])
    assert check_pair(pair, NOW) == [f"{missing} does not exist or is not a regular file"]


@pytest.mark.parametrize("names, covered", [
    (["mail.example.test"], True),
    (["MAIL.example.test."], True),
    (["example.test", "mail.example.test"], True),
    (["example.test"], False),
    (["imap.example.test"], True),
    (["a.imap.example.test"], False),
    ([], False),
])
def test_coverage_by_dns_names_and_one_label_wildcards(names, covered):
    sans = x509.SubjectAlternativeName([x509.DNSName("mail.example.test"),
                                        x509.DNSName("*.example.test")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("x")).issuer_name(_name("x"))
            .public_key(key.public_key()).serial_number(1).not_valid_before(NOW - DAY)
            .not_valid_after(NOW + DAY).add_extension(sans, critical=False)
            .sign(key, hashes.SHA256()))
    assert covers(cert, names) is covered


def test_key_algorithm_and_dns_names(tmp_path):
    ecdsa = leaf_certificate(write_lineage(tmp_path / "ec"))
    rsa_leaf = leaf_certificate(write_lineage(tmp_path / "rsa", name="imap.example.test",
                                              rsa_leaf=True))
    assert (key_algorithm(ecdsa), key_algorithm(rsa_leaf)) == ("EC", "RSA")
    assert dns_names(rsa_leaf) == ["imap.example.test"]


def test_server_certificate_needs_a_dns_name_and_server_auth(tmp_path):
    assert server_certificate_problem(leaf_certificate(write_lineage(tmp_path / "plain"))) is None
    assert server_certificate_problem(leaf_certificate(write_lineage(
        tmp_path / "tls", usages=[ExtendedKeyUsageOID.SERVER_AUTH,
                                  ExtendedKeyUsageOID.CLIENT_AUTH]))) is None
    smime = leaf_certificate(write_lineage(tmp_path / "smime", name="alice@example.test",
                                           usages=[ExtendedKeyUsageOID.EMAIL_PROTECTION]))
    assert server_certificate_problem(smime) == (
        f"'CN=alice@example.test' (serial {smime.serial_number:x}) is for alice@example.test "
        "(S/MIME), not for a host name")
    client = leaf_certificate(write_lineage(tmp_path / "client",
                                            usages=[ExtendedKeyUsageOID.CLIENT_AUTH]))
    assert server_certificate_problem(client) == (
        f"the extended key usage of 'CN=mail.example.test' (serial {client.serial_number:x}) "
        "(clientAuth) lacks serverAuth, so TLS clients refuse it")


def pair_in(directory: Path) -> KeyAndChain:
    """Empty key and chain files: enough for what checks whether a lineage is still there."""
    directory.mkdir(parents=True)
    pair = KeyAndChain(str(directory / "privkey.pem"), str(directory / "fullchain.pem"))
    for path in (pair.key_file, pair.chain_file):
        Path(path).touch()
    return pair


def test_a_default_pair_goes_only_while_another_stays(tmp_path):
    ecdsa, rsa_pair = pair_in(tmp_path / "ecdsa"), pair_in(tmp_path / "rsa")
    assert default_without_gone([ecdsa, rsa_pair]) is None  # nothing gone
    Path(rsa_pair.key_file).unlink()
    assert default_without_gone([ecdsa, rsa_pair]) == (ecdsa,)
    assert default_without_gone([rsa_pair, ecdsa]) == (ecdsa,)  # the alternate becomes the first
    assert default_without_gone([rsa_pair]) is None  # the only one stays: deploy another first
    assert gone_files("/etc/x.conf", {"the default certificate": [ecdsa, rsa_pair]}) == [
        f"/etc/x.conf: the default certificate names {rsa_pair.key_file}, which no longer exists"]
