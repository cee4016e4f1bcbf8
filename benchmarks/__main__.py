"""`python -m benchmarks [NAME...]` runs the named benchmarks (default: all)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "bench_authn",
    "bench_enroll_tpm",
    "bench_ssh_session",
    "bench_jamf_sync",
    "bench_devices_ls",
    "bench_db",
    "bench_kube",
)


def main() -> None:
    names = sys.argv[1:] or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            sys.exit(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        importlib.import_module(f"benchmarks.{name}").main()


if __name__ == "__main__":
    main()
