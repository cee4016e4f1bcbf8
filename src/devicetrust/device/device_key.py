"""What every device key backend is: enrolls one credential, then proves possession of it.

Apart from :mod:`devicetrust.device.keys` so that a backend in a module of its own (the Secure Enclave's) builds
on it without importing the module that chooses among the backends.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TypedDict

from devicetrust.ceremony.messages import Challenge, ChallengeResponse
from devicetrust.errors import DevicetrustError
from devicetrust.files import write_atomic
from devicetrust.protocol import KeyEnrollment, TpmEnrollment

__all__ = ["DeviceKey", "DeviceKeyError", "EnrollPayload"]


class EnrollPayload(TypedDict, total=False):
    """The ``tpm`` or ``key`` part of an enrollment begin, as :meth:`devicetrust.client.AuthApi.enroll_begin`
    takes it."""

    tpm: TpmEnrollment
    key: KeyEnrollment


class DeviceKeyError(DevicetrustError):
    kind = "device_key"


class DeviceKey(ABC):
    """One device credential: enrolls it, then proves possession of it."""

    #: the backend's name, as ``--device-key`` takes it
    name: str

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def credential_id(self) -> str:
        """A stable random id for this credential, created with it."""
        path = self.state_dir / f"{self.name}.credential-id"
        if path.exists():
            return path.read_text().strip()
        credential_id = str(uuid.uuid4())
        write_atomic(path, credential_id.encode())
        return credential_id

    @abstractmethod
    def enroll_payload(self) -> EnrollPayload:
        """The ``tpm`` or ``key`` part of an enrollment begin."""

    @abstractmethod
    def answer_enrollment(self, challenge: Challenge) -> ChallengeResponse: ...

    @abstractmethod
    def answer_authentication(self, challenge: Challenge) -> ChallengeResponse: ...

    def close(self) -> None:
        return None

    def __enter__(self) -> DeviceKey:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
