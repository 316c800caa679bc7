"""The only module that reaches into certbot and acme internals: hooks that carry mailboxes.

Inside certbot a mailbox is a ``DNSName`` whose value contains ``@`` (no DNS name can). These
hooks, installed when certbot imports one of our plugins, make such names travel end to end:

H0  ``enforce_domain_sanity`` keeps a mailbox's local part as typed (certbot lowercases names)
    and checks it is an address; H1/H2 register the ``email`` identifier and our challenge
    types; H3 ``make_csr`` writes mailboxes as rfc822Name/SmtpUTF8Mailbox SANs; H4, acme's
    name reader (whichever of its shapes this certbot has), reads them back from CSRs and
    certificates (renewal, ``certbot certificates``, duplicate detection); H5 ``NewOrder``
    sends them as ``email`` identifiers. Two courtesy hooks mend mistakes: H5b turns a CA's
    refusal of ``email`` identifiers into a hint, and H6 makes ``certbot delete`` remove our
    PKCS#12 bundle (it holds the private key) and the mail installers' entries of its files
    (which would fail ``doveconf -x``) with the lineage, and H7 runs our startup tasks (the
    repair of a killed email-capability run) in every certbot command, once its directories
    are locked. Every hook passes names without ``@`` through untouched. Where certbot calls a
    hook for every lineage (H0, H4, H5b), a failure of our part leaves certbot's own answer in
    place (H4 logs it once), so one odd certificate cannot cost any plugin its lineage.
    certbot 2.9 to 5.x differ in these internals; each hook looks for what this certbot has,
    never at its version number.
    Installing never raises: certbot imports us on every run, nginx renewals included. A hook
    that cannot be installed is recorded, and our plugins refuse in ``prepare()``
    (``require_support``); a courtesy hook that cannot be installed is only logged.
"""
import dataclasses
import inspect
import ipaddress
import logging
from typing import Any, Callable, Optional, Sequence, Union

logger = logging.getLogger(__name__)

SUPPORTED_CERTBOT = ">= 2.9, < 6"
_HOOK_MARK = "__certbot_email_hook__"


@dataclasses.dataclass
class CsrProfile:
    """Extra CSR content a plugin asks for, applied by the ``make_csr`` hook.

    ``mailbox_key_usage`` is an ``x509.KeyUsage`` factory taking the private key (S/MIME,
    RFC 8823 §3.3); ``srv_names`` are ``(service, host)`` pairs added as RFC 4985 SRVNames
    for hosts that are in the CSR. A profile serves the next CSR only: ``certbot renew`` runs
    every lineage in one process, and another lineage's CSR must not inherit it.
    """

    mailbox_key_usage: Optional[Callable[[Any], Any]] = None
    srv_names: Sequence[tuple[str, str]] = ()


#: Set by our plugin's ``prepare()`` (certbot prepares it before making that lineage's CSR);
#: taken by the ``make_csr`` hook, which leaves a fresh, empty one behind.
csr_profile = CsrProfile()

_failures: dict[str, str] = {}
_installed = False


def _certbot_version() -> str:
    try:
        from certbot import __version__
        return str(__version__)
    except Exception:  # pylint: disable=broad-except
        return "unknown"


def _has_parameters(function: Callable[..., Any], names: Sequence[str]) -> bool:
    try:
        parameters = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return False
    return parameters[:len(names)] == list(names)


def _is_hook(function: Any) -> bool:
    return getattr(function, _HOOK_MARK, False)


def _mark(function: Callable[..., Any]) -> Callable[..., Any]:
    setattr(function, _HOOK_MARK, True)
    return function


# ---- H0: keep the mailbox local part as typed -------------------------------------------

def _wrap_enforce_domain_sanity(original: Callable[[Union[str, bytes]], str]
                                ) -> Callable[[Union[str, bytes]], str]:
    from certbot import errors

    from certbot_email.protocol import identifiers

    def enforce_domain_sanity(domain: Union[str, bytes]) -> str:
        try:
            text = domain.decode("utf-8") if isinstance(domain, bytes) else domain
            mailbox = identifiers.is_mailbox(text)
        except Exception:  # pylint: disable=broad-except
            mailbox = False  # not text: certbot's own check says what is wrong with it
        if not mailbox:
            return original(domain)
        try:
            return identifiers.normalize_mailbox(text.strip())
        except identifiers.MailboxError as error:
            raise errors.ConfigurationError(str(error)) from None
    return _mark(enforce_domain_sanity)


