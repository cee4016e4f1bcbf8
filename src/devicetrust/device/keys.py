"""The device's side of the ceremonies: one key backend per kind of secure hardware.

- ``tpm``: Linux/Windows. An attestation key (AK) in the TPM answers credential activation and quotes.
- ``secure-enclave``: macOS. A P-256 key that never leaves the Secure Enclave signs challenges.
- ``unsafe-software``: development and benchmarks only. A P-256 key in a file; the server refuses it unless
  ``device_trust.allow_unsafe_software_keys`` is set.

Per-user state lives under ``$TSH_HOME/device/`` (files 0600).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust.ceremony.ceremonies import QUOTE_PCRS
from devicetrust.ceremony.messages import (
    Challenge,
    ChallengeResponse,
    KeyEnrollPayload,
    QuoteResponse,
    TPMEnrollPayload,
)
from devicetrust.crypto.keys import generate_private_key, load_private_key_pem, private_key_to_pem
from devicetrust.device.device_key import DeviceKey, DeviceKeyError, EnrollPayload
from devicetrust.errors import ValidationError
from devicetrust.files import write_atomic

if TYPE_CHECKING:
    from devicetrust.device.tpm import AttestationKey

ENV_TPM_TCTI = "DEVICETRUST_TPM_TCTI"
ENV_TPM_EVENT_LOG = "DEVICETRUST_TPM_EVENT_LOG"
DEFAULT_TPM_TCTI = "device:/dev/tpmrm0"
#: Where Linux exposes the firmware's TCG event log (root-only on most distributions).
LINUX_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
BACKENDS = ("tpm", "secure-enclave", "unsafe-software")


class UnsafeSoftwareKey(DeviceKey):
    """A P-256 key in a file: anyone who copies the file becomes the device. Never for real use."""

    name = "unsafe-software"
    attestation_type = "unsafe_software"

    def _key(self) -> ec.EllipticCurvePrivateKey:
        path = self.state_dir / "unsafe-software-key.pem"
        if path.exists():
            return load_private_key_pem(path.read_bytes())
        key = generate_private_key()
        write_atomic(path, private_key_to_pem(key))
        return key

    def _sign(self, challenge: Challenge) -> ChallengeResponse:
        if not challenge.challenge:
            raise DeviceKeyError("the server sent no challenge for a software key")
        signature = self._key().sign(challenge.challenge, ec.ECDSA(hashes.SHA256()))
        return ChallengeResponse(challenge.ceremony_id, signature=signature)

    def enroll_payload(self) -> EnrollPayload:
        public_der = (
            self._key()
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return {"key": KeyEnrollPayload(public_der, self.attestation_type).to_json()}

    def answer_enrollment(self, challenge: Challenge) -> ChallengeResponse:
        return self._sign(challenge)

    def answer_authentication(self, challenge: Challenge) -> ChallengeResponse:
        return self._sign(challenge)


class TPMKey(DeviceKey):
    """An ECC P-256 attestation key under the TPM's SRK; its wrapped blobs are kept in the state dir."""

    name = "tpm"

    def __init__(self, state_dir: Path, tcti: str | None = None) -> None:
        super().__init__(state_dir)
        # Imported here: tpm2-pytss needs the TSS libraries, which only TPM users must have.
        from devicetrust.device.tpm import TPMDevice

        self.tcti = tcti or os.environ.get(ENV_TPM_TCTI) or DEFAULT_TPM_TCTI
        self._tpm = TPMDevice(self.tcti)
        self._ak_file = state_dir / "tpm-ak.json"
        self._ak: AttestationKey | None = None

    def _attestation_key(self) -> AttestationKey:
        """The AK's blobs, read (or created) once per ceremony rather than at every step."""
        if self._ak is None:
            self._ak = self._tpm.load_or_create_ak(self._ak_file)
        return self._ak

    def close(self) -> None:
        self._tpm.close()

    def enroll_payload(self) -> EnrollPayload:
        endorsement = self._tpm.endorsement()
        ak = self._attestation_key()
        payload = TPMEnrollPayload(
            ek_cert_der=endorsement.ek_cert_der,
            ek_public_der=endorsement.ek_public_der,
            ak_public=ak.public_area,
        )
        return {"tpm": payload.to_json()}

    def _quote(self, challenge: Challenge) -> QuoteResponse:
        if not challenge.nonce:
            raise DeviceKeyError("the server sent no nonce for a TPM quote")
        ak = self._attestation_key()
        quote = self._tpm.quote(ak, challenge.nonce, QUOTE_PCRS)
        return QuoteResponse(quote.attest, quote.signature, dict(quote.pcr_values), self._event_log())

    def _event_log(self) -> bytes:
        configured = os.environ.get(ENV_TPM_EVENT_LOG)
        path = Path(configured) if configured else LINUX_EVENT_LOG if self.tcti.startswith("device:") else None
        if path is None:
            return b""
        try:
            return path.read_bytes()
        except OSError:
            # Linux often gives no readable log; the server accepts and records an empty one.
            return b""

    def answer_enrollment(self, challenge: Challenge) -> ChallengeResponse:
        ak = self._attestation_key()
        secret = self._tpm.activate_credential(ak, challenge.credential_blob, challenge.encrypted_secret)
        return ChallengeResponse(challenge.ceremony_id, activated_secret=secret, quote=self._quote(challenge))

    def answer_authentication(self, challenge: Challenge) -> ChallengeResponse:
        return ChallengeResponse(challenge.ceremony_id, quote=self._quote(challenge))


def default_backend() -> str:
    return "secure-enclave" if sys.platform == "darwin" else "tpm"


def open_device_key(backend: str | None, state_dir: Path) -> DeviceKey:
    """The key backend by name (``--device-key``), else the platform's secure hardware."""
    backend = backend or default_backend()
    if backend == "unsafe-software":
        return UnsafeSoftwareKey(state_dir)
    if backend == "tpm":
        return TPMKey(state_dir)
    if backend == "secure-enclave":
        platform_name: str = sys.platform
        if platform_name != "darwin":
            raise DeviceKeyError("the Secure Enclave is only available on macOS")
        from devicetrust.device.secure_enclave import SecureEnclaveKey

        return SecureEnclaveKey(state_dir)
    raise ValidationError(f"unknown device key backend {backend!r} (expected one of {', '.join(BACKENDS)})")
