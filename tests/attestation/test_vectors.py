"""Known answers recorded from a real (software) TPM: swtpm 0.7.1 driven by devicetrust.device (tpm2-pytss).

``vectors/swtpm.json`` holds one device's AK public area and the name the TPM computed for it, its RSA-2048 EK
(public area, SPKI, NV certificate) with the swtpm local CA, a quote with its PCR values, and the simulated event
log behind those PCRs. Re-record with the device helpers if the format ever changes (see tests/tpm).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devicetrust.attestation import (
    AttestationError,
    check_ak,
    evaluate_ek,
    parse_attest,
    parse_signature,
    parse_tpmt_public,
    replay_event_log,
    verify_ek_certificate,
    verify_quote,
)

V = json.loads((Path(__file__).parent / "vectors" / "swtpm.json").read_text())
NOW = datetime(2027, 1, 1, tzinfo=UTC)


def b(key: str) -> bytes:
    return base64.b64decode(V[key])


PCR_VALUES = {int(k): bytes.fromhex(v) for k, v in V["pcr_values"].items()}


def test_ak_name_matches_the_tpm() -> None:
    ak = parse_tpmt_public(b("ak_public_area"))
    assert ak.name() == b("ak_name_from_tpm")
    assert ak.marshal() == b("ak_public_area")
    check_ak(ak)


def test_ek_public_area_matches_its_certificate() -> None:
    ek = parse_tpmt_public(b("ek_public_area"))
    result = evaluate_ek(
        ek_cert_der=b("ek_cert_nv"),
        ek_public=ek.public_key(),
        allowed_cas_pem=[V["ek_ca_root_pem"], V["ek_ca_issuer_pem"]],
        now=NOW,
    )
    assert result.type == "tpm_ekcert_trusted"
    assert result.ek_info is not None
    assert result.ek_info.tpm_model == "swtpm"


def test_ek_certificate_chains_to_the_swtpm_root_only_with_its_issuer() -> None:
    with pytest.raises(AttestationError):
        verify_ek_certificate(b("ek_cert_nv"), [V["ek_ca_root_pem"]], NOW)
    issuer = x509.load_pem_x509_certificate(V["ek_ca_issuer_pem"].encode())
    info = verify_ek_certificate(
        b("ek_cert_nv"), [V["ek_ca_root_pem"]], NOW, intermediates_der=[issuer.public_bytes(Encoding.DER)]
    )
    assert info.chain == ("CN=swtpm-localca", "CN=swtpm-localca-rootca")


def test_recorded_quote_verifies() -> None:
    ak = parse_tpmt_public(b("ak_public_area"))
    info = verify_quote(
        ak,
        b("quote_attest"),
        b("quote_signature"),
        nonce=b("quote_nonce"),
        pcr_selection=range(8),
        pcr_values=PCR_VALUES,
    )
    assert info.pcrs == tuple(range(8))
    assert parse_attest(b("quote_attest")).marshal() == b("quote_attest")
    assert parse_signature(b("quote_signature")).marshal() == b("quote_signature")


def test_recorded_event_log_replays() -> None:
    summary = replay_event_log(b("event_log"), PCR_VALUES)
    assert summary.pcrs == (0, 2, 4, 7)
