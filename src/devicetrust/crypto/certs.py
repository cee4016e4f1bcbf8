"""Issuing and verifying SSH and X.509 certificates. Pure: time is passed in, nothing is read or written.

Device trust rests on one rule (docs/architecture.md, Certificates): a certificate is device-verified only if it
chains to the user CA *and* carries all three device values. Verification therefore returns ``device=None``
whenever any of them is missing, and raises :class:`TrustError` for everything else that is wrong.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeGuard

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateType,
    SSHCertPublicKeyTypes,
    SSHPublicKeyTypes,
    load_ssh_public_identity,
    load_ssh_public_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devicetrust.errors import DevicetrustError, TrustError, ValidationError

from .ca import CertAuthority, key_usage
from .identity import (
    EXT_BOT_NAME,
    EXT_DEVICE_ASSET_TAG,
    EXT_DEVICE_CREDENTIAL_ID,
    EXT_DEVICE_ID,
    EXT_ROLES,
    EXT_SESSION_PROOF,
    EXT_TRAITS,
    OID_BOT_NAME,
    OID_DB_NAME,
    OID_DB_PROTOCOL,
    OID_DB_SERVICE,
    OID_DB_USER,
    OID_DEVICE_ASSET_TAG,
    OID_DEVICE_CREDENTIAL_ID,
    OID_DEVICE_ID,
    OID_LOGINS,
    OID_SESSION_PROOF,
    OID_TRAITS,
    DatabaseRoute,
    DeviceExtensions,
    Identity,
    SessionProof,
    require_utc,
)
from .keys import require_p256_public_key

__all__ = [
    "MAX_SSH_CERT_BYTES",
    "MAX_SSH_PRINCIPALS",
    "NOLOGIN_PRINCIPAL_PREFIX",
    "SSH_PERMIT_EXTENSIONS",
    "certificate_to_pem",
    "identity_from_ssh_cert",
    "identity_from_x509_cert",
    "issue_ssh_host_cert",
    "issue_ssh_user_cert",
    "issue_tls_server_cert",
    "issue_x509_client_cert",
    "load_ssh_certificate",
    "ssh_cert_extension_names",
    "verify_ssh_user_cert",
    "verify_x509_client_cert",
]

#: Largest SSH certificate line we parse; ours are ~1 KiB plus traits.
MAX_SSH_CERT_BYTES = 64 * 1024
#: OpenSSH's own limit (sshkey.c SSHKEY_CERT_MAX_PRINCIPALS).
MAX_SSH_PRINCIPALS = 256
#: An empty principal list means "any principal" to OpenSSH, so a login-less identity (e.g. a bot) gets one
#: unusable principal instead, exactly as Teleport does.
NOLOGIN_PRINCIPAL_PREFIX = "-teleport-nologin-"
#: Granted to every user cert; whether a session may actually use them is the node's role-based decision.
SSH_PERMIT_EXTENSIONS = (
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
)
_ROLES_VERSION = "v1"
_X509_CN_MAX = 64

ErrorType = type[DevicetrustError]


# --------------------------------------------------------------------------- encoding helpers


def _roles_json(roles: Sequence[str]) -> str:
    return json.dumps({"version": _ROLES_VERSION, "roles": list(roles)}, separators=(",", ":"))


def _traits_json(traits: Mapping[str, Sequence[str]]) -> str:
    return json.dumps({k: list(v) for k, v in traits.items()}, separators=(",", ":"), sort_keys=True)


def _json_loads(raw: str, what: str, err: ErrorType) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        # RecursionError: deeply nested arrays in a crafted certificate
        raise err(f"{what} is not valid JSON") from None


def _is_str_list(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _decode_roles(raw: str, what: str, err: ErrorType) -> tuple[str, ...]:
    doc = _json_loads(raw, what, err)
    if not isinstance(doc, dict) or doc.get("version") != _ROLES_VERSION:
        raise err(f'{what} is not {{"version":"{_ROLES_VERSION}","roles":[...]}}')
    roles = doc.get("roles")
    if not _is_str_list(roles):
        raise err(f"{what}: roles must be a list of strings")
    return tuple(roles)


def _decode_traits(raw: str, what: str, err: ErrorType) -> dict[str, tuple[str, ...]]:
    doc = _json_loads(raw, what, err)
    if not isinstance(doc, dict):
        raise err(f"{what} must be a JSON object of string lists")
    traits: dict[str, tuple[str, ...]] = {}
    for name, values in doc.items():
        if not _is_str_list(values):
            raise err(f"{what}: trait {name!r} must be a list of strings")
        traits[str(name)] = tuple(values)
    return traits


def _utf8(raw: bytes, what: str, err: ErrorType) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise err(f"{what} is not UTF-8") from None


def _build_identity(err: ErrorType, source: str, make: Callable[[], Identity]) -> Identity:
    # Identity validates its fields with ValidationError; re-raise as the caller's error kind
    try:
        return make()
    except ValidationError as exc:
        raise err(f"{source}: {exc}") from None


def _check_ca_kind(ca: CertAuthority, kind: str, what: str) -> None:
    if ca.kind != kind:
        raise ValidationError(f"{what} must be issued by the {kind} CA, not the {ca.kind} CA")


def _validity(not_before: datetime, not_after: datetime) -> tuple[datetime, datetime]:
    start = require_utc(not_before, "not_before").replace(microsecond=0)
    end = require_utc(not_after, "not_after").replace(microsecond=0)
    if end <= start:
        raise ValidationError("not_after: must be later than not_before")
    return start, end


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_timestamp(ts: int, what: str, err: ErrorType) -> datetime:
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        # e.g. OpenSSH's "forever" (2**64-1), which we never issue
        raise err(f"SSH certificate {what} is out of range") from None


# --------------------------------------------------------------------------- SSH


def _ssh_text_list(values: Sequence[str], what: str) -> list[bytes]:
    if isinstance(values, str):
        raise ValidationError(f"{what}: expected a list of strings, got a string")
    out: list[bytes] = []
    for v in values:
        if not isinstance(v, str) or not v or any(c.isspace() or ord(c) < 0x20 for c in v) or "," in v:
            # OpenSSH joins principals with "," in logs and authorized_principals matching
            raise ValidationError(f"{what}: {v!r} is not a valid principal")
        out.append(v.encode("utf-8"))
    if len(out) > MAX_SSH_PRINCIPALS:
        raise ValidationError(f"{what}: at most {MAX_SSH_PRINCIPALS} allowed, got {len(out)}")
    return out


def issue_ssh_user_cert(ca: CertAuthority, public_key: ec.EllipticCurvePublicKey, identity: Identity) -> bytes:
    """An OpenSSH user certificate line (``ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA…``)."""
    _check_ca_kind(ca, "user", "SSH user certificates")
    public_key = require_p256_public_key(public_key, "subject public key")
    for login in identity.logins:
        if login.startswith(NOLOGIN_PRINCIPAL_PREFIX):
            raise ValidationError(f"logins: {login!r} uses the reserved prefix {NOLOGIN_PRINCIPAL_PREFIX}")
    logins = identity.logins or (f"{NOLOGIN_PRINCIPAL_PREFIX}{uuid.uuid4()}",)
    extensions: dict[str, str] = dict.fromkeys(SSH_PERMIT_EXTENSIONS, "")
    extensions[EXT_ROLES] = _roles_json(identity.roles)
    extensions[EXT_TRAITS] = _traits_json(identity.traits)
    if identity.bot_name is not None:
        extensions[EXT_BOT_NAME] = identity.bot_name
    if identity.device is not None:
        extensions[EXT_DEVICE_ID] = identity.device.device_id
        extensions[EXT_DEVICE_ASSET_TAG] = identity.device.asset_tag
        extensions[EXT_DEVICE_CREDENTIAL_ID] = identity.device.credential_id
    if identity.session_proof is not None:
        extensions[EXT_SESSION_PROOF] = identity.session_proof.to_json()
    return _ssh_cert_line(
        ca.private_key,
        public_key,
        SSH_CERT_USER,
        key_id=identity.username.encode("utf-8"),
        principals=_ssh_text_list(logins, "logins"),
        valid_after=int(identity.not_before.timestamp()),
        valid_before=int(identity.not_after.timestamp()),
        extensions={name.encode("ascii"): value.encode("utf-8") for name, value in extensions.items()},
    )


def issue_ssh_host_cert(
    ca: CertAuthority,
    public_key: ec.EllipticCurvePublicKey,
    host_id: str,
    principals: Sequence[str],
    not_before: datetime,
    not_after: datetime,
) -> bytes:
    """An OpenSSH host certificate line; ``principals`` are the names clients dial (must be non-empty)."""
    _check_ca_kind(ca, "host", "SSH host certificates")
    public_key = require_p256_public_key(public_key, "subject public key")
    if not isinstance(host_id, str) or not host_id or any(ord(c) < 0x20 for c in host_id):
        raise ValidationError("host_id: must be a non-empty string without control characters")
    encoded = _ssh_text_list(principals, "principals")
    if not encoded:
        # an empty list would make the cert valid for every host name
        raise ValidationError("principals: at least one host name is required")
    start, end = _validity(not_before, not_after)
    return _ssh_cert_line(
        ca.private_key,
        public_key,
        SSH_CERT_HOST,
        key_id=host_id.encode("utf-8"),
        principals=encoded,
        valid_after=int(start.timestamp()),
        valid_before=int(end.timestamp()),
        extensions={},
    )


# OpenSSH's certificate format (PROTOCOL.certkeys) for an ECDSA P-256 key signed by an ECDSA P-256 CA, the only
# kinds the cluster issues. Written here rather than with cryptography's SSHCertificateBuilder, which re-parses
# every certificate it signs: a certificate is issued before every session, and this takes a fifth of the time.
# Tests check the result against the builder's, cryptography's parser and ssh-keygen.
SSH_CERT_USER = 1
SSH_CERT_HOST = 2
_SSH_ECDSA_P256 = b"ecdsa-sha2-nistp256"
_SSH_ECDSA_P256_CERT = b"ecdsa-sha2-nistp256-cert-v01@openssh.com"
_SSH_NONCE_BYTES = 32


def _sshstr(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _ssh_mpint(value: int) -> bytes:
    """RFC 4251 mpint of a non-negative integer: big-endian, shortest, a zero byte first if the top bit is set."""
    return _sshstr(value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b"")


def _ssh_p256_point(key: ec.EllipticCurvePublicKey) -> bytes:
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return _sshstr(b"nistp256") + _sshstr(point)


def _ssh_cert_line(
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    cert_type: int,
    *,
    key_id: bytes,
    principals: Sequence[bytes],
    valid_after: int,
    valid_before: int,
    extensions: Mapping[bytes, bytes],
) -> bytes:
    """A signed certificate line (``ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA…``): no critical options;
    extensions in the lexical order OpenSSH requires, each non-empty value wrapped in a string of its own."""
    if not principals or valid_after > valid_before:
        raise ValidationError("an SSH certificate needs principals and a validity that is not reversed")
    encoded_extensions = b"".join(
        _sshstr(name) + _sshstr(_sshstr(value) if value else b"") for name, value in sorted(extensions.items())
    )
    signed = b"".join(
        (
            _sshstr(_SSH_ECDSA_P256_CERT),
            _sshstr(secrets.token_bytes(_SSH_NONCE_BYTES)),
            _ssh_p256_point(public_key),
            secrets.randbits(64).to_bytes(8, "big"),
            cert_type.to_bytes(4, "big"),
            _sshstr(key_id),
            _sshstr(b"".join(_sshstr(principal) for principal in principals)),
            valid_after.to_bytes(8, "big"),
            valid_before.to_bytes(8, "big"),
            _sshstr(b""),  # critical options
            _sshstr(encoded_extensions),
            _sshstr(b""),  # reserved
            _sshstr(_sshstr(_SSH_ECDSA_P256) + _ssh_p256_point(ca_key.public_key())),
        )
    )
    r, s = decode_dss_signature(ca_key.sign(signed, ec.ECDSA(hashes.SHA256())))
    signature = _sshstr(_sshstr(_SSH_ECDSA_P256) + _sshstr(_ssh_mpint(r) + _ssh_mpint(s)))
    return _SSH_ECDSA_P256_CERT + b" " + base64.b64encode(signed + signature)


def _load_ssh_cert(cert_line: bytes | str, err: ErrorType) -> SSHCertificate:
    if isinstance(cert_line, str):
        cert_line = cert_line.encode("utf-8")
    if len(cert_line) > MAX_SSH_CERT_BYTES:
        raise err(f"SSH certificate is larger than {MAX_SSH_CERT_BYTES} bytes")
    try:
        loaded = load_ssh_public_identity(cert_line.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise err(f"not a valid SSH certificate ({exc})") from None
    if not isinstance(loaded, SSHCertificate):
        raise err("not an SSH certificate (a plain public key was given)")
    return loaded


def load_ssh_certificate(cert_line: bytes) -> SSHCertificate:
    """Parse (without verifying) an OpenSSH certificate line; ValidationError if it is not one."""
    return _load_ssh_cert(cert_line, ValidationError)


def _identity_from_ssh(cert: SSHCertificate, err: ErrorType) -> Identity:
    if cert.type != SSHCertificateType.USER:
        raise err("SSH certificate is a host certificate, not a user certificate")
    exts = cert.extensions
    username = _utf8(cert.key_id, "SSH certificate key id", err)
    principals = [_utf8(p, "SSH certificate principal", err) for p in cert.valid_principals]
    logins = tuple(p for p in principals if not p.startswith(NOLOGIN_PRINCIPAL_PREFIX))

    def text_ext(name: str) -> str | None:
        raw = exts.get(name.encode("ascii"))
        return None if raw is None else _utf8(raw, f"SSH certificate extension {name}", err)

    roles_raw = text_ext(EXT_ROLES)
    traits_raw = text_ext(EXT_TRAITS)
    # absent roles/traits mean none: we always write them, and absence can only grant less
    roles = () if roles_raw is None else _decode_roles(roles_raw, f"extension {EXT_ROLES}", err)
    traits = {} if traits_raw is None else _decode_traits(traits_raw, f"extension {EXT_TRAITS}", err)
    bot_name = text_ext(EXT_BOT_NAME)
    device_values = (
        text_ext(EXT_DEVICE_ID),
        text_ext(EXT_DEVICE_ASSET_TAG),
        text_ext(EXT_DEVICE_CREDENTIAL_ID),
    )
    proof_raw = text_ext(EXT_SESSION_PROOF)
    not_before = _from_timestamp(cert.valid_after, "valid-after", err)
    not_after = _from_timestamp(cert.valid_before, "valid-before", err)

    def make() -> Identity:
        device_id, asset_tag, credential_id = device_values
        device = None
        # any missing (or empty) device value: the device is unverified, not an error
        if device_id and asset_tag and credential_id:
            device = DeviceExtensions(device_id=device_id, asset_tag=asset_tag, credential_id=credential_id)
        return Identity(
            username=username,
            roles=roles,
            logins=logins,
            traits=traits,
            not_before=not_before,
            not_after=not_after,
            bot_name=bot_name,
            device=device,
            session_proof=_session_proof(proof_raw, device),
        )

    return _build_identity(err, "SSH certificate", make)


def _session_proof(raw: str | None, device: DeviceExtensions | None) -> SessionProof | None:
    """A proof is only worth something with the device it proves: without all three device values it is ignored,
    exactly as the device values are, so the certificate reads as not device-verified."""
    if raw is None or device is None:
        return None
    return SessionProof.from_json(raw)


def _ssh_key_blob(key: SSHPublicKeyTypes | SSHCertPublicKeyTypes) -> bytes:
    # the OpenSSH encoding is canonical, so equal keys give equal bytes whatever their type
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def verify_ssh_user_cert(cert_line: bytes, trusted_ca_keys: Sequence[str], now: datetime) -> Identity:
    """Verify an SSH user certificate against the trusted user CA keys (OpenSSH lines) at ``now``.

    Raises TrustError (one line) when it is not a user cert, not signed by a trusted key, has a bad
    signature, is outside its validity window, has critical options, or has malformed extensions.
    A missing device extension is not an error: ``identity.device`` is then None (unverified device).
    """
    now = require_utc(now, "now")
    if isinstance(trusted_ca_keys, str):
        raise ValidationError("trusted_ca_keys: expected a list of OpenSSH public key lines, got a string")
    trusted: set[bytes] = set()
    for i, line in enumerate(trusted_ca_keys):
        try:
            trusted.add(_ssh_key_blob(load_ssh_public_key(str(line).strip().encode("utf-8"))))
        except (ValueError, UnsupportedAlgorithm):
            raise ValidationError(f"trusted_ca_keys[{i}]: not an OpenSSH public key line") from None
    if not trusted:
        raise TrustError("no trusted user CA keys to verify the SSH certificate against")

    cert = _load_ssh_cert(cert_line, TrustError)
    if cert.type != SSHCertificateType.USER:
        raise TrustError("SSH certificate is a host certificate, not a user certificate")
    try:
        signer = cert.signature_key()
    except (ValueError, UnsupportedAlgorithm):
        raise TrustError("SSH certificate has an unreadable signing key") from None
    if _ssh_key_blob(signer) not in trusted:
        raise TrustError("SSH certificate is not signed by a trusted user CA")
    try:
        cert.verify_cert_signature()
    except (InvalidSignature, ValueError):
        raise TrustError("SSH certificate signature is invalid") from None
    if cert.critical_options:
        # OpenSSH semantics: an unrecognised critical option must make the certificate unusable
        names = ", ".join(sorted(n.decode("utf-8", "replace") for n in cert.critical_options))
        raise TrustError(f"SSH certificate has unsupported critical options: {names}")
    ts = now.timestamp()
    if ts < cert.valid_after:
        start = _from_timestamp(cert.valid_after, "valid-after", TrustError)
        raise TrustError(f"SSH certificate is not valid until {_fmt(start)}")
    if ts >= cert.valid_before:
        end = _from_timestamp(cert.valid_before, "valid-before", TrustError)
        raise TrustError(f"SSH certificate expired at {_fmt(end)}")
    return _identity_from_ssh(cert, TrustError)


def identity_from_ssh_cert(cert_line: bytes) -> Identity:
    """Decode an SSH user certificate WITHOUT VERIFYING IT.

    For display only (``tsh status``). Nothing here checks the signature, the CA or the validity window:
    never use the result to grant or deny anything; use :func:`verify_ssh_user_cert` for that.
    Raises ValidationError if the line is not a decodable SSH user certificate.
    """
    return _identity_from_ssh(_load_ssh_cert(cert_line, ValidationError), ValidationError)


def ssh_cert_extension_names(cert_line: bytes) -> tuple[str, ...]:
    """Sorted extension names of an SSH certificate (unverified; for display)."""
    cert = _load_ssh_cert(cert_line, ValidationError)
    return tuple(sorted(name.decode("utf-8", "replace") for name in cert.extensions))


# --------------------------------------------------------------------------- X.509


def certificate_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


#: the extensions every leaf certificate carries whatever its key, EKU and issuer
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_KEY_USAGE = key_usage("digital_signature")


@functools.lru_cache(maxsize=32)
def _issuer_parts(ca_certificate: x509.Certificate) -> tuple[x509.Name, x509.AuthorityKeyIdentifier, datetime]:
    """What a leaf takes from its CA's certificate (each read parses it): its subject, the authority key
    identifier and its expiry. A cluster has a handful of CA certificates; a certificate is hashable by value."""
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            require_p256_public_key(ca_certificate.public_key(), "CA certificate key")
        )
    return ca_certificate.subject, aki, ca_certificate.not_valid_after_utc


def _leaf_builder(
    ca: CertAuthority,
    public_key: ec.EllipticCurvePublicKey,
    subject: x509.Name,
    not_before: datetime,
    not_after: datetime,
    eku: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    issuer, aki, ca_not_after = _issuer_parts(ca.certificate)
    if not_after > ca_not_after:
        # the chain would not verify past the CA's own expiry
        raise ValidationError(f"not_after: {_fmt(not_after)} is after the {ca.kind} CA expires")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def issue_x509_client_cert(
    ca: CertAuthority, public_key: ec.EllipticCurvePublicKey, identity: Identity
) -> x509.Certificate:
    """An X.509 client certificate (clientAuth) carrying ``identity`` in its subject (see identity.py)."""
    _check_ca_kind(ca, "user", "X.509 client certificates")
    public_key = require_p256_public_key(public_key, "subject public key")
    if len(identity.username) > _X509_CN_MAX:
        raise ValidationError(f"username: at most {_X509_CN_MAX} characters fit in an X.509 certificate")
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, identity.username)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, role) for role in identity.roles]
    attrs += [x509.NameAttribute(OID_LOGINS, login) for login in identity.logins]
    attrs.append(x509.NameAttribute(OID_TRAITS, _traits_json(identity.traits)))
    if identity.bot_name is not None:
        attrs.append(x509.NameAttribute(OID_BOT_NAME, identity.bot_name))
    if identity.device is not None:
        attrs += [
            x509.NameAttribute(OID_DEVICE_ID, identity.device.device_id),
            x509.NameAttribute(OID_DEVICE_ASSET_TAG, identity.device.asset_tag),
            x509.NameAttribute(OID_DEVICE_CREDENTIAL_ID, identity.device.credential_id),
        ]
    if identity.session_proof is not None:
        attrs.append(x509.NameAttribute(OID_SESSION_PROOF, identity.session_proof.to_json()))
    route = identity.db_route
    if route is not None:
        attrs += [
            x509.NameAttribute(OID_DB_SERVICE, route.service_name),
            x509.NameAttribute(OID_DB_PROTOCOL, route.protocol),
        ]
        attrs += [
            x509.NameAttribute(oid, value)
            for oid, value in ((OID_DB_USER, route.username), (OID_DB_NAME, route.database))
            if value
        ]
    builder = _leaf_builder(
        ca,
        public_key,
        x509.Name(attrs),
        identity.not_before,
        identity.not_after,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return builder.sign(ca.private_key, hashes.SHA256())


def issue_tls_server_cert(
    ca: CertAuthority,
    public_key: ec.EllipticCurvePublicKey,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A TLS server certificate (serverAuth) for the given DNS names and IP addresses, from the host CA."""
    _check_ca_kind(ca, "host", "TLS server certificates")
    public_key = require_p256_public_key(public_key, "subject public key")
    start, end = _validity(not_before, not_after)
    if isinstance(dns_names, str) or isinstance(ip_addresses, str):
        raise ValidationError("dns_names/ip_addresses: expected lists of strings, got a string")
    sans: list[x509.GeneralName] = []
    for name in dns_names:
        if not isinstance(name, str) or not name or not name.isascii() or any(c.isspace() for c in name):
            raise ValidationError(f"dns_names: {name!r} is not an ASCII host name (use IDNA A-labels)")
        sans.append(x509.DNSName(name))
    for ip in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ValidationError(f"ip_addresses: {ip!r} is not an IP address") from None
    if not sans:
        raise ValidationError("dns_names/ip_addresses: at least one name is required")
    first = ([*dns_names, *ip_addresses])[0]
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cluster_name)]
    # clients match on the SAN; the CN is only a readable label and is capped at 64 characters
    if len(first) <= _X509_CN_MAX:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, first))
    builder = _leaf_builder(ca, public_key, x509.Name(attrs), start, end, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.private_key, hashes.SHA256())


