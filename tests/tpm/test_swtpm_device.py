"""The whole TPM enrollment flow against real (software) TPMs: device side (tpm2-pytss) + server side (pure)."""

from __future__ import annotations

import hashlib
import json
import secrets
import stat
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key

from devicetrust.attestation import (
    AttestationError,
    check_ak,
    evaluate_ek,
    make_credential,
    parse_tpmt_public,
    replay_event_log,
    verify_ek_certificate,
    verify_quote,
)
from tests.tpm.helpers import Device, require_swtpm, require_tpm2_pytss

if TYPE_CHECKING:
    from devicetrust.device.tpm import AttestationKey, Quote

pytestmark = pytest.mark.integration

PCRS = tuple(range(8))


def _now() -> datetime:
    return datetime.now(UTC)  # swtpm's local CA dates its certificates from the wall clock


def test_ek_certificate_chains_to_the_swtpm_local_ca(device_a: Device) -> None:
    from devicetrust.device.swtpm import ek_ca_certificates

    endorsement = device_a.tpm.endorsement()
    assert endorsement.ek_cert_der is not None
    issuer, root = ek_ca_certificates(device_a.dir)
    info = verify_ek_certificate(endorsement.ek_cert_der, [issuer, root], _now())
    assert info.chain == ("CN=swtpm-localca",)
    assert info.tpm_model == "swtpm"
    result = evaluate_ek(
        ek_cert_der=endorsement.ek_cert_der,
        ek_public=endorsement.ek_public_der,
        allowed_cas_pem=[root, issuer],
        now=_now(),
    )
    assert result.type == "tpm_ekcert_trusted"
    assert parse_tpmt_public(endorsement.ek_public_area).public_key().public_numbers() == (
        load_der_public_key(endorsement.ek_public_der).public_numbers()  # type: ignore[union-attr]
    )


def test_devices_sharing_a_ca_have_distinct_eks(device_a: Device, device_b: Device) -> None:
    from devicetrust.device.swtpm import ek_ca_certificates

    cas = ek_ca_certificates(device_a.dir)
    assert ek_ca_certificates(device_b.dir) == cas
    a, b = device_a.tpm.endorsement(), device_b.tpm.endorsement()
    assert a.ek_cert_der and b.ek_cert_der
    info_a = verify_ek_certificate(a.ek_cert_der, cas, _now())
    info_b = verify_ek_certificate(b.ek_cert_der, cas, _now())
    assert info_a.serial != info_b.serial
    assert a.ek_public_der != b.ek_public_der


