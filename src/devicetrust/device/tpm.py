"""The device's TPM 2.0, through tpm2-pytss (ESAPI): endorsement, attestation key, credential activation, quotes.

Works against swtpm (``swtpm:host=127.0.0.1,port=P``) and Linux hardware (``device:/dev/tpmrm0``). swtpm has only
three transient object slots and no resource manager, and objects outlive the connection there, so every key and
session loaded here is flushed before the method returns — the AK is reloaded from its blobs for each use.

All tpm2-pytss values stay inside this module; callers see bytes and :class:`TPMError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_SE,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPMA_OBJECT,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_CONTEXT,
    TPMT_HA,
    TPMT_SYM_DEF,
    TPMU_HA,
    TSS2_Exception,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from devicetrust.attestation import (
    MAX_NONCE_BYTES,
    MAX_PCR_INDEX,
    PCR_DIGEST_BYTES,
    AttestationError,
    check_ak,
    parse_attest,
    parse_tpm2b_public,
    parse_tpmt_public,
    pcr_digest,
)
from devicetrust.errors import DevicetrustError
from devicetrust.files import write_atomic

__all__ = [
    "AK_STATE_VERSION",
    "DEFAULT_QUOTE_PCRS",
    "EK_CERT_NV_INDEX_RSA2048",
    "EK_TEMPLATES",
    "EK_TEMPLATE_RSA2048",
    "SRK_HANDLE",
    "AttestationKey",
    "EndorsementInfo",
    "Quote",
    "TPMDevice",
    "TPMError",
    "ak_context_file",
]

logger = logging.getLogger(__name__)

#: the storage root key every Linux TPM stack (and swtpm_setup --create-spk) persists here
SRK_HANDLE: Final = 0x81000001
#: TCG EK Credential Profile: the RSA-2048 EK certificate (low range), the one nearly every TPM ships
EK_CERT_NV_INDEX_RSA2048: Final = 0x01C00002
#: tpm2-pytss EK template names (TCG EK Credential Profile templates L-1, L-2, H-3); RSA-2048 is the one nearly
#: every TPM has a certificate for, swtpm also certifies the P-384 one
EK_TEMPLATE_RSA2048: Final = "EK-RSA2048"
EK_TEMPLATES: Final = (EK_TEMPLATE_RSA2048, "EK-ECC256", "EK-HIGH-ECC384")
DEFAULT_QUOTE_PCRS: Final = tuple(range(8))
#: restricted ECDSA-P256 signing key; ":null" because a signing key has no symmetric algorithm
AK_ALGORITHM: Final = "ecc256:ecdsa-sha256:null"
AK_ATTRIBUTES: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.NODA
)
AK_STATE_VERSION: Final = 1
#: the AK state file holds two small TPM blobs; refuse to read anything big
MAX_AK_STATE_BYTES: Final = 64 * 1024
#: TPM2_PCR_Read returns at most 8 digests per call
PCR_READ_BATCH: Final = 8
#: PCRs can move between TPM2_Quote and TPM2_PCR_Read; retry that many times
MAX_QUOTE_ATTEMPTS: Final = 3
#: a saved AK context file starts with this, then the SHA-256 of the AK public blob it was saved for
AK_CONTEXT_MAGIC: Final = b"devicetrust AK context 1\n"
#: the TSS2_RC of a handle that does not exist (TPM_RC_HANDLE for the first handle)
_RC_HANDLE_1: Final = 0x18B


class TPMError(DevicetrustError):
    """The TPM could not be reached or refused an operation. One line, safe to show."""

    kind = "tpm"


@dataclass(frozen=True)
class EndorsementInfo:
    #: DER as stored in NV (may carry vendor padding); None when the TPM has no RSA EK certificate
    ek_cert_der: bytes | None
    #: the EK public key, SubjectPublicKeyInfo DER
    ek_public_der: bytes
    #: the EK's TPMT_PUBLIC, for servers that MakeCredential from the exact template
    ek_public_area: bytes


@dataclass(frozen=True)
class AttestationKey:
    """An AK as blobs: the private part is wrapped by this TPM's SRK and useless elsewhere."""

    #: marshalled TPM2B_PRIVATE
    private_blob: bytes
    #: marshalled TPM2B_PUBLIC
    public_blob: bytes
    #: where the TPM's saved context of the loaded AK is kept: loading that (TPM2_ContextLoad) costs a fraction of
    #: TPM2_Load, whose name computation in the TSS dominates a quote. It only loads in this TPM, and only until
    #: the TPM resets; then the AK is loaded from its blobs again and the context saved anew.
    context_file: Path | None = field(default=None, compare=False)

    @property
    def public_area(self) -> bytes:
        """The marshalled TPMT_PUBLIC (what the server parses and names)."""
        return self.public_blob[2:]

    @property
    def name(self) -> bytes:
        return parse_tpm2b_public(self.public_blob).name()


