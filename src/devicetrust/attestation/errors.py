"""The one error the attestation verifiers raise."""

from __future__ import annotations

from devicetrust.errors import ValidationError

__all__ = ["AttestationError"]


class AttestationError(ValidationError):
    """Device-supplied attestation data (TPM structures, EK certificate, event log, signature) was rejected.

    ``str(err)`` is one line and safe to show: it names the check that failed, never secret material.
    """

    kind = "attestation"