def test_ak_is_persisted_0600_and_reloaded(device_a: Device, tmp_path: Path) -> None:
    state = tmp_path / "state" / "ak.json"
    ak = device_a.tpm.load_or_create_ak(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert set(json.loads(state.read_text())) == {"version", "private", "public"}
    again = device_a.tpm.load_or_create_ak(state)
    assert again == ak
    assert again.name == parse_tpmt_public(ak.public_area).name()
    check_ak(parse_tpmt_public(ak.public_area))


def test_credential_activation_with_our_make_credential(device_a: Device, tmp_path: Path) -> None:
    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    endorsement = device_a.tpm.endorsement()
    assert endorsement.ek_cert_der is not None
    from devicetrust.device.swtpm import ek_ca_certificates

    cas = ek_ca_certificates(device_a.dir)
    ek_key = verify_ek_certificate(endorsement.ek_cert_der, cas, _now()).public_key()
    secret = secrets.token_bytes(32)
    blob, encrypted = make_credential(ek_key, parse_tpmt_public(ak.public_area).name(), secret)
    assert device_a.tpm.activate_credential(ak, blob, encrypted) == secret


@pytest.mark.parametrize("ek_type", ["EK-RSA2048", "EK-ECC256", "EK-HIGH-ECC384"])
def test_credential_activation_for_every_ek_type(device_a: Device, tmp_path: Path, ek_type: str) -> None:
    """Bare keys use the TCG template defaults; public areas carry their own name/symmetric algorithms."""
    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    endorsement = device_a.tpm.endorsement(ek_type)
    name = parse_tpmt_public(ak.public_area).name()
    for ek in (load_der_public_key(endorsement.ek_public_der), parse_tpmt_public(endorsement.ek_public_area)):
        secret = secrets.token_bytes(32)
        blob, encrypted = make_credential(ek, name, secret)  # type: ignore[arg-type]
        assert device_a.tpm.activate_credential(ak, blob, encrypted, ek_type=ek_type) == secret


def test_credential_for_another_ak_does_not_activate(device_a: Device, tmp_path: Path) -> None:
    from devicetrust.device.tpm import TPMError

    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    other = device_a.tpm.load_or_create_ak(tmp_path / "other.json")
    assert other.name != ak.name
    ek = load_der_public_key(device_a.tpm.endorsement().ek_public_der)
    blob, encrypted = make_credential(ek, other.name, secrets.token_bytes(32))  # type: ignore[arg-type]
    with pytest.raises(TPMError, match="credential activation failed"):
        device_a.tpm.activate_credential(ak, blob, encrypted)
    # and the TPM is still usable afterwards: nothing leaked into its three object slots
    assert device_a.tpm.activate_credential(other, blob, encrypted)


def test_credential_for_another_tpm_does_not_activate(device_a: Device, device_b: Device, tmp_path: Path) -> None:
    from devicetrust.device.tpm import TPMError

    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    ek_b = load_der_public_key(device_b.tpm.endorsement().ek_public_der)
    blob, encrypted = make_credential(ek_b, ak.name, secrets.token_bytes(32))  # type: ignore[arg-type]
    with pytest.raises(TPMError):
        device_a.tpm.activate_credential(ak, blob, encrypted)


def test_quote_and_event_log_verify(device_a: Device, tmp_path: Path) -> None:
    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    ak_public = parse_tpmt_public(ak.public_area)
    nonce = secrets.token_bytes(20)
    quote = device_a.tpm.quote(ak, nonce, PCRS)
    info = verify_quote(
        ak_public, quote.attest, quote.signature, nonce=nonce, pcr_selection=PCRS, pcr_values=quote.pcr_values
    )
    assert info.pcrs == PCRS
    summary = replay_event_log(device_a.event_log, quote.pcr_values)
    assert summary.pcrs == (0, 2, 4, 7)
    with pytest.raises(AttestationError, match="nonce"):
        verify_quote(
            ak_public,
            quote.attest,
            quote.signature,
            nonce=secrets.token_bytes(20),
            pcr_selection=PCRS,
            pcr_values=quote.pcr_values,
        )


def test_quote_over_more_than_eight_pcrs(device_a: Device, tmp_path: Path) -> None:
    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    pcrs = tuple(range(24))
    nonce = secrets.token_bytes(20)
    quote = device_a.tpm.quote(ak, nonce, pcrs)
    assert len(quote.pcr_values) == 24
    verify_quote(
        parse_tpmt_public(ak.public_area),
        quote.attest,
        quote.signature,
        nonce=nonce,
        pcr_selection=pcrs,
        pcr_values=quote.pcr_values,
    )


def test_extended_pcr_breaks_the_event_log(device_b: Device, tmp_path: Path) -> None:
    """An extension the log does not record no longer replays (no other test replays device B's log)."""
    ak = device_b.tpm.load_or_create_ak(tmp_path / "ak.json")
    nonce = secrets.token_bytes(20)
    device_b.tpm.extend_pcr(5, bytes(32))
    quote = device_b.tpm.quote(ak, nonce, PCRS)
    verify_quote(
        parse_tpmt_public(ak.public_area),
        quote.attest,
        quote.signature,
        nonce=nonce,
        pcr_selection=PCRS,
        pcr_values=quote.pcr_values,
    )
    with pytest.raises(AttestationError, match="PCR 5"):
        replay_event_log(device_b.event_log, quote.pcr_values)


def test_another_devices_quote_fails_under_the_first_devices_ak(
    device_a: Device, device_b: Device, tmp_path: Path
) -> None:
    ak_a = device_a.tpm.load_or_create_ak(tmp_path / "a.json")
    ak_b = device_b.tpm.load_or_create_ak(tmp_path / "b.json")
    nonce = secrets.token_bytes(20)
    quote_b = device_b.tpm.quote(ak_b, nonce, PCRS)
    with pytest.raises(AttestationError, match="not valid for the attestation key"):
        verify_quote(
            parse_tpmt_public(ak_a.public_area),
            quote_b.attest,
            quote_b.signature,
            nonce=nonce,
            pcr_selection=PCRS,
            pcr_values=quote_b.pcr_values,
        )


def test_ak_state_of_another_tpm_is_refused(device_a: Device, device_b: Device, tmp_path: Path) -> None:
    from devicetrust.device.tpm import TPMError

    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    with pytest.raises(TPMError, match="does not load in this TPM"):
        device_b.tpm.load_or_create_ak(tmp_path / "ak.json")
    # nor does the saved context of the loaded AK that a quote leaves beside it (a copied profile carries it)
    device_a.tpm.quote(ak, secrets.token_bytes(20), PCRS)
    with pytest.raises(TPMError, match="does not load in this TPM"):
        device_b.tpm.load_or_create_ak(tmp_path / "ak.json")
    with pytest.raises(TPMError, match="AK load failed"):
        device_b.tpm.quote(ak, secrets.token_bytes(20), PCRS)


@pytest.mark.parametrize(
    "content", [b"", b"{}", b'{"version": 1, "private": "!!", "public": "AA=="}', b"\xff" * 10, b"[1]"]
)
def test_corrupt_ak_state_is_refused(device_a: Device, tmp_path: Path, content: bytes) -> None:
    from devicetrust.device.tpm import TPMError

    state = tmp_path / "ak.json"
    state.write_bytes(content)
    with pytest.raises(TPMError, match="corrupt"):
        device_a.tpm.load_or_create_ak(state)


def test_malformed_credential_and_bad_arguments(device_a: Device, tmp_path: Path) -> None:
    from devicetrust.device.tpm import TPMError

    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    with pytest.raises(TPMError, match="malformed credential blob"):
        device_a.tpm.activate_credential(ak, b"\x00\x05ab", b"\x00\x00")
    with pytest.raises(TPMError, match="trailing"):
        device_a.tpm.activate_credential(ak, b"\x00\x01a\x00", b"\x00\x00")
    with pytest.raises(TPMError, match="nonce"):
        device_a.tpm.quote(ak, b"")
    with pytest.raises(TPMError, match="PCR indices"):
        device_a.tpm.quote(ak, b"n" * 20, (0, 24))
    with pytest.raises(TPMError, match="32 bytes"):
        device_a.tpm.extend_pcr(0, b"short")
    with pytest.raises(TPMError, match="unknown EK type"):
        device_a.tpm.endorsement("EK-RSA1024")


def test_unreachable_tpm_is_a_one_line_error() -> None:
    require_tpm2_pytss()
    from devicetrust.device.tpm import TPMDevice, TPMError

    with pytest.raises(TPMError, match="cannot open the TPM") as caught:
        TPMDevice("swtpm:host=127.0.0.1,port=1")
    assert "\n" not in str(caught.value)


def test_command_line_manufacture_start_stop_and_missing_srk(tmp_path: Path) -> None:
    """The demo's path: the CLI leaves a detached swtpm running, a TPMDevice uses it, the CLI stops it."""
    require_swtpm()
    from devicetrust.device.swtpm import _pid_alive
    from devicetrust.device.tpm import SRK_HANDLE, TPMDevice, TPMError

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "devicetrust.device.swtpm", *args, "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    cli("manufacture")
    assert len(cli("ca").split("-----BEGIN CERTIFICATE-----")) == 3
    tcti = cli("start")
    assert tcti.startswith("swtpm:host=127.0.0.1,port=")
    pid = int((tmp_path / "swtpm.pid").read_text())
    try:
        with TPMDevice(tcti) as tpm:
            assert tpm.endorsement().ek_cert_der
            # Evict the SRK: what a TPM that was never provisioned looks like.
            from tpm2_pytss import ESYS_TR

            ctx = tpm._ctx
            ctx.evict_control(ESYS_TR.OWNER, ctx.tr_from_tpmpublic(SRK_HANDLE), SRK_HANDLE)
            with pytest.raises(TPMError, match="no storage root key"):
                tpm.load_or_create_ak(tmp_path / "ak.json")
    finally:
        cli("stop")
    assert not _pid_alive(pid)


def _verified(ak: AttestationKey, quote: Quote, nonce: bytes) -> None:
    verify_quote(
        parse_tpmt_public(ak.public_area),
        quote.attest,
        quote.signature,
        nonce=nonce,
        pcr_selection=PCRS,
        pcr_values=quote.pcr_values,
    )


def test_quotes_load_the_ak_from_its_saved_context(device_a: Device, tmp_path: Path) -> None:
    from devicetrust.device.tpm import TPMError, ak_context_file

    state = tmp_path / "ak.json"
    ak = device_a.tpm.load_or_create_ak(state)
    nonce = secrets.token_bytes(20)
    _verified(ak, device_a.tpm.quote(ak, nonce, PCRS), nonce)
    context = ak_context_file(state)
    assert stat.S_IMODE(context.stat().st_mode) == 0o600
    # while the context holds, the wrapped private blob is not even read
    blobless = replace(ak, private_blob=b"\x00\x00")
    _verified(ak, device_a.tpm.quote(blobless, nonce, PCRS), nonce)
    context.unlink()
    with pytest.raises(TPMError, match="AK load failed"):
        device_a.tpm.quote(blobless, nonce, PCRS)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "another AK's"])