@dataclass(frozen=True)
class Quote:
    #: TPMS_ATTEST as signed
    attest: bytes
    #: marshalled TPMT_SIGNATURE
    signature: bytes
    pcr_values: Mapping[int, bytes]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@contextmanager
def _tpm_call(action: str) -> Iterator[None]:
    """Turn tpm2-pytss failures into TPMError("<action>: <reason>")."""
    try:
        yield
    except TSS2_Exception as exc:
        raise TPMError(f"TPM {action} failed: {_one_line(exc)}") from exc


def _unmarshal(cls: Any, data: bytes, what: str) -> Any:
    """A size-prefixed TPM2B from bytes that must be consumed exactly."""
    try:
        value, used = cls.unmarshal(data)
    except TSS2_Exception:
        raise TPMError(f"malformed {what}") from None
    if used != len(data):
        raise TPMError(f"malformed {what}: trailing bytes")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class TPMDevice:
    """One connection to a TPM. Use as a context manager; every method flushes what it loads."""

    def __init__(self, tcti: str) -> None:
        if not tcti:
            raise TPMError("a TCTI is required (e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321)")
        # libtss2 prints every TPM error response to stderr otherwise; errors reach the caller as TPMError.
        os.environ.setdefault("TSS2_LOG", "all+none")
        self.tcti = tcti
        try:
            self._esapi: Any = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TPMError(f"cannot open the TPM at {tcti}: {_one_line(exc)}") from exc

    def __enter__(self) -> TPMDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._esapi is not None:
            self._esapi.close()
            self._esapi = None

    @property
    def _ctx(self) -> Any:
        if self._esapi is None:
            raise TPMError("the TPM connection is closed")
        return self._esapi

    @contextmanager
    def _flushing(self, handle: Any) -> Iterator[Any]:
        """Flush a transient object or session on the way out, whatever happens inside."""
        ok = False
        try:
            yield handle
            ok = True
        finally:
            try:
                self._ctx.flush_context(handle)
            except TSS2_Exception as exc:
                if ok:
                    raise TPMError(f"TPM flush failed: {_one_line(exc)}") from exc
                logger.debug("flush after an error failed: %s", _one_line(exc))

    # -- endorsement -------------------------------------------------------------------------------------------

    def _nv_reader(self) -> Any:
        with _tpm_call("NV read"):
            return NVReadEK(self._ctx)

    def _ek_template(self, ek_type: str) -> tuple[bytes | None, Any]:
        if ek_type not in EK_TEMPLATES:
            raise TPMError(f"unknown EK type {ek_type!r} (one of {', '.join(EK_TEMPLATES)})")
        reader = self._nv_reader()
        try:
            with _tpm_call("EK template"):
                cert, template = create_ek_template(ek_type, reader)
        except NoSuchIndex:  # its __str__ is broken in tpm2-pytss 3.0.0: never format it
            raise TPMError("TPM EK template refers to a missing NV index") from None
        return (bytes(cert) if cert else None), template

    @contextmanager
    def _ek(self, ek_type: str) -> Iterator[tuple[Any, Any, bytes | None]]:
        """(handle, TPM2B_PUBLIC, certificate) of the EK, recreated from its template (deterministic: the same
        key every time), flushed on exit."""
        cert, template = self._ek_template(ek_type)
        with _tpm_call("EK creation"):
            handle, public, *_ = self._ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        with self._flushing(handle):
            yield handle, public, cert

    def endorsement(self, ek_type: str = EK_TEMPLATE_RSA2048) -> EndorsementInfo:
        """The EK certificate (RSA-2048: NV 0x01C00002) if the TPM has one, and the EK public key."""
        with self._ek(ek_type) as (_, public, cert):
            pass  # only the public part is needed: flush at once
        area = bytes(public.publicArea.marshal())
        try:
            key = parse_tpmt_public(area).public_key()
        except AttestationError as exc:
            raise TPMError(f"the TPM returned an unusable EK: {exc}") from None
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return EndorsementInfo(ek_cert_der=cert, ek_public_der=der, ek_public_area=area)

    # -- attestation key ---------------------------------------------------------------------------------------

    @contextmanager
    def _srk(self) -> Iterator[Any]:
        try:
            with _tpm_call("SRK lookup"):
                handle = self._ctx.tr_from_tpmpublic(SRK_HANDLE)
        except TPMError as exc:
            cause = exc.__cause__
            if isinstance(cause, TSS2_Exception) and cause.rc == _RC_HANDLE_1:
                raise TPMError(
                    f"the TPM has no storage root key at 0x{SRK_HANDLE:08x}; provision one "
                    "(tpm2_createprimary -C o -g sha256 -G rsa2048 + tpm2_evictcontrol)"
                ) from None
            raise
        try:
            yield handle
        finally:
            self._ctx.tr_close(handle)

    @contextmanager
    def _loaded_ak(self, ak: AttestationKey) -> Iterator[Any]:
        handle = self._load_saved_context(ak)
        from_blobs = handle is None
        if handle is None:
            private = _unmarshal(TPM2B_PRIVATE, ak.private_blob, "AK private blob")
            public = _unmarshal(TPM2B_PUBLIC, ak.public_blob, "AK public blob")
            with self._srk() as srk, _tpm_call("AK load"):
                handle = self._ctx.load(srk, private, public)
        with self._flushing(handle):
            if from_blobs:
                self._save_context(ak, handle)
            yield handle

    def _load_saved_context(self, ak: AttestationKey) -> Any | None:
        """The AK loaded from its saved context, or None when there is none for this AK or the TPM refuses it
        (reset since, another TPM, a damaged file): the caller loads the blobs then. A context that loads but is
        not this AK's signs quotes the server rejects: nothing here is trusted beyond that."""
        if ak.context_file is None:
            return None
        try:
            raw = ak.context_file.read_bytes()
        except OSError:
            return None
        prefix = AK_CONTEXT_MAGIC + hashlib.sha256(ak.public_blob).digest()
        if len(raw) > MAX_AK_STATE_BYTES or not raw.startswith(prefix):
            return None
        try:
            context, used = TPMS_CONTEXT.unmarshal(raw[len(prefix) :])
            if used != len(raw) - len(prefix):
                return None
            return self._ctx.context_load(context)
        except TSS2_Exception as exc:
            logger.debug("the saved AK context does not load (%s); loading the AK from its blobs", _one_line(exc))
            return None

    def _save_context(self, ak: AttestationKey, handle: Any) -> None:
        """Keep the loaded AK's context for the next load; a failure only costs the next load its speed."""
        if ak.context_file is None:
            return
        try:
            context = self._ctx.context_save(handle)
            data = AK_CONTEXT_MAGIC + hashlib.sha256(ak.public_blob).digest() + bytes(context.marshal())
            write_atomic(ak.context_file, data, mode=0o600)
        except (TSS2_Exception, OSError) as exc:
            logger.debug("cannot keep the AK context: %s", _one_line(exc))

    def create_ak(self) -> AttestationKey:
        """A new ECDSA-P256 restricted signing key under the SRK (not persisted: see load_or_create_ak)."""
        template = TPM2B_PUBLIC.parse(AK_ALGORITHM, objectAttributes=AK_ATTRIBUTES, nameAlg="sha256")
        with self._srk() as srk, _tpm_call("AK creation"):
            private, public, *_ = self._ctx.create(srk, None, template)
        return AttestationKey(private_blob=bytes(private.marshal()), public_blob=bytes(public.marshal()))

    def load_or_create_ak(self, state_file: Path) -> AttestationKey:
        """The AK saved in ``state_file`` (checked to load in this TPM), or a new one saved there (0600, atomic)."""
        if state_file.exists():
            ak = _read_ak_state(state_file)
            try:
                with self._loaded_ak(ak):  # proves the blobs belong to this TPM's SRK
                    pass
            except TPMError as exc:
                raise TPMError(f"the AK in {state_file} does not load in this TPM ({exc})") from None
            return ak
        ak = replace(self.create_ak(), context_file=ak_context_file(state_file))
        state = {"version": AK_STATE_VERSION, "private": _b64(ak.private_blob), "public": _b64(ak.public_blob)}
        write_atomic(state_file, json.dumps(state, indent=2).encode() + b"\n", mode=0o600)
        return ak

    # -- credential activation ---------------------------------------------------------------------------------

    def activate_credential(
        self,
        ak: AttestationKey,
        credential_blob: bytes,
        encrypted_secret: bytes,
        *,
        ek_type: str = EK_TEMPLATE_RSA2048,
    ) -> bytes:
        """TPM2_ActivateCredential: recover the server's secret, proving the AK lives in the TPM holding the EK.

        ``credential_blob`` / ``encrypted_secret`` are the marshalled TPM2B_ID_OBJECT / TPM2B_ENCRYPTED_SECRET.
        """
        blob = _unmarshal(TPM2B_ID_OBJECT, credential_blob, "credential blob")
        secret = _unmarshal(TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted secret")
        ctx = self._ctx
        with self._loaded_ak(ak) as ak_handle, self._ek(ek_type) as (ek_handle, ek_public, _):
            if ek_public.publicArea.objectAttributes & TPMA_OBJECT.USERWITHAUTH:
                # High-range EKs (H-3) allow their (empty) password for the user role ActivateCredential needs.
                with _tpm_call("credential activation"):
                    recovered = ctx.activate_credential(
                        ak_handle, ek_handle, blob, secret, session1=ESYS_TR.PASSWORD, session2=ESYS_TR.PASSWORD
                    )
                return bytes(recovered)
            # The low-range EKs' policy is PolicySecret(TPM_RH_ENDORSEMENT): a fresh policy session per use.
            with _tpm_call("EK policy session"):
                session = ctx.start_auth_session(
                    ESYS_TR.NONE,
                    ESYS_TR.NONE,
                    TPM2_SE.POLICY,
                    TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                    TPM2_ALG.SHA256,
                )
            with self._flushing(session):
                with _tpm_call("EK policy"):
                    ctx.policy_secret(ESYS_TR.ENDORSEMENT, session)
                with _tpm_call("credential activation"):
                    recovered = ctx.activate_credential(
                        ak_handle, ek_handle, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
                    )
        return bytes(recovered)

    # -- PCRs and quotes ---------------------------------------------------------------------------------------

    def read_pcrs(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        """SHA-256 bank values of ``pcrs``."""
        indices = _check_pcrs(pcrs)
        values: dict[int, bytes] = {}
        for start in range(0, len(indices), PCR_READ_BATCH):
            batch = indices[start : start + PCR_READ_BATCH]
            with _tpm_call("PCR read"):
                _, _, digests = self._ctx.pcr_read(_selection(batch))
            got = _digest_list(digests)
            if len(got) != len(batch):
                raise TPMError("TPM PCR read failed: the SHA-256 bank is not active")
            values.update(zip(batch, got, strict=True))
        return values

    def quote(self, ak: AttestationKey, nonce: bytes, pcrs: Sequence[int] = DEFAULT_QUOTE_PCRS) -> Quote:
        """TPM2_Quote over the SHA-256 ``pcrs`` with ``nonce`` as qualifying data, plus the PCR values it covers."""
        if not nonce or len(nonce) > MAX_NONCE_BYTES:
            raise TPMError(f"quote nonce must be 1–{MAX_NONCE_BYTES} bytes")
        indices = _check_pcrs(pcrs)
        with self._loaded_ak(ak) as handle:
            for _ in range(MAX_QUOTE_ATTEMPTS):
                with _tpm_call("quote"):
                    attest, signature = self._ctx.quote(handle, _selection(indices), nonce)
                attest_bytes, signature_bytes = bytes(attest), bytes(signature.marshal())
                values = self.read_pcrs(indices)
                # A PCR extended between the quote and the read would make the server reject it: retry.
                if parse_attest(attest_bytes).pcr_digest == pcr_digest(indices, values):
                    return Quote(attest_bytes, signature_bytes, values)
        raise TPMError("PCRs kept changing while quoting; try again")

    def extend_pcr(self, index: int, digest: bytes) -> None:
        """Extend the SHA-256 bank of PCR ``index`` with ``digest`` (used to simulate a measured boot)."""
        _check_pcrs([index])
        if len(digest) != PCR_DIGEST_BYTES:
            raise TPMError(f"a SHA-256 PCR digest is {PCR_DIGEST_BYTES} bytes")
        values = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))])
        with _tpm_call("PCR extend"):
            self._ctx.pcr_extend(ESYS_TR.PCR0 + index, values)


