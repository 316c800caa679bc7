"""The only module that reaches into certbot and acme internals: hooks that carry mailboxes.

Inside certbot a mailbox is a ``DNSName`` whose value contains ``@`` (no DNS name can). These
hooks, installed when certbot imports one of our plugins, make such names travel end to end:

H0  ``enforce_domain_sanity`` keeps a mailbox's local part as typed (certbot lowercases names)
    and checks it is an address; H1/H2 register the ``email`` identifier and our challenge
    types; H3 ``make_csr`` writes mailboxes as rfc822Name/SmtpUTF8Mailbox SANs; H4
    ``get_identifiers_from_x509`` reads them back from CSRs and certificates (renewal,
    ``certbot certificates``, duplicate detection); H5 ``NewOrder`` sends them as ``email``
    identifiers. Two courtesy hooks mend mistakes: H5b turns a CA's refusal of ``email``
    identifiers into a hint, and H6 makes ``certbot delete`` remove our PKCS#12 bundle (it holds
    the private key) with the lineage, and H7 runs our startup tasks (the repair of a killed
    email-capability run) in every certbot command, once its directories are locked.
    Every hook passes names without ``@`` through untouched.
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

SUPPORTED_CERTBOT = ">= 5.3, < 6"
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
        text = domain.decode("utf-8") if isinstance(domain, bytes) else domain
        if not identifiers.is_mailbox(text):
            return original(domain)
        try:
            return identifiers.normalize_mailbox(text.strip())
        except identifiers.MailboxError as error:
            raise errors.ConfigurationError(str(error)) from None
    return _mark(enforce_domain_sanity)


def _install_name_sanity() -> None:
    from certbot import util
    from certbot._internal import san
    for module in (util, san):  # san holds its own binding: ``from certbot.util import ...``
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

def _wrap_get_identifiers(original: Callable[..., tuple[list[str], list[str]]]
                          ) -> Callable[..., tuple[list[str], list[str]]]:
    from cryptography import x509

    from certbot_email.protocol import csr

    def get_identifiers_from_x509(subject: x509.Name, exts: x509.Extensions
                                  ) -> tuple[list[str], list[str]]:
        dns_names, ip_addresses = original(subject, exts)
        try:
            san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return dns_names, ip_addresses
        extra = [box for box in csr.mailboxes(san) if box not in dns_names]
        return dns_names + extra, ip_addresses
    return _mark(get_identifiers_from_x509)


def _install_get_identifiers() -> None:
    from acme import crypto_util
    original = crypto_util.get_identifiers_from_x509
    if _is_hook(original):
        return
    if not _has_parameters(original, ["subject", "exts"]):
        raise LookupError("acme.crypto_util.get_identifiers_from_x509 changed its signature")
    crypto_util.get_identifiers_from_x509 = _wrap_get_identifiers(original)


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
        try:
            extension = x509.load_pem_x509_csr(csr_pem).extensions.get_extension_for_class(
                x509.SubjectAlternativeName)
        except (ValueError, x509.ExtensionNotFound):
            return []
        return csr.mailboxes(extension.value)

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


# ---- H6: ``certbot delete`` also removes the PKCS#12 bundle our deploy hook made ----------

def _install_delete_files() -> None:
    from certbot._internal import storage
    original = storage.delete_files
    if _is_hook(original):
        return
    if not _has_parameters(original, ["config", "certname"]):
        raise LookupError("certbot._internal.storage.delete_files changed its signature")

    def delete_files(config: Any, certname: str) -> None:
        try:
            from certbot_email import pkcs12_hook
            removed = pkcs12_hook.remove_bundle(
                storage.renewal_file_for_certname(config, certname))
            if removed is not None:
                logger.info("Removed %s, made by the certbot-email-pkcs12 deploy hook", removed)
        except Exception as error:  # pylint: disable=broad-except
            logger.debug("certbot-email left the lineage's PKCS#12 bundle alone: %s", error)
        original(config, certname)
    storage.delete_files = _mark(delete_files)


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
    "H4 get_identifiers_from_x509": _install_get_identifiers,
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
