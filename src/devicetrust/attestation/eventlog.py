"""TCG PC Client event logs (PC Client Platform Firmware Profile §10): parse, replay, and a writer for simulated
devices.

Two formats, both little-endian (unlike TPM structures):

- crypto-agile (TPM 2.0): one TCG_PCClientPCREvent in SHA-1 format carrying the TCG_EfiSpecIDEvent header
  ("Spec ID Event03"), then TCG_PCR_EVENT2 records, each with one digest per declared algorithm;
- TCG 1.2 (SHA-1): TCG_PCClientPCREvent records only, each with one SHA-1 digest, optionally opened by a
  "Spec ID Event00" / "Spec ID Event02" header. Firmware writes it for TPM 1.2 and for TPM 2.0 in SHA-1 log mode.

Replay extends each PCR from its reset value with every event's digest of one bank (SHA-256 when the log has it,
else SHA-1 when that bank was quoted) and must reproduce the quoted PCRs. An event's data is only descriptive
unless its digest is the hash of that data; the types whose data the spec binds are checked, and a summary counts
only such events as having verified data.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from . import _marshal as m
from .errors import AttestationError
from .quote import MAX_PCR_INDEX, PCR_DIGEST_BYTES

__all__ = [
    "DATA_BOUND_EVENT_TYPES",
    "EV_EFI_ACTION",
    "EV_EFI_VARIABLE_BOOT",
    "EV_EFI_VARIABLE_DRIVER_CONFIG",
    "EV_NO_ACTION",
    "EV_SEPARATOR",
    "LOG_FORMAT_CRYPTO_AGILE",
    "LOG_FORMAT_TCG_1_2",
    "MAX_EVENT_DATA_BYTES",
    "MAX_EVENT_LOG_BYTES",
    "MAX_EVENT_LOG_EVENTS",
    "SIMULATED_EVENT_TYPE",
    "EventLogSummary",
    "LogEvent",
    "UnreadableEventLogError",
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

LOG_FORMAT_CRYPTO_AGILE: Final = "crypto-agile"
LOG_FORMAT_TCG_1_2: Final = "TCG 1.2 (SHA-1)"


class EventType(IntEnum):
    """The event types (PC Client PFP §10.4.1) this module knows by name."""

    EV_POST_CODE = 0x00000001
    EV_NO_ACTION = 0x00000003
    EV_SEPARATOR = 0x00000004
    EV_ACTION = 0x00000005
    EV_S_CRTM_VERSION = 0x00000008
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0


EV_NO_ACTION: Final = EventType.EV_NO_ACTION
EV_SEPARATOR: Final = EventType.EV_SEPARATOR
EV_EFI_VARIABLE_DRIVER_CONFIG: Final = EventType.EV_EFI_VARIABLE_DRIVER_CONFIG
EV_EFI_VARIABLE_BOOT: Final = EventType.EV_EFI_VARIABLE_BOOT
EV_EFI_ACTION: Final = EventType.EV_EFI_ACTION
#: event types whose digest the spec defines as the hash of their event data (EV_EFI_VARIABLE_BOOT: of the
#: variable's value only); a mismatch is a forged log. Other types (EFI applications, POST code, CRTM contents…)
#: digest something not in the log: their data is only descriptive and never reported as verified.
DATA_BOUND_EVENT_TYPES: Final = frozenset(
    {
        EventType.EV_SEPARATOR,
        EventType.EV_ACTION,
        EventType.EV_S_CRTM_VERSION,
        EventType.EV_OMIT_BOOT_DEVICE_EVENTS,
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        EventType.EV_EFI_VARIABLE_BOOT,
        EventType.EV_EFI_GPT_EVENT,
        EventType.EV_EFI_ACTION,
        EventType.EV_EFI_VARIABLE_BOOT2,
        EventType.EV_EFI_VARIABLE_AUTHORITY,
    }
)
#: what ``build_event_log`` writes: an action string, bound to its digest
SIMULATED_EVENT_TYPE: Final = EV_EFI_ACTION

SPEC_ID_SIGNATURE: Final = b"Spec ID Event03\x00"
#: the headers a SHA-1 log may open with (PC Client 1.2 UEFI; TPM 2.0 firmware in SHA-1 log mode)
_SHA1_SPEC_ID_SIGNATURES: Final = frozenset({b"Spec ID Event00\x00", b"Spec ID Event02\x00"})
_SPEC_ID_PREFIX: Final = b"Spec ID Event"
_STARTUP_LOCALITY_SIGNATURE: Final = b"StartupLocality\x00"
_SHA1_DIGEST_BYTES: Final = 20
_PC_CLIENT_CLASS: Final = 0
_SERVER_CLASS: Final = 1
_UINTN_SIZES: Final = frozenset({1, 2})  # 1: 32-bit firmware, 2: 64-bit
#: the banks replay can use, in order of preference
_REPLAY_BANKS: Final = (m.ALG_SHA256, m.ALG_SHA1)
_BANK_NAMES: Final = {m.ALG_SHA256: "SHA-256", m.ALG_SHA1: "SHA-1"}


class UnreadableEventLogError(AttestationError):
    """The log cannot be read or replayed against what was quoted (malformed, unsupported, or its digests are of a
    bank the quote does not cover). Such a log proves nothing either way: callers may treat it like no log, as
    long as they record it as unverified."""


@dataclass(frozen=True)
class LogEvent:
    pcr: int
    event_type: int
    #: the digest that was extended (of the replayed bank)
    digest: bytes
    data: bytes
    #: the digest is the hash of all of ``data``, so the data is what was measured; otherwise it is only a
    #: description (types the spec does not bind, or firmware that hashed part of it)
    data_verified: bool = False


@dataclass(frozen=True)
class EventLogSummary:
    """The result of a successful replay. ``empty`` logs are accepted (Linux often has none) — record it."""

    empty: bool
    #: the events of quoted PCRs, in log order (their digests verified by the replay; see ``data_verified``)
    events: tuple[LogEvent, ...] = ()
    #: the quoted PCRs the log extends
    pcrs: tuple[int, ...] = ()
    #: the replayed value of every quoted PCR (each equal to the quoted one)
    replayed: Mapping[int, bytes] = field(default_factory=dict)
    #: PCRs the log extends that the quote does not cover: their events are not in ``events``
    unverified_pcrs: tuple[int, ...] = ()
    log_format: str = LOG_FORMAT_CRYPTO_AGILE
    #: the PCR bank (TPM_ALG_ID) replayed
    bank: int = m.ALG_SHA256

    @property
    def event_count(self) -> int:
        return len(self.events)

    @property
    def data_verified_count(self) -> int:
        return sum(event.data_verified for event in self.events)

    def describe(self) -> str:
        """One line for the audit log and the device record."""
        if self.empty:
            return "none"
        return f"replayed ({self.event_count} events, data verified for {self.data_verified_count})"


@dataclass(frozen=True)
class _ParsedEvent:
    index: int
    pcr: int
    event_type: int
    digests: Mapping[int, bytes]
    data: bytes


@dataclass(frozen=True)
class _ParsedLog:
    log_format: str
    banks: frozenset[int]
    events: tuple[_ParsedEvent, ...]
    #: the locality a StartupLocality event sets PCR 0's reset value to
    startup_locality: int | None


def _read_spec_id(data: bytes) -> dict[int, int]:
    """The crypto-agile header's data; returns {algorithm id: digest size}."""
    h = m.Reader(data, "event log Spec ID header", order="little")
    h.take(len(SPEC_ID_SIGNATURE))
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
    if not sizes.keys() & set(_REPLAY_BANKS):
        raise h.fail("neither SHA-256 nor SHA-1 digests")
    h.take(h.u8())  # vendorInfo
    h.end()
    return sizes