def test_an_unusable_saved_context_is_replaced(device_a: Device, tmp_path: Path, damage: str) -> None:
    from devicetrust.device.tpm import AK_CONTEXT_MAGIC, ak_context_file

    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    other = device_a.tpm.load_or_create_ak(tmp_path / "other.json")
    nonce = secrets.token_bytes(20)
    device_a.tpm.quote(ak, nonce, PCRS)
    device_a.tpm.quote(other, nonce, PCRS)
    context = ak_context_file(tmp_path / "ak.json")
    good = context.read_bytes()
    # within the TPM's integrity-protected blob (tpm2-tss appends its own metadata after it)
    flip = len(AK_CONTEXT_MAGIC) + 32 + 40
    damaged = {
        "flipped": good[:flip] + bytes([good[flip] ^ 1]) + good[flip + 1 :],
        "truncated": good[:-10],
        "empty": b"",
        "another AK's": ak_context_file(tmp_path / "other.json").read_bytes(),
    }[damage]
    context.write_bytes(damaged)
    _verified(ak, device_a.tpm.quote(ak, nonce, PCRS), nonce)
    assert context.read_bytes() not in (damaged, good)


def test_a_context_of_another_key_under_this_aks_header_fails_at_the_server(device_a: Device, tmp_path: Path) -> None:
    """The file is not trusted: a context swapped under the AK's header signs with another key, which the server's
    verification under the enrolled AK refuses."""
    from devicetrust.device.tpm import AK_CONTEXT_MAGIC, ak_context_file

    ak = device_a.tpm.load_or_create_ak(tmp_path / "ak.json")
    other = device_a.tpm.load_or_create_ak(tmp_path / "other.json")
    nonce = secrets.token_bytes(20)
    device_a.tpm.quote(other, nonce, PCRS)
    header = len(AK_CONTEXT_MAGIC) + 32
    swapped = AK_CONTEXT_MAGIC + hashlib.sha256(ak.public_blob).digest()
    swapped += ak_context_file(tmp_path / "other.json").read_bytes()[header:]
    ak_context_file(tmp_path / "ak.json").write_bytes(swapped)
    with pytest.raises(AttestationError, match="not valid for the attestation key"):
        _verified(ak, device_a.tpm.quote(ak, nonce, PCRS), nonce)


