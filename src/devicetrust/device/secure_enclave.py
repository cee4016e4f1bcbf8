"""macOS Secure Enclave device key, through pyobjc's Security framework (darwin only).

The key is created inside the Secure Enclave (kSecAttrTokenIDSecureEnclave), is not exportable, and is found
again by its application tag. Only this adapter touches pyobjc; the protocol around it (a P-256 ECDSA signature
over SHA-256 of the server's 32-byte challenge) is the same as the software key's and is tested through that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust.ceremony.messages import Challenge, ChallengeResponse, KeyEnrollPayload
from devicetrust.device.device_key import DeviceKey, DeviceKeyError, EnrollPayload

#: Keychain application tag of the device key (one per macOS user, like Teleport's).
KEY_TAG = b"dev.devicetrust.device-key"


def _security() -> Any:
    try:
        import Security  # type: ignore[import-not-found]  # pyobjc-framework-Security, darwin only
    except ImportError:
        raise DeviceKeyError(
            "the Secure Enclave backend needs pyobjc-framework-Security (pip install 'devicetrust[macos]')"
        ) from None
    return Security


class SecureEnclaveKey(DeviceKey):
    name = "secure-enclave"
    attestation_type = "macos_secure_enclave"

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self._sec = _security()

    def _find(self) -> Any:
        sec = self._sec
        query = {
            sec.kSecClass: sec.kSecClassKey,
            sec.kSecAttrApplicationTag: KEY_TAG,
            sec.kSecAttrKeyType: sec.kSecAttrKeyTypeECSECPrimeRandom,
            sec.kSecReturnRef: True,
        }
        status, key = sec.SecItemCopyMatching(query, None)
        return key if status == 0 else None

    def _key(self) -> Any:
        key = self._find()
        if key is not None:
            return key
        sec = self._sec
        access, error = sec.SecAccessControlCreateWithFlags(
            None, sec.kSecAttrAccessibleWhenUnlockedThisDeviceOnly, sec.kSecAccessControlPrivateKeyUsage, None
        )
        if access is None:
            raise DeviceKeyError(f"cannot create the Secure Enclave key's access control: {error}")
        attributes = {
            sec.kSecAttrKeyType: sec.kSecAttrKeyTypeECSECPrimeRandom,
            sec.kSecAttrKeySizeInBits: 256,
            sec.kSecAttrTokenID: sec.kSecAttrTokenIDSecureEnclave,
            sec.kSecPrivateKeyAttrs: {
                sec.kSecAttrIsPermanent: True,
                sec.kSecAttrApplicationTag: KEY_TAG,
                sec.kSecAttrAccessControl: access,
            },
        }
        key, error = sec.SecKeyCreateRandomKey(attributes, None)
        if key is None:
            raise DeviceKeyError(f"cannot create a Secure Enclave key: {error}")
        return key

    def _public_key_der(self) -> bytes:
        sec = self._sec
        public = sec.SecKeyCopyPublicKey(self._key())
        raw, error = sec.SecKeyCopyExternalRepresentation(public, None)
        if raw is None:
            raise DeviceKeyError(f"cannot read the Secure Enclave public key: {error}")
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(raw))
        return point.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def _sign(self, challenge: Challenge) -> ChallengeResponse:
        if not challenge.challenge:
            raise DeviceKeyError("the server sent no challenge for the Secure Enclave key")
        sec = self._sec
        signature, error = sec.SecKeyCreateSignature(
            self._key(), sec.kSecKeyAlgorithmECDSASignatureMessageX962SHA256, challenge.challenge, None
        )
        if signature is None:
            raise DeviceKeyError(f"the Secure Enclave refused to sign: {error}")
        return ChallengeResponse(challenge.ceremony_id, signature=bytes(signature))

    def enroll_payload(self) -> EnrollPayload:
        return {"key": KeyEnrollPayload(self._public_key_der(), self.attestation_type).to_json()}

    def answer_enrollment(self, challenge: Challenge) -> ChallengeResponse:
        return self._sign(challenge)

    def answer_authentication(self, challenge: Challenge) -> ChallengeResponse:
        return self._sign(challenge)