def _single_text(name: x509.Name, oid: x509.ObjectIdentifier, what: str, err: ErrorType) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) > 1:
        # two values for one field is ambiguous; never pick one
        raise err(f"X.509 certificate subject has {len(attrs)} {what} attributes")
    if not attrs:
        return None
    value = attrs[0].value
    if not isinstance(value, str):
        raise err(f"X.509 certificate subject {what} is not a string")
    return value


def _all_text(name: x509.Name, oid: x509.ObjectIdentifier, what: str, err: ErrorType) -> tuple[str, ...]:
    out: list[str] = []
    for attr in name.get_attributes_for_oid(oid):
        if not isinstance(attr.value, str):
            raise err(f"X.509 certificate subject {what} is not a string")
        out.append(attr.value)
    return tuple(out)


def _identity_from_x509(cert: x509.Certificate, err: ErrorType) -> Identity:
    subject = cert.subject
    username = _single_text(subject, NameOID.COMMON_NAME, "CN", err)
    if username is None:
        raise err("X.509 certificate subject has no CN")
    roles = _all_text(subject, NameOID.ORGANIZATION_NAME, "O (role)", err)
    logins = _all_text(subject, OID_LOGINS, "login", err)
    traits_raw = _single_text(subject, OID_TRAITS, "traits", err)
    traits = {} if traits_raw is None else _decode_traits(traits_raw, "X.509 traits attribute", err)
    bot_name = _single_text(subject, OID_BOT_NAME, "bot name", err)
    device_id = _single_text(subject, OID_DEVICE_ID, "device id", err)
    asset_tag = _single_text(subject, OID_DEVICE_ASSET_TAG, "device asset tag", err)
    credential_id = _single_text(subject, OID_DEVICE_CREDENTIAL_ID, "device credential id", err)
    proof_raw = _single_text(subject, OID_SESSION_PROOF, "session proof", err)
    db_service = _single_text(subject, OID_DB_SERVICE, "database service", err)
    db_protocol = _single_text(subject, OID_DB_PROTOCOL, "database protocol", err)
    db_user = _single_text(subject, OID_DB_USER, "database user", err)
    db_name = _single_text(subject, OID_DB_NAME, "database name", err)

    def make() -> Identity:
        device = None
        # any missing device value: the device is unverified, not an error
        if device_id and asset_tag and credential_id:
            device = DeviceExtensions(device_id=device_id, asset_tag=asset_tag, credential_id=credential_id)
        return Identity(
            username=username,
            roles=roles,
            logins=logins,
            traits=traits,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            bot_name=bot_name,
            device=device,
            session_proof=_session_proof(proof_raw, device),
            db_route=(
                None
                if db_service is None and db_protocol is None
                else DatabaseRoute(db_service or "", db_protocol or "", db_user or "", db_name or "")
            ),
        )

    return _build_identity(err, "X.509 certificate", make)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def verify_x509_client_cert(cert: x509.Certificate, ca_cert: x509.Certificate, now: datetime) -> Identity:
    """Verify an X.509 client certificate issued directly by ``ca_cert`` (the user CA) at ``now``.

    Raises TrustError (one line) on a wrong issuer or signature, a validity window not covering ``now``
    (the leaf's or the CA's), a missing clientAuth EKU, a CA leaf, or a malformed subject.
    A missing device attribute is not an error: ``identity.device`` is then None.
    """
    now = require_utc(now, "now")
    try:
        return _verify_x509_client_cert(cert, ca_cert, now)
    except ValueError as exc:
        # cryptography parses extensions and names lazily; a malformed one surfaces here
        raise TrustError(f"X.509 certificate is malformed ({exc})") from None


