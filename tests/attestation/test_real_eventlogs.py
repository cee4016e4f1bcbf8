"""Event logs written by real firmware: both formats replay, the data the spec binds to a digest is checked, and no
mutation of them makes the verifier crash or call forged data verified."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devicetrust.attestation import (
    DATA_BOUND_EVENT_TYPES,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_NO_ACTION,
    LOG_FORMAT_CRYPTO_AGILE,
    LOG_FORMAT_TCG_1_2,
    AttestationError,
    UnreadableEventLogError,
    replay_event_log,
)
from tests.attestation.real_eventlogs import (
    CRYPTO_AGILE,
    EBS_MISSING,
    HASHES,
    OPTION_ROM,
    QUOTED,
    REPLAYABLE,
    SHA1,
    SHA256,
    UBUNTU_VM,
    VECTORS,
    RealLog,
    Record,
)

EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003


def _variable(record: Record) -> tuple[str, int, int]:
    """(name, offset of the value within the data, value length) of a UEFI_VARIABLE_DATA event."""
    name_length, value_length = struct.unpack_from("<QQ", record.data, 16)
    name = record.data[32 : 32 + 2 * name_length].decode("utf-16-le")
    return name, 32 + 2 * name_length, value_length


def _secure_boot(real: RealLog) -> Record:
    (record,) = [
        r for r in real.records if r.event_type == EV_EFI_VARIABLE_DRIVER_CONFIG and _variable(r)[0] == "SecureBoot"
    ]
    return record


@pytest.mark.parametrize(
    ("real", "log_format", "events", "data_verified", "unquoted"),
    [
        (CRYPTO_AGILE, LOG_FORMAT_CRYPTO_AGILE, 26, 22, ()),
        (UBUNTU_VM, LOG_FORMAT_CRYPTO_AGILE, 27, 20, (8, 9, 14)),
        (OPTION_ROM, LOG_FORMAT_TCG_1_2, 46, 20, (11, 12, 13, 14)),
        (EBS_MISSING, LOG_FORMAT_TCG_1_2, 38, 16, ()),
    ],
    ids=lambda value: value.name if isinstance(value, RealLog) else None,
)
def test_real_logs_replay(
    real: RealLog, log_format: str, events: int, data_verified: int, unquoted: tuple[int, ...]
) -> None:
    summary = real.replay(real.log)
    assert (summary.log_format, summary.bank) == (log_format, real.bank)
    assert (summary.event_count, summary.data_verified_count, summary.unverified_pcrs) == (
        events,
        data_verified,
        unquoted,
    )
    assert summary.describe() == f"replayed ({events} events, data verified for {data_verified})"
    for replayed in summary.events:
        assert replayed.data_verified == (HASHES[real.bank](replayed.data).digest() == replayed.digest)
        if replayed.event_type in DATA_BOUND_EVENT_TYPES - {EV_EFI_VARIABLE_BOOT}:
            assert replayed.data_verified, replayed
        if replayed.event_type == EV_EFI_BOOT_SERVICES_APPLICATION:
            assert not replayed.data_verified  # the digest is of the PE image, the data only names it


def test_tcg_1_2_logs_without_a_quoted_sha1_bank_are_unreadable_not_malformed() -> None:
    sha256_pcrs = {i: bytes(32) for i in QUOTED}
    with pytest.raises(UnreadableEventLogError) as caught:
        replay_event_log(OPTION_ROM.log, sha256_pcrs)
    assert str(caught.value) == (
        "TCG 1.2 (SHA-1) event log (60 events) has only SHA-1 digests, and the SHA-1 PCR bank was not quoted"
    )
    # A crypto-agile log with SHA-256 digests is replayed on that bank even when SHA-1 values are offered.
    assert UBUNTU_VM.pcrs(SHA1) != UBUNTU_VM.pcrs(SHA256)
    summary = replay_event_log(UBUNTU_VM.log, UBUNTU_VM.pcrs(SHA256), sha1_pcr_values=UBUNTU_VM.pcrs(SHA1))
    assert summary.bank == SHA256


def test_truncated_real_log_is_refused_cleanly() -> None:
    with pytest.raises(UnreadableEventLogError, match=r"^malformed event log: misplaced StartupLocality event$"):
        replay_event_log((VECTORS / "short_no_action_eventlog").read_bytes(), {i: bytes(32) for i in QUOTED})


@pytest.mark.parametrize("real", [UBUNTU_VM, OPTION_ROM, EBS_MISSING], ids=lambda real: real.name)
def test_flipping_secure_boot_is_caught(real: RealLog) -> None:
    record = _secure_boot(real)
    _, value_offset, value_length = _variable(record)
    assert value_length == 1
    position = record.size_offset + 4 + value_offset
    flipped = bytearray(real.log)
    flipped[position] ^= 0x01  # SecureBoot 0 <-> 1
    with pytest.raises(AttestationError, match=r"EV_EFI_VARIABLE_DRIVER_CONFIG.*does not match its data") as caught:
        real.replay(bytes(flipped))
    assert not isinstance(caught.value, UnreadableEventLogError)


def test_boot_variables_bind_only_their_value() -> None:
    """Firmware digests only an EV_EFI_VARIABLE_BOOT's value (the spec's rule for it): a changed value is caught,
    a renamed variable replays but its data is never reported verified."""
    record = next(r for r in UBUNTU_VM.records if r.event_type == EV_EFI_VARIABLE_BOOT and r.pcr in QUOTED)
    _, value_offset, value_length = _variable(record)
    assert value_length > 0
    data_start = record.size_offset + 4
    changed_value = bytearray(UBUNTU_VM.log)
    changed_value[data_start + value_offset] ^= 0x01
    with pytest.raises(AttestationError, match=r"EV_EFI_VARIABLE_BOOT.*does not match its data"):
        UBUNTU_VM.replay(bytes(changed_value))
    renamed = bytearray(UBUNTU_VM.log)
    renamed[data_start + 32] ^= 0x01  # first character of the name
    (replayed,) = [e for e in UBUNTU_VM.replay(bytes(renamed)).events if e.digest == record.digests[SHA256]]
    assert replayed.data != record.data
    assert not replayed.data_verified


# -- mutations: only AttestationError or a result, and forged data never verified ----------------------------------


def _set_u32(log: bytes, offset: int, value: int) -> bytes:
    return log[:offset] + struct.pack("<I", value) + log[offset + 4 :]


@st.composite
def _mutated(draw: st.DrawFn, real: RealLog) -> bytes:
    log = real.log
    record = draw(st.sampled_from(real.records))
    kind = draw(st.sampled_from(["flip", "flip data", "truncate", "size", "type", "pcr", "insert", "delete"]))
    if kind == "flip":
        out = bytearray(log)
        for index in draw(st.lists(st.integers(0, len(log) - 1), min_size=1, max_size=4, unique=True)):
            out[index] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "flip data" and record.data:
        out = bytearray(log)
        out[record.size_offset + 4 + draw(st.integers(0, len(record.data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "truncate":
        return log[: draw(st.integers(0, len(log) - 1))]
    if kind == "size":
        size = len(record.data)
        value = draw(st.one_of(st.integers(max(0, size - 8), size + 8), st.integers(0, 2**32 - 1)))
        return _set_u32(log, record.size_offset, value)
    if kind == "type":
        value = draw(
            st.one_of(st.sampled_from(sorted(DATA_BOUND_EVENT_TYPES | {EV_NO_ACTION})), st.integers(0, 2**32 - 1))
        )
        return _set_u32(log, record.offset + 4, value)
    if kind == "pcr":
        return _set_u32(log, record.offset, draw(st.one_of(st.integers(0, 24), st.just(2**32 - 1))))
    position = draw(st.integers(0, len(log) - 1))
    if kind == "insert":
        return log[:position] + draw(st.binary(min_size=1, max_size=8)) + log[position:]
    return log[:position] + log[position + 1 :]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_property_mutated_real_logs_never_crash_nor_verify_forged_data(data: st.DataObject) -> None:
    real = data.draw(st.sampled_from(REPLAYABLE), label="log")
    mutated = data.draw(_mutated(real), label="mutated")
    try:
        summary = real.replay(mutated)
    except AttestationError as err:
        event("unreadable" if isinstance(err, UnreadableEventLogError) else "contradicts the quote or its digests")
        return
    event("accepted")
    if not mutated:
        assert summary.empty
        return
    original = real.replay(real.log)
    # The replay reproduced the quoted PCRs, so the same digests were extended in the same order...
    assert [(r.pcr, r.digest) for r in summary.events] == [(o.pcr, o.digest) for o in original.events]
    assert dict(summary.replayed) == dict(original.replayed)
    # ...and data reported verified is exactly what firmware measured.
    for replayed, before in zip(summary.events, original.events, strict=True):
        if replayed.data_verified:
            assert replayed.data == before.data
        if replayed.event_type in DATA_BOUND_EVENT_TYPES and replayed.data != before.data:
            assert not replayed.data_verified
