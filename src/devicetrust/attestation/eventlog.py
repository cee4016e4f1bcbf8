"""The TCG PC Client crypto-agile event log (PC Client Platform Firmware Profile §10): parse, replay, and a
writer for simulated devices.

Layout (little-endian, unlike TPM structures): one TCG_PCClientPCREvent in SHA-1 format carrying the
TCG_EfiSpecIDEvent header ("Spec ID Event03"), then TCG_PCR_EVENT2 records, each with one digest per declared
algorithm. Replay extends each PCR from zeros with every event's SHA-256 digest and must reproduce the quoted
PCRs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from . import _marshal as m
from .errors import AttestationError
from .quote import MAX_PCR_INDEX, PCR_DIGEST_BYTES

__all__ = [
    "DATA_BOUND_EVENT_TYPES",
    "EV_EFI_ACTION",
    "EV_NO_ACTION",
    "MAX_EVENT_DATA_BYTES",
    "MAX_EVENT_LOG_BYTES",
    "MAX_EVENT_LOG_EVENTS",
    "SIMULATED_EVENT_TYPE",
    "EventLogSummary",
    "LogEvent",
    "build_event_log",
    "replay_event_log",
]

#: real firmware logs are 10–100 KiB; anything this large is an attack on the parser
MAX_EVENT_LOG_BYTES: Final = 1024 * 1024
#: real logs have at most a few thousand events
MAX_EVENT_LOG_EVENTS: Final = 10_000
#: one event's data (UEFI variables such as db/dbx are the biggest, tens of KiB)
MAX_EVENT_DATA_BYTES: Final = 256 * 1024
#: TCG_EfiSpecIdEvent.numberOfAlgorithms upper bound (HASH_COUNT)
MAX_SPEC_ID_ALGORITHMS: Final = 16

EV_NO_ACTION: Final = 0x00000003
EV_SEPARATOR: Final = 0x00000004
EV_ACTION: Final = 0x00000005
EV_EFI_ACTION: Final = 0x80000007
#: event types whose digest is defined as the hash of their event data, so the data is checked too (other
#: types, e.g. EFI applications, digest something not in the log and their data is only descriptive)
DATA_BOUND_EVENT_TYPES: Final = frozenset({EV_ACTION, EV_EFI_ACTION})
#: what ``build_event_log`` writes: an action string, bound to its digest
SIMULATED_EVENT_TYPE: Final = EV_EFI_ACTION

SPEC_ID_SIGNATURE: Final = b"Spec ID Event03\x00"
_STARTUP_LOCALITY_SIGNATURE: Final = b"StartupLocality\x00"
_SHA1_DIGEST_BYTES: Final = 20
_PC_CLIENT_CLASS: Final = 0
_SERVER_CLASS: Final = 1
_UINTN_SIZES: Final = frozenset({1, 2})  # 1: 32-bit firmware, 2: 64-bit


@dataclass(frozen=True)
class LogEvent:
    pcr: int
    event_type: int
    #: the SHA-256 digest that was extended
    digest: bytes
    data: bytes


@dataclass(frozen=True)
class EventLogSummary:
    """The result of a successful replay. ``empty`` logs are accepted (Linux often has none) — record it."""

    empty: bool
    #: the events of quoted PCRs, in log order (all verified by the replay)
    events: tuple[LogEvent, ...] = ()
    #: the quoted PCRs the log extends
    pcrs: tuple[int, ...] = ()
    #: the replayed value of every quoted PCR (each equal to the quoted one)
    replayed: Mapping[int, bytes] = field(default_factory=dict)
    #: PCRs the log extends that the quote does not cover: their events are not in ``events``
    unverified_pcrs: tuple[int, ...] = ()

    @property
    def event_count(self) -> int:
        return len(self.events)


def _read_spec_id(r: m.Reader) -> dict[int, int]:
    """The first event; returns {algorithm id: digest size}, which must include SHA-256."""
    if r.u32() != 0 or r.u32() != EV_NO_ACTION:
        raise r.fail("first event is not the Spec ID header (only crypto-agile TPM 2.0 logs are supported)")
    if r.take(_SHA1_DIGEST_BYTES) != bytes(_SHA1_DIGEST_BYTES):
        raise r.fail("Spec ID header digest is not zero")
    size = r.u32()
    if size > MAX_EVENT_DATA_BYTES:
        raise r.fail("Spec ID header too large")
    h = m.Reader(r.take(size), "event log Spec ID header", order="little")
    if h.take(len(SPEC_ID_SIGNATURE)) != SPEC_ID_SIGNATURE:
        raise h.fail("not a crypto-agile log (signature is not 'Spec ID Event03')")
    if h.u32() not in (_PC_CLIENT_CLASS, _SERVER_CLASS):
        raise h.fail("unknown platform class")
    minor, major, _errata, uintn_size = h.u8(), h.u8(), h.u8(), h.u8()
    if (major, minor) != (2, 0) or uintn_size not in _UINTN_SIZES:
        raise h.fail("unsupported spec version")
    count = h.u32()
    if not 1 <= count <= MAX_SPEC_ID_ALGORITHMS:
        raise h.fail("bad number of algorithms")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg, digest_size = h.u16(), h.u16()
        if alg in sizes or digest_size > m.MAX_DIGEST_BYTES:
            raise h.fail("bad algorithm list")
        if alg in m.HASH_ALGS and m.HASH_ALGS[alg][1] != digest_size:
            raise h.fail("digest size does not match its algorithm")
        sizes[alg] = digest_size
    if m.ALG_SHA256 not in sizes:
        raise h.fail("no SHA-256 digests")
    h.take(h.u8())  # vendorInfo
    h.end()
    return sizes


def _parse(event_log: bytes) -> tuple[list[LogEvent], dict[int, bytes]]:
    """Events (EV_NO_ACTION excluded) and the initial PCR values (zeros, except a StartupLocality for PCR 0)."""
    r = m.Reader(event_log, "event log", order="little")
    sizes = _read_spec_id(r)
    events: list[LogEvent] = []
    initial: dict[int, bytes] = {}
    count = 0
    while r.remaining:
        count += 1
        if count > MAX_EVENT_LOG_EVENTS:
            raise r.fail(f"more than {MAX_EVENT_LOG_EVENTS} events")
        pcr, event_type, digest_count = r.u32(), r.u32(), r.u32()
        if pcr > MAX_PCR_INDEX:
            raise r.fail(f"PCR index {pcr} out of range")
        if digest_count > len(sizes):
            raise r.fail("more digests than declared algorithms")
        digests: dict[int, bytes] = {}
        for _ in range(digest_count):
            alg = r.u16()
            if alg not in sizes or alg in digests:
                raise r.fail("undeclared or repeated digest algorithm")
            digests[alg] = r.take(sizes[alg])
        data_size = r.u32()
        if data_size > MAX_EVENT_DATA_BYTES:
            raise r.fail("event data too large")
        data = r.take(data_size)
        if event_type == EV_NO_ACTION:
            # Not extended; the one that matters sets PCR 0's starting value (the locality of the H-CRTM).
            if data.startswith(_STARTUP_LOCALITY_SIGNATURE):
                if pcr != 0 or len(data) != len(_STARTUP_LOCALITY_SIGNATURE) + 1 or events or initial:
                    raise r.fail("misplaced StartupLocality event")
                initial[0] = bytes(PCR_DIGEST_BYTES - 1) + data[-1:]
            continue
        sha256 = digests.get(m.ALG_SHA256)
        if sha256 is None:
            raise r.fail("event without a SHA-256 digest")
        if event_type in DATA_BOUND_EVENT_TYPES and not hmac.compare_digest(sha256, hashlib.sha256(data).digest()):
            raise r.fail("event digest does not match its data")
        events.append(LogEvent(pcr, event_type, sha256, data))
    return events, initial


def replay_event_log(event_log: bytes, pcr_values: Mapping[int, bytes]) -> EventLogSummary:
    """Replay ``event_log`` against ``pcr_values`` (the quoted SHA-256 PCRs).

    Every quoted PCR the log extends must be reproduced, and every quoted PCR the log never extends must still be
    at its reset value (zeros) — so events cannot be dropped from the end of the log. Events for PCRs outside the
    quote cannot be checked: they are left out of the summary's ``events`` and their PCRs listed in
    ``unverified_pcrs`` (real Linux logs also extend PCRs 8, 9, 14…). An empty log is accepted with ``empty=True``.
    """
    if not event_log:
        return EventLogSummary(empty=True)
    if len(event_log) > MAX_EVENT_LOG_BYTES:
        raise AttestationError(f"event log larger than {MAX_EVENT_LOG_BYTES} bytes")
    events, initial = _parse(event_log)
    replayed = {pcr: value for pcr, value in initial.items() if pcr in pcr_values}
    verified: list[LogEvent] = []
    unverified: set[int] = set()
    for event in events:
        if event.pcr not in pcr_values:
            unverified.add(event.pcr)
            continue
        current = replayed.get(event.pcr, bytes(PCR_DIGEST_BYTES))
        replayed[event.pcr] = hashlib.sha256(current + event.digest).digest()
        verified.append(event)
    touched = tuple(sorted(replayed))
    for pcr in sorted(pcr_values):
        expected = replayed.setdefault(pcr, bytes(PCR_DIGEST_BYTES))
        if not hmac.compare_digest(pcr_values[pcr], expected):
            raise AttestationError(f"event log does not reproduce PCR {pcr}")
    return EventLogSummary(
        empty=False,
        events=tuple(verified),
        pcrs=touched,
        replayed=replayed,
        unverified_pcrs=tuple(sorted(unverified)),
    )


def build_event_log(events: Sequence[tuple[int, bytes]]) -> tuple[bytes, dict[int, bytes]]:
    """Write a crypto-agile log (SHA-256 bank only) of ``(pcr, data)`` events, each digest = SHA-256(data),
    and return it with the PCR values a TPM reaches by extending those digests from zeros. Simulated devices
    extend the same digests (``extend_pcr(pcr, sha256(data))``) to fake a measured boot that replays.
    """
    spec_id = (
        SPEC_ID_SIGNATURE
        + _PC_CLIENT_CLASS.to_bytes(4, "little")
        + bytes([0, 2, 2, 2])  # spec 2.0, errata 2, UINTN 64-bit
        + (1).to_bytes(4, "little")
        + m.ALG_SHA256.to_bytes(2, "little")
        + PCR_DIGEST_BYTES.to_bytes(2, "little")
        + b"\x00"  # no vendor info
    )
    out = [
        (0).to_bytes(4, "little"),
        EV_NO_ACTION.to_bytes(4, "little"),
        bytes(_SHA1_DIGEST_BYTES),
        len(spec_id).to_bytes(4, "little"),
        spec_id,
    ]
    pcrs: dict[int, bytes] = {}
    for pcr, data in events:
        if not 0 <= pcr <= MAX_PCR_INDEX:
            raise AttestationError(f"PCR index {pcr} out of range")
        digest = hashlib.sha256(data).digest()
        pcrs[pcr] = hashlib.sha256(pcrs.get(pcr, bytes(PCR_DIGEST_BYTES)) + digest).digest()
        out += [
            pcr.to_bytes(4, "little"),
            SIMULATED_EVENT_TYPE.to_bytes(4, "little"),
            (1).to_bytes(4, "little"),
            m.ALG_SHA256.to_bytes(2, "little"),
            digest,
            len(data).to_bytes(4, "little"),
            data,
        ]
    log = b"".join(out)
    if len(log) > MAX_EVENT_LOG_BYTES:
        raise AttestationError(f"event log larger than {MAX_EVENT_LOG_BYTES} bytes")
    return log, pcrs