def test_a_context_saved_before_a_tpm_reset_is_replaced(tmp_path: Path) -> None:
    require_swtpm()
    from devicetrust.device.swtpm import SimulatedTPM, manufacture
    from devicetrust.device.tpm import TPMDevice, ak_context_file

    manufacture(tmp_path / "tpm")
    state = tmp_path / "ak.json"
    nonce = secrets.token_bytes(20)
    with SimulatedTPM(tmp_path / "tpm") as sim, TPMDevice(sim.tcti) as tpm:
        ak = tpm.load_or_create_ak(state)
        _verified(ak, tpm.quote(ak, nonce, PCRS), nonce)
    before = ak_context_file(state).read_bytes()
    with SimulatedTPM(tmp_path / "tpm") as sim, TPMDevice(sim.tcti) as tpm:
        ak = tpm.load_or_create_ak(state)
        _verified(ak, tpm.quote(ak, nonce, PCRS), nonce)
    assert ak_context_file(state).read_bytes() != before


class _Marshalled:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def marshal(self) -> bytes:
        return self.raw


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00\x01", b"\x00\x00\x00\x01\x00\x20" + bytes(31), b"\x00\x00\x00"])
def test_a_malformed_digest_list_is_a_tpm_error(raw: bytes) -> None:
    require_tpm2_pytss()
    from devicetrust.device.tpm import TPMError, _digest_list

    with pytest.raises(TPMError, match="malformed digest list"):
        _digest_list(_Marshalled(raw))
    assert _digest_list(_Marshalled(b"\x00\x00\x00\x02\x00\x01a\x00\x00")) == [b"a", b""]