def _read_data(r: m.Reader) -> bytes:
    size = r.u32()
    if size > MAX_EVENT_DATA_BYTES:
        raise r.fail("event data too large")
    return r.take(size)


def _read_sha1_event(r: m.Reader) -> tuple[int, int, bytes, bytes]:
    """A TCG_PCClientPCREvent: (PCR, type, SHA-1 digest, data)."""
    pcr, event_type, digest = r.u32(), r.u32(), r.take(_SHA1_DIGEST_BYTES)
    return pcr, event_type, digest, _read_data(r)


def _read_agile_event(r: m.Reader, sizes: Mapping[int, int]) -> tuple[int, int, dict[int, bytes], bytes]:
    """A TCG_PCR_EVENT2: (PCR, type, {algorithm: digest}, data)."""
    pcr, event_type, digest_count = r.u32(), r.u32(), r.u32()
    if digest_count > len(sizes):
        raise r.fail("more digests than declared algorithms")
    digests: dict[int, bytes] = {}
    for _ in range(digest_count):
        alg = r.u16()
        if alg not in sizes or alg in digests:
            raise r.fail("undeclared or repeated digest algorithm")
        digests[alg] = r.take(sizes[alg])
    return pcr, event_type, digests, _read_data(r)


def _parse(event_log: bytes) -> _ParsedLog:
    """Every event that extends a PCR, and the StartupLocality. Raises AttestationError on malformed logs."""
    r = m.Reader(event_log, "event log", order="little")
    pcr, event_type, digest, data = _read_sha1_event(r)
    sizes: dict[int, int] | None = None
    pending: list[tuple[int, int, Mapping[int, bytes], bytes]] = []
    if event_type == EV_NO_ACTION and data.startswith(_SPEC_ID_PREFIX):
        if pcr != 0 or digest != bytes(_SHA1_DIGEST_BYTES):
            raise r.fail("Spec ID header is not a PCR 0 event with a zero digest")
        signature = data[: len(SPEC_ID_SIGNATURE)]
        if signature == SPEC_ID_SIGNATURE:
            sizes = _read_spec_id(data)
        elif signature not in _SHA1_SPEC_ID_SIGNATURES:
            raise r.fail("unknown Spec ID header signature")
    else:
        # A TCG 1.2 log without a header: its first event is an ordinary one.
        pending.append((pcr, event_type, {m.ALG_SHA1: digest}, data))
    log_format = LOG_FORMAT_TCG_1_2 if sizes is None else LOG_FORMAT_CRYPTO_AGILE
    banks = frozenset({m.ALG_SHA1} if sizes is None else sizes.keys() & set(_REPLAY_BANKS))

    events: list[_ParsedEvent] = []
    startup_locality: int | None = None
    index = 0 if pending else 1  # record numbers in the log, the header being record 0
    while pending or r.remaining:
        if pending:
            pcr, event_type, digests, data = pending.pop()
        else:
            if index > MAX_EVENT_LOG_EVENTS:
                raise r.fail(f"more than {MAX_EVENT_LOG_EVENTS} events")
            if sizes is None:
                pcr, event_type, digest, data = _read_sha1_event(r)
                digests = {m.ALG_SHA1: digest}
            else:
                pcr, event_type, digests, data = _read_agile_event(r, sizes)
        index += 1
        if event_type == EV_NO_ACTION:
            # Not extended (firmware even writes some for PCR 0xFFFFFFFF); the one that matters sets PCR 0's
            # starting value (the locality of the H-CRTM).
            if data.startswith(_STARTUP_LOCALITY_SIGNATURE):
                if pcr != 0 or len(data) != len(_STARTUP_LOCALITY_SIGNATURE) + 1:
                    raise r.fail("misplaced StartupLocality event")
                # Only TPM 2.0 (crypto-agile) logs have one, before any extending event.
                if sizes is None or events or startup_locality is not None:
                    raise r.fail("misplaced StartupLocality event")
                startup_locality = data[-1]
            continue
        if pcr > MAX_PCR_INDEX:
            raise r.fail(f"PCR index {pcr} out of range")
        events.append(_ParsedEvent(index - 1, pcr, event_type, digests, data))
    return _ParsedLog(log_format, banks, tuple(events), startup_locality)


