"""Crypto-agile event log: the writer's logs replay; every tampering that matters is caught."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicetrust.attestation import (
    EV_EFI_ACTION,
    EV_NO_ACTION,
    LOG_FORMAT_TCG_1_2,
    MAX_EVENT_LOG_BYTES,
    MAX_EVENT_LOG_EVENTS,
    AttestationError,
    UnreadableEventLogError,
    build_event_log,
    replay_event_log,
)

EVENTS = [(0, b"firmware"), (0, b"firmware config"), (4, b"boot loader"), (7, b"secure boot: enabled")]
LOG, PCRS = build_event_log(EVENTS)


def _event_type_offsets(log: bytes) -> set[int]:
    """Byte offsets of every event's eventType (after the header)."""
    offsets: set[int] = set()
    pos = 32 + struct.unpack_from("<I", log, 28)[0]
    while pos < len(log):
        offsets.update(range(pos + 4, pos + 8))
        count = struct.unpack_from("<I", log, pos + 8)[0]
        pos += 12 + count * (2 + 32)
        pos += 4 + struct.unpack_from("<I", log, pos)[0]
    return offsets


#: Bytes a TCG log does not authenticate: nothing in the replay depends on them, and several values are legal.
#: The Spec ID header's platformClass (client/server), specErrata and uintnSize (32/64-bit firmware) — header
#: event data starts at byte 32 — and each event's type (not measured: an EV_EFI_ACTION relabelled
#: EV_EFI_HANDOFF_TABLES replays identically). Mutations there may be accepted, but never change the replay.
_UNAUTHENTICATED = {32 + 16, 32 + 22, 32 + 23} | _event_type_offsets(LOG)


def _extend(pcr: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(pcr + digest).digest()


def _event(pcr: int, event_type: int, digests: list[tuple[int, bytes]], data: bytes) -> bytes:
    out = struct.pack("<III", pcr, event_type, len(digests))
    for alg, digest in digests:
        out += struct.pack("<H", alg) + digest
    return out + struct.pack("<I", len(data)) + data


def _header(algorithms: list[tuple[int, int]] | None = None, signature: bytes = b"Spec ID Event03\x00") -> bytes:
    algorithms = algorithms if algorithms is not None else [(0x000B, 32)]
    spec = signature + struct.pack("<IBBBBI", 0, 0, 2, 2, 2, len(algorithms))
    spec += b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms) + b"\x00"
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec


def test_built_log_replays_to_its_pcr_values() -> None:
    expected_pcr0 = _extend(
        _extend(bytes(32), hashlib.sha256(b"firmware").digest()), hashlib.sha256(b"firmware config").digest()
    )
    assert PCRS[0] == expected_pcr0
    summary = replay_event_log(LOG, {**PCRS, 1: bytes(32)})
    assert not summary.empty
    assert summary.pcrs == (0, 4, 7)
    assert summary.event_count == 4
    assert [(e.pcr, e.event_type, e.data) for e in summary.events] == [(p, EV_EFI_ACTION, d) for p, d in EVENTS]
    assert dict(summary.replayed) == {**PCRS, 1: bytes(32)}


def test_quoted_pcr_the_log_never_extends_must_be_at_reset_value() -> None:
    with pytest.raises(AttestationError, match="PCR 1"):
        replay_event_log(LOG, {**PCRS, 1: hashlib.sha256(b"unexplained").digest()})


def test_dropping_trailing_events_is_rejected() -> None:
    shorter, _ = build_event_log(EVENTS[:-1])
    with pytest.raises(AttestationError, match="PCR 7"):
        replay_event_log(shorter, PCRS)


def test_empty_log_is_accepted_and_flagged() -> None:
    summary = replay_event_log(b"", PCRS)
    assert summary.empty
    assert summary.event_count == 0


def test_header_only_log_touches_nothing() -> None:
    log, pcrs = build_event_log([])
    assert pcrs == {}
    summary = replay_event_log(log, {0: bytes(32)})
    assert not summary.empty
    assert summary.pcrs == ()
    with pytest.raises(AttestationError, match="PCR 0"):
        replay_event_log(log, {0: PCRS[0]})


