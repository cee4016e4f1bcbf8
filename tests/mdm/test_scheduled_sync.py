"""The scheduled Jamf sync as users run it — ``devicetrust start`` with a jamf_service section, and
``devicetrust jamf sync`` without ``--once`` — in real processes at the default log level, for several periods."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from devicetrust.storage.backend import Backend
from tests.integration.cluster import BIN, start_cluster
from tests.mdm.conftest import JamfSetup

#: a first full sync, then at least three more periods
SYNCS = 4
#: a guard against a hang, not a measure: the syncs need a few seconds
DEADLINE_S = 90


def _jamf_section(jamf: JamfSetup) -> dict[str, Any]:
    return jamf.section(name="jamf", inventory=[{"sync_period_partial": "1s", "sync_period_full": "3s"}])


def _wait_for_syncs(count: Callable[[], list[str]], process: subprocess.Popen[bytes], log_path: Path) -> list[str]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        kinds = count()
        if len(kinds) >= SYNCS:
            return kinds
        assert process.poll() is None, f"exited early:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, f"{len(kinds)} syncs so far:\n{log_path.read_text()}"
        time.sleep(0.3)


def _check_log(log_path: Path) -> None:
    text = log_path.read_text()
    assert "Traceback" not in text and "crashed" not in text, text
    done = [line for line in text.splitlines() if '"jamf partial sync done"' in line or '"jamf full sync done"' in line]
    assert len(done) >= SYNCS, text
    assert all(json.loads(line)["level"] == "INFO" for line in done)


@pytest.mark.integration
def test_the_daemon_keeps_syncing_on_schedule(jamf: JamfSetup, tmp_path: Path) -> None:
    extra = yaml.safe_dump({"jamf_service": _jamf_section(jamf)})
    cluster = start_cluster(tmp_path / "cluster", extra_config=extra)
    try:

        def sync_kinds() -> list[str]:
            result = cluster.tctl("audit", "ls", "--type", "mdm.sync", "--format", "json")
            assert result.returncode == 0, result.stderr
            return [event["kind"] for event in json.loads(result.stdout)]

        kinds = _wait_for_syncs(sync_kinds, cluster.process, cluster.log_path)
        assert kinds[0] == "full" and "partial" in kinds[1:]
        listed = [r for r in jamf.server.fake.api_requests("/api/v2/computers-inventory") if r.status == 200]
        assert len(listed) >= SYNCS  # each sync read Jamf, not a cache
    finally:
        assert cluster.stop() == 0, cluster.log_path.read_text()
    _check_log(cluster.log_path)


@pytest.mark.integration
def test_jamf_sync_without_once_keeps_syncing(jamf: JamfSetup, tmp_path: Path) -> None:
    database = tmp_path / "backend.sqlite"
    (tmp_path / "data").mkdir()
    config_path = tmp_path / "devicetrust.yaml"
    doc = {
        "version": "v1",
        "devicetrust": {"data_dir": str(tmp_path / "data"), "storage": {"path": str(database)}},
        "jamf_service": _jamf_section(jamf),
    }
    config_path.write_text(yaml.safe_dump(doc))
    log_path = tmp_path / "sync.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(BIN / "devicetrust"), "jamf", "sync", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        def sync_kinds() -> list[str]:
            if not database.exists():
                return []
            try:
                with Backend.open(f"sqlite:///{database}") as backend, backend.begin() as store:
                    return [e.body["kind"] for e in store.audit.search(event_types=["mdm.sync"], limit=100)]
            except sa.exc.OperationalError:  # the file exists before the daemon has created its tables
                return []

        kinds = _wait_for_syncs(sync_kinds, process, log_path)
        assert kinds[0] == "full" and "partial" in kinds[1:]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log_path.read_text()
    _check_log(log_path)