def _variable_value(data: bytes) -> bytes | None:
    """UEFI_VARIABLE_DATA.VariableData, or None when ``data`` is not a well-formed UEFI_VARIABLE_DATA."""
    r = m.Reader(data, "UEFI variable", order="little")
    try:
        r.take(16)  # VariableName (a GUID)
        name_length, value_length = r.u64(), r.u64()
        r.take(2 * name_length)
        value = r.take(value_length)
        r.end()
    except AttestationError:
        return None
    return value


def _event_name(event_type: int) -> str:
    try:
        return EventType(event_type).name
    except ValueError:
        return f"type 0x{event_type:08x}"


def _data_verified(event: _ParsedEvent, bank: int, digest: bytes) -> bool:
    """Whether all of the event's data is bound to its digest; raises for data-bound types whose data does not
    match (the log then describes something other than what was measured)."""
    if hmac.compare_digest(digest, m.digest(bank, event.data, "event log")):
        return True
    if event.event_type not in DATA_BOUND_EVENT_TYPES:
        return False
    # Accepted partial bindings, reported as unverified data: EV_EFI_VARIABLE_BOOT digests only the variable's
    # value (the name and GUID are unbound); shim before 15.3 logged one stray byte after an authority.
    if event.event_type == EV_EFI_VARIABLE_BOOT:
        value = _variable_value(event.data)
        if value is not None and hmac.compare_digest(digest, m.digest(bank, value, "event log")):
            return False
    if (
        event.event_type == EventType.EV_EFI_VARIABLE_AUTHORITY
        and event.data
        and hmac.compare_digest(digest, m.digest(bank, event.data[:-1], "event log"))
    ):
        return False
    raise AttestationError(
        f"event log event {event.index} ({_event_name(event.event_type)}, PCR {event.pcr}): "
        "event digest does not match its data"
    )