def _check_pcrs(pcrs: Sequence[int]) -> list[int]:
    indices = sorted(set(pcrs))
    if not indices or len(indices) != len(pcrs) or indices[0] < 0 or indices[-1] > MAX_PCR_INDEX:
        raise TPMError(f"PCR indices must be distinct and within 0–{MAX_PCR_INDEX}")
    return indices


_selections: dict[tuple[int, ...], Any] = {}


def _selection(pcrs: Sequence[int]) -> Any:
    """The SHA-256 TPML_PCR_SELECTION of ``pcrs``, built once (parsing its text form is a measurable part of a
    quote)."""
    key = tuple(pcrs)
    selection = _selections.get(key)
    if selection is None:
        selection = _selections[key] = TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(i) for i in key))
    return selection


def _digest_list(digests: Any) -> list[bytes]:
    """The digests of a TPML_DIGEST, read from its marshalled form (indexing the tpm2-pytss object costs about a
    tenth of a millisecond per digest)."""
    raw = bytes(digests.marshal())
    try:
        (count,) = struct.unpack_from(">I", raw)
        values, offset = [], 4
        for _ in range(count):
            (size,) = struct.unpack_from(">H", raw, offset)
            offset += 2
            if offset + size > len(raw):
                raise struct.error("digest past the end")
            values.append(raw[offset : offset + size])
            offset += size
    except struct.error:
        raise TPMError("the TPM returned a malformed digest list") from None
    return values


def ak_context_file(state_file: Path) -> Path:
    """Where the saved context of the AK kept in ``state_file`` lives (beside it)."""
    return state_file.with_name(state_file.name + ".context")


def _read_ak_state(state_file: Path) -> AttestationKey:
    """Parse the AK state file; the public part must be an acceptable AK (so a corrupted file fails here)."""
    try:
        raw = state_file.read_bytes()
    except OSError as exc:
        raise TPMError(f"cannot read the AK state file {state_file}: {exc.strerror}") from None
    if len(raw) > MAX_AK_STATE_BYTES:
        raise TPMError(f"AK state file {state_file} is too large")
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or state.get("version") != AK_STATE_VERSION:
            raise ValueError("version")
        ak = AttestationKey(
            private_blob=base64.b64decode(state["private"], validate=True),
            public_blob=base64.b64decode(state["public"], validate=True),
            context_file=ak_context_file(state_file),
        )
        check_ak(parse_tpm2b_public(ak.public_blob))
    except (ValueError, KeyError, TypeError, binascii.Error, AttestationError):
        raise TPMError(f"AK state file {state_file} is corrupt; remove it to create a new key") from None
    return ak