def _install_name_sanity() -> None:
    import importlib.util

    from certbot import util
    modules = [util]
    if importlib.util.find_spec("certbot._internal.san") is not None:
        # certbot >= 5.2.1 keeps its own binding there: ``from certbot.util import ...``
        from certbot._internal import san
        modules.append(san)
    for module in modules:
        original = module.enforce_domain_sanity
        if _is_hook(original):
            continue
        if not _has_parameters(original, ["domain"]):
            raise LookupError(f"{module.__name__}.enforce_domain_sanity changed its signature")
        module.enforce_domain_sanity = _wrap_enforce_domain_sanity(original)  # type: ignore


# ---- H1/H2: registrations ----------------------------------------------------------------

def _install_registrations() -> None:
    # Importing the protocol modules registers the identifier type and the challenge classes.
    from certbot_email.protocol import challenges, identifiers  # noqa: F401


# ---- H3: mailboxes (and SRVNames) into the CSR -------------------------------------------

def _wrap_make_csr(original: Callable[..., bytes]) -> Callable[..., bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from certbot_email.protocol import csr, identifiers

    def make_csr(private_key_pem: bytes, domains: Optional[Sequence[str]] = None,
                 must_staple: bool = False,
                 ipaddrs: Optional[Sequence[Union[ipaddress.IPv4Address,
                                                  ipaddress.IPv6Address]]] = None) -> bytes:
        global csr_profile  # pylint: disable=global-statement
        profile, csr_profile = csr_profile, CsrProfile()
        names = list(domains or ())
        mailboxes = [name for name in names if identifiers.is_mailbox(name)]
        hosts = [name for name in names if not identifiers.is_mailbox(name)]
        srv_names = [(service, host) for service, host in profile.srv_names if host in hosts]
        if not mailboxes and not srv_names:
            return original(private_key_pem, domains, must_staple, ipaddrs)
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        general_names: list[x509.GeneralName] = csr.mailbox_sans(mailboxes)
        general_names += [x509.DNSName(host) for host in hosts]
        general_names += [csr.srv_general_name(service, host) for service, host in srv_names]
        general_names += [x509.IPAddress(ip) for ip in ipaddrs or ()]
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names),
                                        critical=False)
        if mailboxes and profile.mailbox_key_usage is not None:
            builder = builder.add_extension(profile.mailbox_key_usage(key), critical=True)
        if must_staple:
            builder = builder.add_extension(
                x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
        return builder.sign(key, hashes.SHA256()).public_bytes(  # type: ignore[arg-type]
            serialization.Encoding.PEM)
    return _mark(make_csr)


def _install_make_csr() -> None:
    from acme import crypto_util
    original = crypto_util.make_csr
    if _is_hook(original):
        return
    if not _has_parameters(original, ["private_key_pem", "domains", "must_staple", "ipaddrs"]):
        raise LookupError("acme.crypto_util.make_csr changed its signature")
    crypto_util.make_csr = _wrap_make_csr(original)


# ---- H4: mailboxes read back from CSRs and certificates ----------------------------------
# certbot reads every lineage's names through one acme function, whose name and shape changed:
# ``get_identifiers_from_x509(subject, exts)`` -> (dns, ip) (5.2.1+), ``get_names_from_subject_
# and_extensions(subject, exts)`` -> dns (3.1-5.1), ``_pyopenssl_cert_or_req_all_names(loaded)``
# -> dns (pyOpenSSL objects, 3.0 and older). The newest one present is the one certbot calls.

#: (error, certbot's names) already logged: renewal reads each lineage's names several times.
_logged_read_errors: set[tuple[str, tuple[str, ...]]] = set()


def _mailboxes_beyond(read_extensions: Callable[[], Any], dns_names: list[str]) -> list[str]:
    """The SAN's mailboxes not already in ``dns_names``; none, logged once, if we cannot read
    them: every lineage's names pass here, and another lineage must keep certbot's answer."""
    from cryptography import x509

    from certbot_email.protocol import csr
    try:
        try:
            san = read_extensions().get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return []
        return [box for box in csr.mailboxes(san) if box not in dns_names]
    except Exception as error:  # pylint: disable=broad-except
        key = (f"{type(error).__name__}: {error}", tuple(dns_names))
        if key not in _logged_read_errors:
            _logged_read_errors.add(key)
            logger.warning("certbot-email cannot read the email addresses of the certificate "
                           "or CSR with names [%s] (%s); certbot reads it as it would without "
                           "certbot-email", ", ".join(dns_names), key[0])
        return []


def _wrap_get_identifiers(original: Callable[..., tuple[list[str], list[str]]]
                          ) -> Callable[..., tuple[list[str], list[str]]]:
    def get_identifiers_from_x509(subject: Any, exts: Any) -> tuple[list[str], list[str]]:
        dns_names, ip_addresses = original(subject, exts)
        return dns_names + _mailboxes_beyond(lambda: exts, dns_names), ip_addresses
    return _mark(get_identifiers_from_x509)


def _wrap_get_names(original: Callable[..., list[str]]) -> Callable[..., list[str]]:
    def get_names_from_subject_and_extensions(subject: Any, exts: Any) -> list[str]:
        dns_names = original(subject, exts)
        return dns_names + _mailboxes_beyond(lambda: exts, dns_names)
    return _mark(get_names_from_subject_and_extensions)


def _wrap_pyopenssl_names(original: Callable[..., list[str]]) -> Callable[..., list[str]]:
    def _pyopenssl_cert_or_req_all_names(loaded_cert_or_req: Any) -> list[str]:
        dns_names = original(loaded_cert_or_req)
        return dns_names + _mailboxes_beyond(
            lambda: loaded_cert_or_req.to_cryptography().extensions, dns_names)
    return _mark(_pyopenssl_cert_or_req_all_names)


#: The shapes H4 knows, newest first: function name, parameters, wrapper.
_NAME_READERS: tuple[tuple[str, list[str], Callable[..., Callable[..., Any]]], ...] = (
    ("get_identifiers_from_x509", ["subject", "exts"], _wrap_get_identifiers),
    ("get_names_from_subject_and_extensions", ["subject", "exts"], _wrap_get_names),
    ("_pyopenssl_cert_or_req_all_names", ["loaded_cert_or_req"], _wrap_pyopenssl_names),
)


def _install_get_identifiers() -> None:
    from acme import crypto_util
    for name, parameters, wrap in _NAME_READERS:
        original = getattr(crypto_util, name, None)
        if original is None:
            continue
        if _is_hook(original):
            return
        if not _has_parameters(original, parameters):
            raise LookupError(f"acme.crypto_util.{name} changed its signature")
        setattr(crypto_util, name, wrap(original))
        return
    raise LookupError("acme.crypto_util has none of "
                      f"{', '.join(name for name, _, _ in _NAME_READERS)}")


# ---- H5: newOrder sends mailboxes as email identifiers -----------------------------------

def _install_new_order() -> None:
    from acme import client, messages
    if _is_hook(messages.NewOrder):
        return
    if "NewOrder" not in client.ClientV2.new_order.__code__.co_names:
        raise LookupError("acme.client.ClientV2.new_order no longer builds messages.NewOrder")

    from certbot_email.protocol import identifiers

    def retype(identifier: Any) -> Any:
        if identifier.typ == messages.IDENTIFIER_FQDN and identifiers.is_mailbox(
                identifier.value):
            return messages.Identifier(typ=identifiers.IDENTIFIER_EMAIL,
                                       value=identifier.value)
        return identifier

    class NewOrder(messages.NewOrder):
        """newOrder whose ``dns`` identifiers holding ``@`` are RFC 8823 ``email`` ones."""

        def __init__(self, **kwargs: Any) -> None:
            if kwargs.get("identifiers"):
                kwargs["identifiers"] = [retype(i) for i in kwargs["identifiers"]]
            super().__init__(**kwargs)

    setattr(NewOrder, _HOOK_MARK, True)
    messages.NewOrder = NewOrder  # type: ignore[misc]


# ---- H5b: a CA that refuses email identifiers gets a hint, not a bare refusal -------------

#: ACME errors a CA answers a newOrder with when it does not know the ``email`` type.
_UNKNOWN_IDENTIFIER_ERRORS = ("unsupportedIdentifier", "malformed")


def _install_new_order_hint() -> None:
    from acme import client, messages
    from cryptography import x509

    from certbot_email.protocol import csr
    original = client.ClientV2.new_order
    if _is_hook(original):
        return
    if not _has_parameters(original, ["self", "csr_pem"]):
        raise LookupError("acme.client.ClientV2.new_order changed its signature")

    def csr_mailboxes(csr_pem: bytes) -> list[str]:
        """The CSR's mailboxes; none when it has none we can read (the CA's error stands)."""
        try:
            extension = x509.load_pem_x509_csr(csr_pem).extensions.get_extension_for_class(
                x509.SubjectAlternativeName)
            return csr.mailboxes(extension.value)
        except Exception:  # pylint: disable=broad-except
            return []

    def new_order(self: Any, csr_pem: bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, csr_pem, *args, **kwargs)
        except messages.Error as error:
            mailboxes = csr_mailboxes(csr_pem) if error.code in _UNKNOWN_IDENTIFIER_ERRORS else []
            if not mailboxes:
                raise
            from certbot import errors
            raise errors.Error(unknown_email_identifier_hint(
                mailboxes, error.detail or str(error))) from error
    client.ClientV2.new_order = _mark(new_order)  # type: ignore[method-assign]


def unknown_email_identifier_hint(mailboxes: Sequence[str], refusal: str) -> str:
    """What a refused newOrder for mailboxes most likely means, and what to do about it."""
    return (f"The CA refused the order for {', '.join(mailboxes)}: {refusal}. This CA does not "
            f"issue certificates for email addresses (RFC 8823 'email' identifiers); Let's "
            f"Encrypt, certbot's default, does not. Give a CA that does with --server "
            f"DIRECTORY-URL: see 'Which CA issues certificates for email addresses' in the "
            f"certbot-email README (acme2certifier, the CASTLE CA, or certbot-email-testca "
            f"for a trial).")


# ---- H6: ``certbot delete`` also removes our PKCS#12 bundle and mail servers' entries of it

def _install_delete_files() -> None:
    from certbot._internal import storage
    original = storage.delete_files
    if _is_hook(original):
        return
    if not _has_parameters(original, ["config", "certname"]):
        raise LookupError("certbot._internal.storage.delete_files changed its signature")

    def delete_files(config: Any, certname: str) -> None:
        prune = None
        try:
            from certbot_email import pkcs12_hook
            removed = pkcs12_hook.remove_bundle(
                storage.renewal_file_for_certname(config, certname))
            if removed is not None:
                logger.info("Removed %s, made by the certbot-email-pkcs12 deploy hook", removed)
        except Exception as error:  # pylint: disable=broad-except
            logger.debug("certbot-email left the lineage's PKCS#12 bundle alone: %s", error)
        try:
            from certbot_email_smtpext import installer
            prune = installer.prune_for_delete(storage.renewal_file_for_certname(config, certname))
        except Exception as error:  # pylint: disable=broad-except
            logger.debug("certbot-email found no mail server entries to remove: %s", error)
        original(config, certname)
        try:
            for line in prune() if prune else ():
                logger.info("%s: removed that entry with its lineage", line)
        except Exception as error:  # pylint: disable=broad-except
            logger.warning("certbot-email could not remove the lineage's entries (%s); the "
                           "next run of its installer does", error)
    storage.delete_files = _mark(delete_files)


# ---- what an annotated challenge is for ---------------------------------------------------

def challenge_identifier(achall: Any) -> str:
    """The name a challenge of this order is for: certbot 5.3 added ``achall.identifier`` and
    deprecated ``achall.domain`` (it warns); older certbot has only ``domain``."""
    if "identifier" in getattr(type(achall), "__slots__", ()):
        return str(achall.identifier.value)
    return str(achall.domain)


# ---- H7: startup tasks, run by every certbot command before it touches anything -----------

#: Callables taking certbot's config, registered at import by our plugins (keep them cheap:
#: every certbot run calls them). An exception is logged, never raised.
_startup_tasks: list[Callable[[Any], None]] = []


def run_at_startup(task: Callable[[Any], None]) -> None:
    """Have ``task(config)`` run once certbot's work dir is locked, before its command."""
    if task not in _startup_tasks:
        _startup_tasks.append(task)


def _install_startup() -> None:
    from certbot._internal import main
    original = main.make_or_verify_needed_dirs
    if _is_hook(original):
        return
    if not _has_parameters(original, ["config"]):
        raise LookupError("certbot._internal.main.make_or_verify_needed_dirs changed its "
                          "signature")

    def make_or_verify_needed_dirs(config: Any) -> None:
        original(config)  # creates and locks the config and work dirs
        for task in _startup_tasks:
            try:
                task(config)
            except Exception as error:  # pylint: disable=broad-except
                logger.error("%s", error)
    main.make_or_verify_needed_dirs = _mark(make_or_verify_needed_dirs)


# ---- certbot's lineage naming, for our prepare() -----------------------------------------

def new_lineage_name(config: Any) -> Optional[str]:
    """The name certbot would save a *new* lineage under for this run's ``-d`` names.

    ``None`` when it would renew, expand or duplicate an existing lineage instead, when there
    is nothing to save (``--dry-run``, ``--csr``), or when this certbot cannot tell.
    """
    import os
    names = list(getattr(config, "domains", None) or ())
    if not names or getattr(config, "dry_run", False) or getattr(config, "csr", None):
        return None
    name = getattr(config, "certname", None)
    if not name:
        if getattr(config, "duplicate", False):
            return None
        try:
            from certbot._internal import cert_manager
            sans = [*names, *(getattr(config, "ip_addresses", None) or ())]
            if any(cert_manager.find_duplicative_certs(config, sans)):
                return None
        except Exception as error:  # pylint: disable=broad-except
            logger.debug("certbot-email cannot look up certbot's lineages: %s", error)
            return None
        name = str(names[0]).removeprefix("*.")
    if os.path.exists(os.path.join(config.renewal_configs_dir, f"{name}.conf")):
        return None
    return name


#: The hook table, in installation order.
HOOKS: dict[str, Callable[[], None]] = {
    "H0 enforce_domain_sanity": _install_name_sanity,
    "H1/H2 registrations": _install_registrations,
    "H3 make_csr": _install_make_csr,
    "H4 names read from x509": _install_get_identifiers,
    "H5 NewOrder": _install_new_order,
}
#: Hooks that only make mistakes easier to mend: one that cannot be installed costs a hint or a
#: tidy-up, never the plugins, so its failure is logged and not held against this certbot.
COURTESY_HOOKS: dict[str, Callable[[], None]] = {
    "H5b newOrder refusal hint": _install_new_order_hint,
    "H6 delete_files": _install_delete_files,
    "H7 startup tasks": _install_startup,
}


def install() -> None:
    """Install every hook once; never raises, records what failed."""
    global _installed  # pylint: disable=global-statement
    if _installed:
        return
    _installed = True
    for name, installer in {**HOOKS, **COURTESY_HOOKS}.items():
        try:
            installer()
        except Exception as error:  # pylint: disable=broad-except
            if name in HOOKS:
                _failures[name] = f"{type(error).__name__}: {error}"
            logger.debug("certbot-email could not install hook %s: %s", name, error)


def require_support() -> None:
    """Called from our plugins' ``prepare()``: refuse, naming the certbot version, if needed."""
    reason = unsupported_reason()
    if reason:
        from certbot import errors
        raise errors.NoInstallationError(reason)


def unsupported_reason() -> Optional[str]:
    """Why email names cannot work with this certbot, or ``None`` when every hook is in."""
    if not _failures:
        return None
    details = "; ".join(f"{name}: {why}" for name, why in _failures.items())
    return (f"certbot-email supports certbot {SUPPORTED_CERTBOT}, but this is certbot "
            f"{_certbot_version()} and its internals differ ({details}). Other certbot "
            f"plugins are unaffected; install a supported certbot to use this plugin.")
