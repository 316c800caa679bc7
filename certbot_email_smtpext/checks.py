"""Certificate and key file checks that `postfix check` and `doveconf` do not make.

A mail daemon that is reloaded onto a missing, mismatched or expired certificate keeps running
and fails every TLS handshake, so the installers run these checks before each reload.
"""
import dataclasses
import datetime
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

_KEY_PEM = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)
_CERT_PEM = b"-----BEGIN CERTIFICATE-----"
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclasses.dataclass(frozen=True)
class KeyAndChain:
    """A private key file and the file with its certificate chain, leaf first (may be one file)."""

    key_file: str
    chain_file: str


def pair_chain_files(paths: Sequence[str]) -> list[KeyAndChain]:
    """Pair up Postfix `smtpd_tls_chain_files`: each key, then its chain, in one file or two."""
    pairs: list[KeyAndChain] = []
    pending_key: str | None = None
    for path in paths:
        has_key, has_cert = _pem_kinds(path)
        if has_key and has_cert:
            pairs.append(KeyAndChain(path, path))
        elif pending_key is None and not has_cert:
            pending_key = path  # a key file, or an unreadable file where the key belongs
        else:
            # the chain after its key; check_pair names whatever is wrong with an odd pairing
            pairs.append(KeyAndChain(pending_key or path, path))
            pending_key = None
    if pending_key is not None:
        pairs.append(KeyAndChain(pending_key, pending_key))
    return pairs


def _pem_kinds(path: str) -> tuple[bool, bool]:
    """Whether a PEM file holds a private key and whether it holds a certificate."""
    try:
        with open(path, "rb") as pem_file:
            data = pem_file.read()
    except OSError:
        return False, False
    return _KEY_PEM.search(data) is not None, _CERT_PEM in data


def gone_files(where: str, entries: Mapping[str, Sequence[KeyAndChain]]) -> list[str]:
    """A line per file that an entry (keyed by what names its pairs) names and that is gone,
    as after `certbot delete` of its lineage."""
    return [f"{where}: {label} names {path}, which no longer exists"
            for label, pairs in sorted(entries.items()) for pair in pairs
            for path in dict.fromkeys((pair.key_file, pair.chain_file))
            if not os.path.exists(path)]


def _present(pairs: Sequence[KeyAndChain]) -> tuple[KeyAndChain, ...]:
    return tuple(pair for pair in pairs
                 if os.path.exists(pair.key_file) and os.path.exists(pair.chain_file))


def without_missing(entries: Mapping[str, Sequence[KeyAndChain]],
                    ) -> dict[str, tuple[KeyAndChain, ...]]:
    """The SNI entries with the pairs whose files are gone left out, and empty ones dropped."""
    kept = {name: _present(pairs) for name, pairs in entries.items()}
    return {name: pairs for name, pairs in kept.items() if pairs}


def default_without_gone(pairs: Sequence[KeyAndChain]) -> tuple[KeyAndChain, ...] | None:
    """The default pairs left once a lineage served beside another (alt-cert-name) is deleted;
    None when nothing is to drop, or when no pair would be left: a daemon's only default
    certificate is never removed (it would serve none), the admin deploys another first."""
    kept = _present(pairs)
    return kept if kept and len(kept) < len(pairs) else None


def read_text(path: str) -> str | None:
    """A config file's text, or None when it does not exist (we are about to create it)."""
    try:
        with open(path, encoding="utf-8") as text_file:
            return text_file.read()
    except FileNotFoundError:
        return None


def read_chain(path: str) -> list[x509.Certificate]:
    """The certificates of a PEM file, in file order."""
    with open(path, "rb") as pem_file:
        return x509.load_pem_x509_certificates(pem_file.read())


def read_private_key(path: str) -> PrivateKeyTypes:
    """The first private key of a PEM file (which may also hold certificates)."""
    with open(path, "rb") as pem_file:
        found = _KEY_PEM.search(pem_file.read())
    if found is None:
        raise ValueError("no unencrypted PEM private key found")
    return serialization.load_pem_private_key(found.group(0), password=None)


def leaf_certificate(pair: KeyAndChain) -> x509.Certificate:
    """The certificate a daemon serves for this pair: the first one in the chain file."""
    return read_chain(pair.chain_file)[0]