def _verify_x509_client_cert(cert: x509.Certificate, ca_cert: x509.Certificate, now: datetime) -> Identity:
    if not _is_ca(ca_cert):
        raise TrustError("the certificate given as the user CA is not a CA certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise TrustError(
            f"X.509 certificate is not signed by the user CA ({ca_cert.subject.rfc4514_string()})"
        ) from None
    if now < ca_cert.not_valid_before_utc or now > ca_cert.not_valid_after_utc:
        raise TrustError("the user CA certificate is outside its validity period")
    if now < cert.not_valid_before_utc:
        raise TrustError(f"X.509 certificate is not valid until {_fmt(cert.not_valid_before_utc)}")
    if now > cert.not_valid_after_utc:
        raise TrustError(f"X.509 certificate expired at {_fmt(cert.not_valid_after_utc)}")
    if _is_ca(cert):
        raise TrustError("X.509 certificate is a CA certificate, not a client certificate")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise TrustError("X.509 certificate has no extended key usage (clientAuth required)") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise TrustError("X.509 certificate is not valid for client authentication (no clientAuth EKU)")
    return _identity_from_x509(cert, TrustError)


def identity_from_x509_cert(cert: x509.Certificate) -> Identity:
    """Decode an X.509 client certificate WITHOUT VERIFYING IT. Display only, never for decisions."""
    try:
        return _identity_from_x509(cert, ValidationError)
    except ValueError as exc:
        raise ValidationError(f"X.509 certificate is malformed ({exc})") from None