def test_wrong_pcr_value_is_rejected() -> None:
    with pytest.raises(AttestationError, match="PCR 4"):
        replay_event_log(LOG, {**PCRS, 4: bytes(32)})


def test_events_of_pcrs_outside_the_quote_are_set_aside() -> None:
    summary = replay_event_log(LOG, {0: PCRS[0], 4: PCRS[4]})
    assert summary.unverified_pcrs == (7,)
    assert summary.pcrs == (0, 4)
    assert [e.pcr for e in summary.events] == [0, 0, 4]
    assert replay_event_log(LOG, PCRS).unverified_pcrs == ()


def test_tcg_1_2_log_is_parsed_but_unreplayable_without_a_quoted_sha1_bank() -> None:
    digest = hashlib.sha1(b"x").digest()  # noqa: S324  (the TCG 1.2 log format is SHA-1)
    legacy = struct.pack("<II", 0, 0x8) + digest + struct.pack("<I", 1) + b"x"
    with pytest.raises(UnreadableEventLogError, match=r"^TCG 1\.2 \(SHA-1\) event log \(1 event\) .*not quoted$"):
        replay_event_log(legacy, PCRS)
    pcr0 = hashlib.sha1(bytes(20) + digest).digest()  # noqa: S324
    summary = replay_event_log(legacy, {0: bytes(32)}, sha1_pcr_values={0: pcr0})
    assert (summary.log_format, summary.bank, summary.pcrs) == (LOG_FORMAT_TCG_1_2, 0x0004, (0,))
    assert summary.events[0].data_verified
    with pytest.raises(AttestationError, match=r"^event log does not reproduce PCR 0$"):
        replay_event_log(legacy, {0: bytes(32)}, sha1_pcr_values={0: bytes(20)})


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (_header(signature=b"Spec ID Event04\x00"), "signature"),
        (_header(algorithms=[(0x000C, 48)]), "neither SHA-256 nor SHA-1"),
        (_header(algorithms=[(0x000B, 20)]), "digest size"),
        (_header(algorithms=[(0x000B, 32), (0x000B, 32)]), "algorithm list"),
        (_header(algorithms=[]), "number of algorithms"),
    ],
)
def test_bad_spec_id_header_is_rejected(header: bytes, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        replay_event_log(header, {})


def test_logs_with_several_banks_replay_the_sha256_one() -> None:
    digest = hashlib.sha256(b"x").digest()
    log = _header([(0x0004, 20), (0x000B, 32)]) + _event(
        3,
        EV_EFI_ACTION,
        [(0x0004, hashlib.sha1(b"x").digest()), (0x000B, digest)],  # noqa: S324  (the SHA-1 bank)
        b"x",
    )
    assert replay_event_log(log, {3: _extend(bytes(32), digest)}).pcrs == (3,)


def test_event_without_sha256_digest_is_rejected() -> None:
    log = _header([(0x0004, 20), (0x000B, 32)]) + _event(3, 0xD, [(0x0004, bytes(20))], b"x")
    with pytest.raises(AttestationError, match="SHA-256"):
        replay_event_log(log, {3: bytes(32)})


def test_undeclared_or_repeated_digest_algorithm_is_rejected() -> None:
    for digests in ([(0x000C, bytes(48))], [(0x000B, bytes(32)), (0x000B, bytes(32))]):
        with pytest.raises(AttestationError, match="digest"):
            replay_event_log(_header() + _event(3, 0xD, digests, b""), {3: bytes(32)})


def test_action_event_data_must_match_its_digest() -> None:
    log = _header() + _event(3, EV_EFI_ACTION, [(0x000B, hashlib.sha256(b"x").digest())], b"y")
    with pytest.raises(AttestationError, match="does not match its data"):
        replay_event_log(log, {3: _extend(bytes(32), hashlib.sha256(b"x").digest())})


def test_other_event_data_is_descriptive() -> None:
    digest = hashlib.sha256(b"the application image").digest()
    log = _header() + _event(4, 0x80000003, [(0x000B, digest)], b"device path")  # EV_EFI_BOOT_SERVICES_APPLICATION
    assert replay_event_log(log, {4: _extend(bytes(32), digest)}).events[0].data == b"device path"


def test_startup_locality_sets_pcr0_initial_value() -> None:
    digest = hashlib.sha256(b"crtm").digest()
    locality = _event(0, EV_NO_ACTION, [(0x000B, bytes(32))], b"StartupLocality\x00\x03")
    log = _header() + locality + _event(0, 0x8, [(0x000B, digest)], b"crtm")
    assert replay_event_log(log, {0: _extend(bytes(31) + b"\x03", digest)}).pcrs == (0,)
    misplaced = _header() + _event(0, 0x8, [(0x000B, digest)], b"crtm") + locality
    with pytest.raises(AttestationError, match="StartupLocality"):
        replay_event_log(misplaced, {0: bytes(32)})


def test_pcr_index_out_of_range_is_rejected() -> None:
    with pytest.raises(AttestationError, match="out of range"):
        replay_event_log(_header() + _event(24, 0xD, [(0x000B, bytes(32))], b""), {})
    with pytest.raises(AttestationError, match="out of range"):
        build_event_log([(24, b"x")])


def test_size_and_count_limits() -> None:
    with pytest.raises(AttestationError, match=str(MAX_EVENT_LOG_BYTES)):
        replay_event_log(LOG + bytes(MAX_EVENT_LOG_BYTES), PCRS)
    empty_event = _event(9, EV_NO_ACTION, [], b"")
    with pytest.raises(AttestationError, match=f"more than {MAX_EVENT_LOG_EVENTS} events"):
        replay_event_log(_header() + empty_event * (MAX_EVENT_LOG_EVENTS + 1), {})


def test_every_truncation_is_rejected() -> None:
    for cut in range(1, len(LOG)):
        with pytest.raises(AttestationError):
            replay_event_log(LOG[:cut], PCRS)


def test_every_single_byte_change_is_rejected_or_cosmetic() -> None:
    for index in range(len(LOG)):
        for mask in (0x01, 0x80, 0xFF):
            mutated = bytearray(LOG)
            mutated[index] ^= mask
            _assert_rejected_or_harmless(bytes(mutated), index)


def _assert_rejected_or_harmless(log: bytes, index: int | None) -> None:
    try:
        summary = replay_event_log(log, PCRS)
    except AttestationError:
        return
    assert index in _UNAUTHENTICATED, f"mutation at byte {index} was accepted"
    assert dict(summary.replayed) == PCRS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_mutated_log_is_never_accepted(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 4))
    mutated = bytearray(LOG)
    indices = data.draw(st.lists(st.integers(0, len(LOG) - 1), min_size=count, max_size=count, unique=True))
    for index in indices:
        mutated[index] ^= data.draw(st.integers(1, 255))
    harmless = set(indices) <= _UNAUTHENTICATED
    # A changed event type can turn a data-bound action event into one whose data the digest does not cover,
    # so its data bytes become unauthenticated too; the replayed PCRs must still be exactly the quoted ones.
    type_changed = bool(set(indices) & _event_type_offsets(LOG))
    try:
        summary = replay_event_log(bytes(mutated), PCRS)
    except AttestationError:
        return
    assert harmless or type_changed, f"mutation at bytes {indices} was accepted"
    assert dict(summary.replayed) == PCRS


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(PCRS)), st.binary(min_size=32, max_size=32))
def test_property_other_pcr_values_are_never_accepted(pcr: int, value: bytes) -> None:
    if value == PCRS[pcr]:
        return
    with pytest.raises(AttestationError):
        replay_event_log(LOG, {**PCRS, pcr: value})


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_property_garbage_never_crashes(garbage: bytes) -> None:
    with contextlib.suppress(AttestationError):
        replay_event_log(garbage, PCRS)
    with contextlib.suppress(AttestationError):
        replay_event_log(LOG + garbage, PCRS)
