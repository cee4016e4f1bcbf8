"""The certificate authorities (a user CA, a host CA, and another user CA that is not trusted) and the subject key
the certificate tests issue with, one of each per module."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.crypto.harness import NOW

from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.keys import generate_private_key


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return CertAuthority.generate("user", "example.com", NOW)


@pytest.fixture(scope="module")
def host_ca() -> CertAuthority:
    return CertAuthority.generate("host", "example.com", NOW)


@pytest.fixture(scope="module")
def other_ca() -> CertAuthority:
    # same subject as the real user CA, different key: only the signature tells them apart
    return CertAuthority.generate("user", "example.com", NOW)


@pytest.fixture(scope="module")
def subject_key() -> ec.EllipticCurvePublicKey:
    return generate_private_key().public_key()