def _choose_bank(parsed: _ParsedLog, quoted: Mapping[int, Mapping[int, bytes]]) -> tuple[int, Mapping[int, bytes]]:
    """The preferred bank both logged and quoted, with its quoted PCR values."""
    for bank in _REPLAY_BANKS:
        if bank in parsed.banks and bank in quoted:
            return bank, quoted[bank]
    logged = " and ".join(_BANK_NAMES[b] for b in _REPLAY_BANKS if b in parsed.banks)
    count = len(parsed.events)
    raise UnreadableEventLogError(
        f"{parsed.log_format} event log ({count} event{'' if count == 1 else 's'}) has only {logged} digests, "
        f"and the {logged} PCR bank was not quoted"
    )


def replay_event_log(
    event_log: bytes, pcr_values: Mapping[int, bytes], *, sha1_pcr_values: Mapping[int, bytes] | None = None
) -> EventLogSummary:
    """Replay ``event_log`` against the quoted PCRs: ``pcr_values`` (SHA-256 bank) and, when the quote covered
    it, ``sha1_pcr_values`` (SHA-1 bank, used only for logs without SHA-256 digests).

    Every quoted PCR the log extends must be reproduced, and every quoted PCR the log never extends must still be
    at its reset value (zeros) — so events cannot be dropped from the end of the log. Events for PCRs outside the
    quote cannot be checked: they are left out of the summary's ``events`` and their PCRs listed in
    ``unverified_pcrs`` (real Linux logs also extend PCRs 8, 9, 14…). An empty log is accepted with ``empty=True``.

    Raises :class:`UnreadableEventLogError` when the log cannot be parsed or replayed against these banks, and
    :class:`AttestationError` when it contradicts the quote or its own digests.
    """
    if not event_log:
        return EventLogSummary(empty=True)
    if len(event_log) > MAX_EVENT_LOG_BYTES:
        raise UnreadableEventLogError(f"event log larger than {MAX_EVENT_LOG_BYTES} bytes")
    try:
        parsed = _parse(event_log)
    except AttestationError as err:
        raise UnreadableEventLogError(str(err)) from None
    banks = (
        {m.ALG_SHA256: pcr_values}
        if sha1_pcr_values is None
        else {m.ALG_SHA256: pcr_values, m.ALG_SHA1: sha1_pcr_values}
    )
    bank, quoted = _choose_bank(parsed, banks)
    size = m.HASH_ALGS[bank][1]
    if any(len(value) != size for value in quoted.values()):
        raise AttestationError(f"quoted {_BANK_NAMES[bank]} PCR values must be {size} bytes")
    replayed: dict[int, bytes] = {}
    if parsed.startup_locality is not None and 0 in quoted:
        replayed[0] = bytes(size - 1) + bytes([parsed.startup_locality])
    verified: list[LogEvent] = []
    unverified: set[int] = set()
    for event in parsed.events:
        if event.pcr not in quoted:
            unverified.add(event.pcr)
            continue
        digest = event.digests.get(bank)
        if digest is None:
            raise UnreadableEventLogError(
                f"event log event {event.index} has no {_BANK_NAMES[bank]} digest, so the log cannot be replayed"
            )
        data_verified = _data_verified(event, bank, digest)
        current = replayed.get(event.pcr, bytes(size))
        replayed[event.pcr] = m.digest(bank, current + digest, "event log")
        verified.append(LogEvent(event.pcr, event.event_type, digest, event.data, data_verified))
    touched = tuple(sorted(replayed))
    for pcr in sorted(quoted):
        expected = replayed.setdefault(pcr, bytes(size))
        if not hmac.compare_digest(quoted[pcr], expected):
            raise AttestationError(f"event log does not reproduce PCR {pcr}")
    return EventLogSummary(
        empty=False,
        events=tuple(verified),
        pcrs=touched,
        replayed=replayed,
        unverified_pcrs=tuple(sorted(unverified)),
        log_format=parsed.log_format,
        bank=bank,
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
