"""Real firmware event logs (``vectors/go-attestation``, see its README), with a walker independent of the verifier
that lays out their records and computes the PCR values a TPM that booted that way would quote."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devicetrust.attestation import EV_NO_ACTION, EventLogSummary, replay_event_log

VECTORS = Path(__file__).parent / "vectors" / "go-attestation"
SHA1, SHA256 = 0x0004, 0x000B
HASHES = {SHA1: hashlib.sha1, SHA256: hashlib.sha256}
QUOTED = range(8)


@dataclass(frozen=True)
class Record:
    """One record of a log as laid out in the file: where its fields are, and what they say."""

    offset: int
    pcr: int
    event_type: int
    digests: Mapping[int, bytes] = field(repr=False)
    #: offset of the eventSize field; the data follows it
    size_offset: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, repr=False)
class RealLog:
    name: str
    log: bytes
    records: tuple[Record, ...]
    bank: int

    def __repr__(self) -> str:
        return self.name

    def pcrs(self, bank: int) -> dict[int, bytes]:
        """What a TPM that booted this way has in PCRs 0-7 of ``bank``."""
        size = HASHES[bank]().digest_size
        values = {i: bytes(size) for i in QUOTED}
        for record in self.records:
            if record.event_type != EV_NO_ACTION and record.pcr in values:
                values[record.pcr] = HASHES[bank](values[record.pcr] + record.digests[bank]).digest()
        return values

    def replay(self, log: bytes) -> EventLogSummary:
        if self.bank == SHA256:
            return replay_event_log(log, self.pcrs(SHA256))
        return replay_event_log(log, {i: bytes(32) for i in QUOTED}, sha1_pcr_values=self.pcrs(SHA1))


def _walk(log: bytes) -> tuple[tuple[Record, ...], int]:
    pos, records, sizes = 0, [], None
    while pos < len(log):
        start = pos
        if sizes is None:
            pcr, event_type = struct.unpack_from("<II", log, pos)
            digests = {SHA1: log[pos + 8 : pos + 28]}
            pos += 28
        else:
            pcr, event_type, count = struct.unpack_from("<III", log, pos)
            pos += 12
            digests = {}
            for _ in range(count):
                (alg,) = struct.unpack_from("<H", log, pos)
                digests[alg] = log[pos + 2 : pos + 2 + sizes[alg]]
                pos += 2 + sizes[alg]
        (size,) = struct.unpack_from("<I", log, pos)
        data = log[pos + 4 : pos + 4 + size]
        records.append(Record(start, pcr, event_type, digests, pos, data))
        pos += 4 + size
        if start == 0 and data.startswith(b"Spec ID Event03"):
            (count,) = struct.unpack_from("<I", data, 24)
            sizes = dict(struct.unpack_from("<HH", data, 28 + 4 * i) for i in range(count))
    return tuple(records[1:] if sizes else records), SHA256 if sizes else SHA1


def _load(name: str) -> RealLog:
    log = (VECTORS / name).read_bytes()
    records, bank = _walk(log)
    return RealLog(name, log, records, bank)


CRYPTO_AGILE = _load("crypto_agile_eventlog")
UBUNTU_VM = _load("ubuntu_2104_shielded_vm_no_secure_boot_eventlog")
OPTION_ROM = _load("option_rom_eventlog")
EBS_MISSING = _load("ebs_event_missing_eventlog")
REPLAYABLE = (CRYPTO_AGILE, UBUNTU_VM, OPTION_ROM, EBS_MISSING)