def key_algorithm(cert: x509.Certificate) -> str:
    """"RSA", "EC" or another key type's name: a daemon serves one certificate per type."""
    public_key = cert.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "EC"
    return type(public_key).__name__


def dns_names(cert: x509.Certificate) -> list[str]:
    """The DNS names of the certificate's SAN extension, lower case, in certificate order."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in sans.get_values_for_type(x509.DNSName)]


def server_certificate_problem(cert: x509.Certificate) -> str | None:
    """Why a TLS server must not serve cert (no DNS name, or an EKU without serverAuth)."""
    if not dns_names(cert):
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            addresses = sans.get_values_for_type(x509.RFC822Name)
        except x509.ExtensionNotFound:
            addresses = []
        what = f"is for {', '.join(addresses)} (S/MIME)" if addresses else "has no DNS name"
        return f"{describe(cert)} {what}, not for a host name"
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.SERVER_AUTH in usages or \
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
        return None
    names = ", ".join(getattr(usage, "_name", usage.dotted_string) for usage in usages)
    return (f"the extended key usage of {describe(cert)} ({names}) lacks serverAuth, so TLS "
            "clients refuse it")


def covers(cert: x509.Certificate, host_names: Iterable[str]) -> bool:
    """Whether a DNS SAN of the certificate matches one of the names (`*.` matches one label)."""
    patterns = dns_names(cert)
    for name in (host_name.lower().rstrip(".") for host_name in host_names):
        wildcard = "*." + name.split(".", 1)[-1]
        if name in patterns or ("." in name and wildcard in patterns):
            return True
    return False


def check_pair(pair: KeyAndChain, now: datetime.datetime) -> list[str]:
    """Every reason the daemon could not serve this key and chain; empty when it can."""
    problems = [problem for path in dict.fromkeys((pair.key_file, pair.chain_file))
                for problem in _file_problems(path)]
    if problems:
        return problems
    problems += _key_permission_problems(pair.key_file)
    try:
        key = read_private_key(pair.key_file)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:  # TypeError: encrypted key
        return problems + [f"cannot read the private key in {pair.key_file}: {error}"]
    try:
        chain = read_chain(pair.chain_file)
    except ValueError:
        return problems + [f"{pair.chain_file} holds no readable PEM certificate"]
    if chain[0].public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        problems.append(f"the private key {pair.key_file} does not match the certificate "
                        f"{describe(chain[0])} in {pair.chain_file}")
    problems += _chain_problems(chain, pair.chain_file)
    problems += [f"{describe(cert)} in {pair.chain_file} is not valid at {now:%Y-%m-%d %H:%M} UTC "
                 f"(valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                 f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M})"
                 for cert in chain
                 if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc]
    return problems


def _file_problems(path: str) -> list[str]:
    """Missing or unreadable files; postfix check and reload accept both silently."""
    if not os.path.isfile(path):
        return [f"{path} does not exist or is not a regular file"]
    if not os.access(path, os.R_OK):
        return [f"{path} is not readable"]
    return []


def _key_permission_problems(path: str) -> list[str]:
    """A private key that every local user can read is a leaked key."""
    mode = os.stat(path).st_mode
    if mode & stat.S_IROTH:
        return [f"the private key {path} is readable by every user (mode {stat.S_IMODE(mode):04o});"
                f" run chmod o-r on it"]
    return []


def _chain_problems(chain: list[x509.Certificate], path: str) -> list[str]:
    """Each certificate must be issued by the next, and a non-self-issued leaf needs its issuer."""
    problems = []
    for cert, issuer in zip(chain, chain[1:], strict=False):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(f"{path}: {describe(cert)} is not issued by the next certificate "
                            f"{describe(issuer)}; the chain is out of order or mixed up")
    if len(chain) == 1 and chain[0].issuer != chain[0].subject:
        problems.append(f"{path} holds only the leaf {describe(chain[0])}, not the chain up to "
                        f"its issuer {chain[0].issuer.rfc4514_string()}; deploy fullchain.pem, "
                        "not cert.pem")
    return problems


def describe(cert: x509.Certificate) -> str:
    """A certificate as a reader of an error message can find it: subject and serial."""
    return f"'{cert.subject.rfc4514_string()}' (serial {cert.serial_number:x})"
