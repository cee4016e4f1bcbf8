"""bench_enroll_tpm: whole TPM enrollments (tsh's code path against a real daemon and a swtpm device) versus the
raw TPM operations an enrollment needs (read the EK, load the AK, ActivateCredential, Quote), in one run.

The ratio is our overhead over the TPM: HTTP, JSON, the server's verification and storage.
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import cluster, summary_ms
from devicetrust.attestation import make_credential, parse_tpmt_public
from devicetrust.ceremony.ceremonies import QUOTE_PCRS
from devicetrust.ceremony.messages import Challenge, CollectedData
from devicetrust.client import AuthClient
from devicetrust.device.keys import TPMKey
from devicetrust.device.swtpm import SimulatedTPM, manufacture
from devicetrust.device.tpm import TPMDevice

ENROLLMENTS = int(os.environ.get("BENCH_ENROLLMENTS", "30"))
SERIAL = "BENCH-TPM-0001"


def raw_tpm_seconds(tcti: str, ak_file: Path, rounds: int) -> list[float]:
    """The TPM work of one enrollment, done directly: EK read, AK load, ActivateCredential of a credential
    made locally for that AK, and a quote over the ceremony's PCRs."""
    samples = []
    with TPMDevice(tcti) as tpm:
        for _ in range(rounds):
            started = time.perf_counter()
            endorsement = tpm.endorsement()
            ak = tpm.load_or_create_ak(ak_file)
            from cryptography.hazmat.primitives import serialization

            ek_key = serialization.load_der_public_key(endorsement.ek_public_der)
            blob, encrypted = make_credential(ek_key, parse_tpmt_public(ak.public_area).name(), secrets.token_bytes(32))  # type: ignore[arg-type]
            tpm.activate_credential(ak, blob, encrypted)
            tpm.quote(ak, secrets.token_bytes(20), QUOTE_PCRS)
            samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dt-bench-tpm-") as tmp, cluster() as running:
        state = Path(tmp)
        manufacture(state / "tpm")
        with SimulatedTPM(state / "tpm") as simulated:
            admin = running.admin()
            device = admin.call("POST", "/v1/devices", {"os_type": "linux", "asset_tag": SERIAL})
            device_id = device["device"]["metadata"]["name"]
            collected = CollectedData(collect_time=datetime.now(UTC).isoformat(), os_type="linux", serial_number=SERIAL)
            full: list[float] = []
            with (
                TPMKey(state / "tsh", simulated.tcti) as key,
                AuthClient(running.addr, ca_pem=running.ca_pem) as client,
            ):
                for _ in range(ENROLLMENTS + 1):
                    token = admin.call("POST", f"/v1/devices/{device_id}/enroll-token", {})["enroll_token"]
                    started = time.perf_counter()
                    begin = client.post(
                        "/v1/devices/enroll/begin",
                        {
                            "token": token,
                            "credential_id": key.credential_id(),
                            "device_data": collected.to_dict(),
                            **key.enroll_payload(),
                        },
                    )
                    answer = key.answer_enrollment(Challenge.from_json(begin))
                    client.post("/v1/devices/enroll/finish", answer.to_json())
                    full.append(time.perf_counter() - started)
            full = full[1:]  # the first one creates the AK
            raw = raw_tpm_seconds(simulated.tcti, state / "tsh" / "tpm-ak.json", ENROLLMENTS)
            admin.close()
    ratio = statistics.median(full) / statistics.median(raw)
    print(f"bench_enroll_tpm[enrollment]: {ENROLLMENTS} enrollments against swtpm: {summary_ms(full)}")
    print(f"bench_enroll_tpm[raw TPM]: EK read + AK load + ActivateCredential + Quote: {summary_ms(raw)}")
    print(f"bench_enroll_tpm: overhead over the raw TPM operations {ratio:.2f}x (median)")


if __name__ == "__main__":
    main()
