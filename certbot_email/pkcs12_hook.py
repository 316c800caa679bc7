"""``certbot-email-pkcs12``: a deploy hook keeping ``<lineage>/bundle.p12`` in step with it.

Mail clients (Thunderbird, Outlook, Apple Mail, mobile clients) import an S/MIME identity only as
a PKCS#12 file, so the hook rebuilds one from the lineage's key, certificate and chain after every
issue and renewal: ``certbot certonly ... --deploy-hook certbot-email-pkcs12``. certbot saves the
hook in the renewal configuration, so ``certbot renew`` runs it again.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

BUNDLE_NAME = "bundle.p12"
LINEAGE_VARIABLE = "RENEWED_LINEAGE"
#: How a renewal configuration's deploy hook names this program (console script or module).
HOOK_NAMES = ("certbot-email-pkcs12", "certbot_email.pkcs12_hook")
#: Named encryption profiles: "modern" is AES-256 with PBKDF2 (OpenSSL 3's default); "legacy" is
#: 3DES with SHA-1, for clients that cannot read anything newer (older Windows and macOS).
PROFILES = ("modern", "legacy")
LEGACY_KDF_ROUNDS = 50000
#: The key types PKCS#12 serialization takes (certbot itself makes RSA and ECDSA keys).
BUNDLEABLE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                        ed448.Ed448PrivateKey, dsa.DSAPrivateKey)


class HookError(Exception):
    """A problem the user must fix; main() prints it and exits non-zero."""


def build_parser() -> argparse.ArgumentParser:
    """The hook's options; the lineage comes from certbot's environment, not the command line."""
    parser = argparse.ArgumentParser(
        prog="certbot-email-pkcs12",
        description=f"certbot deploy hook: write {BUNDLE_NAME} (key, certificate and chain, "
        f"mode 0600) into the lineage named by ${LINEAGE_VARIABLE}, for mail clients.")
    parser.add_argument("--password-file", type=Path, default=None, metavar="PATH",
                        help="file holding the bundle's password (first line; the file must "
                        "not be readable by group or others); without it the bundle is not "
                        "encrypted, which some clients refuse to import")
    parser.add_argument("--profile", choices=PROFILES, default="modern",
                        help="encryption of a password-protected bundle: modern (AES-256, "
                        "PBKDF2-SHA256) or legacy (3DES, SHA-1) for old clients "
                        "(default: %(default)s)")
    return parser


def read_password(path: Path) -> bytes:
    """The first line of a private password file, refused if others can read the file."""
    try:
        mode = path.stat().st_mode
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise HookError(f"cannot read password file {path}: {error.strerror}") from error
    if mode & 0o077:
        raise HookError(f"password file {path} is readable by group or others: chmod 600 it")
    if not lines or not lines[0]:
        raise HookError(f"password file {path} is empty; leave --password-file out for no "
                        "password")
    return lines[0]


def encryption_for(password: Optional[bytes],
                   profile: str) -> serialization.KeySerializationEncryption:
    """The PKCS#12 encryption the profile names, or none without a password."""
    if password is None:
        return serialization.NoEncryption()
    if profile == "legacy":
        return (serialization.PrivateFormat.PKCS12.encryption_builder()
                .kdf_rounds(LEGACY_KDF_ROUNDS)
                .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
                .hmac_hash(hashes.SHA1())
                .build(password))
    return serialization.BestAvailableEncryption(password)


def build_bundle(lineage: Path, password: Optional[bytes], profile: str) -> bytes:
    """The lineage's key, certificate and chain as PKCS#12, named after the lineage."""
    try:
        key = serialization.load_pem_private_key((lineage / "privkey.pem").read_bytes(), None)
        certificate = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
        chain = x509.load_pem_x509_certificates((lineage / "chain.pem").read_bytes())
    except OSError as error:
        raise HookError(f"cannot read lineage {lineage}: {error}") from error
    except ValueError as error:
        raise HookError(f"lineage {lineage} holds an unreadable key or certificate: "
                        f"{error}") from error
    if not isinstance(key, BUNDLEABLE_KEY_TYPES):
        raise HookError(f"lineage {lineage}: a {type(key).__name__} cannot go into PKCS#12")
    return pkcs12.serialize_key_and_certificates(
        lineage.name.encode("utf-8"), key, certificate, chain, encryption_for(password, profile))


def write_private(path: Path, data: bytes) -> None:
    """Replace path atomically with a 0600 file, so no reader ever sees half a bundle."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as out:  # mkstemp creates the file 0600
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def remove_bundle(renewal_file: str) -> Optional[Path]:
    """Delete the bundle this hook made for a lineage that ``certbot delete`` is removing.

    certbot deletes only the files it made, and runs no hook on delete, so without this the
    bundle, private key inside, would outlive the lineage and keep its live directory (which
    blocks a new certificate of that name). Only a regular ``bundle.p12`` beside the lineage's
    ``cert.pem`` goes, and only when the renewal configuration runs this hook.
    """
    import configobj  # certbot's own parser for renewal configurations
    renewal = configobj.ConfigObj(renewal_file, encoding="utf-8", default_encoding="utf-8")
    hook = str(renewal.get("renewalparams", {}).get("renew_hook") or "")
    cert = renewal.get("cert")
    if not cert or not any(name in hook for name in HOOK_NAMES):
        return None
    bundle = Path(str(cert)).parent / BUNDLE_NAME
    if bundle.is_symlink() or not bundle.is_file():
        return None
    bundle.unlink()
    return bundle


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the console script; certbot logs a non-zero exit as a failed hook."""
    options = build_parser().parse_args(argv)
    lineage = os.environ.get(LINEAGE_VARIABLE)
    if not lineage:
        print(f"certbot-email-pkcs12: ${LINEAGE_VARIABLE} is not set; run me as certbot's "
              "--deploy-hook", file=sys.stderr)
        return 2
    try:
        password = None if options.password_file is None else read_password(options.password_file)
        bundle = build_bundle(Path(lineage), password, options.profile)
        write_private(Path(lineage) / BUNDLE_NAME, bundle)
    except HookError as error:
        print(f"certbot-email-pkcs12: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
