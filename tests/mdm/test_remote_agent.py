"""The Jamf service apart from the auth service: joins with a ``--type=mdm`` token and syncs over HTTPS
(ApiSink -> /v1/mdm/... -> BackendSink on the cluster), against a real cluster and the fake Jamf."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pydantic
import pytest

from devicetrust.client import body, pinned_ssl_context
from devicetrust.config import AdminIdentity, load_config
from devicetrust.errors import AccessDeniedError, AuthenticationError, ConfigError, ValidationError
from devicetrust.mdm.api_sink import (
    ApiSink,
    apply_result_from_model,
    apply_result_to_model,
    observation_from_model,
    observation_to_model,
    removal_from_model,
    removal_to_model,
    source_from_model,
    source_to_model,
    stored_device_from_model,
    stored_device_to_model,
    sync_report_from_model,
    sync_report_to_model,
)
from devicetrust.mdm.diff import Observation, SourceDevice, StoredDevice
from devicetrust.mdm.jamf.client import JamfClient
from devicetrust.mdm.jamf.config import JamfServiceConfig
from devicetrust.mdm.jamf.service import JamfService, default_client
from devicetrust.mdm.sink import ApplyResult, Removal, SyncReport
from devicetrust.protocol import (
    MdmApplyResponse,
    MdmDeleteRequest,
    MdmDevice,
    MdmObservation,
    MdmRemoval,
    MdmSource,
    MdmSyncReport,
    Message,
)
from devicetrust.types import DeviceProfile, DeviceSource
from tests.integration.cluster import BIN, Cluster, start_cluster
from tests.mdm.conftest import CLIENT_ID, FAST_RETRY, JamfSetup

JAMF = DeviceSource("jamf", "jamf")
_Model = TypeVar("_Model", bound=pydantic.BaseModel)


# -- codecs ---------------------------------------------------------------------------------------------------


def _observation() -> Observation:
    return Observation(
        external_id="42",
        os_type="macos",
        asset_tag="C02XJ0ABHX87",
        profile=DeviceProfile(
            model_identifier="MacBookPro18,3",
            os_version="14.4.1",
            os_build="23E224",
            os_usernames=("alice", "bob"),
            jamf_binary_version="11.4.1",
            external_id="42",
            update_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        report_time=datetime(2026, 1, 2, 3, 0, tzinfo=UTC),
        name="Alice's Mac",
    )


def _wire(model: type[_Model], value: Message) -> _Model:
    """``value`` as the agent sends it and the auth service reads it: JSON, then the route's model."""
    return model.model_validate(json.loads(json.dumps(body(value))))


def test_the_wire_carries_every_value() -> None:
    observation = _observation()
    assert observation_from_model(_wire(MdmObservation, observation_to_model(observation))) == observation
    bare = Observation(external_id="7", os_type="ios", asset_tag="F17ABC", profile=DeviceProfile())
    assert observation_from_model(_wire(MdmObservation, observation_to_model(bare))) == bare
    stored = StoredDevice("id-1", "macos", "C02", "jamf", "jamf", "42", 3, 2**64 - 1)
    assert stored_device_from_model(_wire(MdmDevice, stored_device_to_model(stored))) == stored
    hand = StoredDevice("id-2", "linux", "L1", None, None, None, 1, 0)
    assert stored_device_from_model(_wire(MdmDevice, stored_device_to_model(hand))) == hand
    removal = Removal("id-1", "macos", "C02", "no longer in the MDM")
    assert removal_from_model(_wire(MdmRemoval, removal_to_model(removal))) == removal
    result = ApplyResult(created=1, updated=2, unchanged=3, foreign=4, conflicts=5)
    assert apply_result_from_model(_wire(MdmApplyResponse, apply_result_to_model(result))) == result
    report = SyncReport(
        "jamf", "computers ''", "full", datetime(2026, 1, 2, tzinfo=UTC), duration_s=1.5, records=9, notes=["n"]
    )
    report.error = "boom"
    assert sync_report_from_model(_wire(MdmSyncReport, sync_report_to_model(report))) == report
    assert source_from_model(_wire(MdmSource, source_to_model(JAMF))) == JAMF


def test_the_wire_format_is_the_one_agents_already_speak() -> None:
    # an observation and a sync report exactly as agents before the typed models sent them
    earlier_observation = {
        "external_id": "42",
        "os_type": "macos",
        "asset_tag": "C02XJ0ABHX87",
        "profile": {
            "model_identifier": "MacBookPro18,3",
            "os_version": "14.4.1",
            "os_build": "23E224",
            "os_build_supplemental": "",
            "os_usernames": ["alice", "bob"],
            "jamf_binary_version": "11.4.1",
            "external_id": "42",
            "update_time": "2026-01-02T03:04:05Z",
        },
        "report_time": "2026-01-02T03:00:00+00:00",
        "name": "Alice's Mac",
    }
    assert observation_from_model(MdmObservation.model_validate(earlier_observation)) == _observation()
    sent = json.loads(json.dumps(body(observation_to_model(_observation()))))
    assert sent.keys() == earlier_observation.keys() and sent["profile"].keys() == earlier_observation["profile"].keys()
    assert datetime.fromisoformat(sent["report_time"]) == _observation().report_time
    earlier_report = {
        "source": "jamf",
        "inventory": "computers",
        "kind": "partial",
        "started": "2026-01-02T00:00:00+00:00",
        "origin": "jamf",
        "duration_s": 1,
        "pages": 1,
        "records": 3,
        "error": None,
        "notes": [],
    }
    report = sync_report_from_model(MdmSyncReport.model_validate(earlier_report))
    assert (report.records, report.created, report.duration_s, report.started.tzinfo) == (3, 0, 1.0, UTC)
    assert {"removals", "source"} == set(
        body(MdmDeleteRequest.model_construct(source=source_to_model(JAMF), removals=[]))
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"os_type": "amiga"}, r"^observation\.os_type: invalid OS type"),
        ({"asset_tag": ""}, r"^observation\.asset_tag: "),
        ({"profile": {"os_usernames": ["alice", ""]}}, r"^observation\.profile\.os_usernames\[1\]: "),
    ],
)
def test_observations_are_checked_as_the_sync_checks_its_own(bad: dict[str, Any], message: str) -> None:
    wire = body(observation_to_model(_observation()))
    with pytest.raises(ValidationError, match=message):
        observation_from_model(MdmObservation.model_validate({**wire, **bad}))


@pytest.mark.parametrize(
    "bad",
    [
        {"profile": {"os_usernames": "root"}},
        {"report_time": "yesterday"},
        {"report_time": "2026-01-01T00:00:00"},
        {"external_id": 42},
        {"asset_tag": "x" * 1025},
    ],
)
def test_the_wire_model_refuses_what_is_not_an_observation(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        MdmObservation.model_validate({**body(observation_to_model(_observation())), **bad})


# -- config ---------------------------------------------------------------------------------------------------


def test_remote_config(jamf: JamfSetup, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    config = jamf.config(auth_server="127.0.0.1:3025", token_file=str(token_file), auth_ca_file=str(jamf.pki.ca_file))
    assert (config.auth_server, config.join_token) == ("127.0.0.1:3025", "abc")
    assert config.auth_ca_pem is not None and "BEGIN CERTIFICATE" in config.auth_ca_pem
    assert "abc" not in repr(config)
    with pytest.raises(ConfigError, match="join_token or token_file"):
        jamf.config(auth_server="127.0.0.1:3025", auth_ca_file=str(jamf.pki.ca_file))
    with pytest.raises(ConfigError, match="auth_ca_file"):
        jamf.config(auth_server="127.0.0.1:3025", join_token="abc")
    with pytest.raises(ConfigError, match="auth_server"):
        jamf.config(join_token="abc")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        jamf.config(auth_server="nowhere", join_token="abc", auth_ca_file=str(jamf.pki.ca_file))


# -- against a real cluster -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield started
    finally:
        started.stop()


def _admin(cluster: Cluster) -> AdminIdentity:
    return AdminIdentity.from_json((cluster.root / "data" / "admin" / "identity.json").read_text())


def _mdm_token(cluster: Cluster) -> str:
    result = cluster.tctl("tokens", "add", "--type=mdm", "--format=json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["token"])


def _devices(cluster: Cluster) -> list[dict[str, Any]]:
    result = cluster.tctl("devices", "ls", "--format=json")
    assert result.returncode == 0, result.stderr
    devices: list[dict[str, Any]] = json.loads(result.stdout)
    return devices


def _fast_client(config: JamfServiceConfig) -> JamfClient:
    return default_client(config, FAST_RETRY)


def _sink(cluster: Cluster, token: str, name: str = "jamf") -> ApiSink:
    return ApiSink(cluster.proxy, ca_pem=_admin(cluster).host_ca_pem, join_token=token, name=name)


@pytest.mark.integration
def test_remote_sync_through_the_api(cluster: Cluster, jamf: JamfSetup) -> None:
    token = _mdm_token(cluster)

    async def sync() -> list[SyncReport]:
        async with _sink(cluster, token) as sink:
            service = JamfService(jamf.config(), sink, client_factory=_fast_client)
            return await service.sync_once(full=True)

    [report] = asyncio.run(sync())
    assert report.error is None and report.created == 10
    jamf_devices = [d for d in _devices(cluster) if (d["spec"].get("source") or {}).get("name") == "jamf"]
    assert len(jamf_devices) == 10
    assert all(d["spec"]["source"]["origin"] == "jamf" for d in jamf_devices)
    assert all(d["spec"]["profile"]["os_version"] for d in jamf_devices)
    # a second full sync (the same token: multi-use until it expires) changes nothing
    [again] = asyncio.run(sync())
    assert (again.error, again.created, again.updated, again.unchanged) == (None, 0, 0, 10)
    # one summary event per sync, and the device events, by the jamf service (audit=server.audit)
    audit = cluster.tctl("audit", "ls", "--type=mdm.sync", "--type=mdm.join", "--format=json")
    assert audit.returncode == 0, audit.stderr
    found = json.loads(audit.stdout)
    assert [e["event"] for e in found].count("mdm.sync") == 2, found
    assert any(e["event"] == "mdm.join" and e["source"] == "jamf" for e in found), found
    assert all(e["user"] == "jamf_service:jamf" for e in found if e["event"] == "mdm.sync")
    assert all(e.get("cluster_name") == "test.cluster" for e in found)


@pytest.mark.integration
def test_a_wrong_token_is_refused(cluster: Cluster) -> None:
    async def join() -> None:
        async with _sink(cluster, "not-a-token") as sink:
            await sink.join()

    with pytest.raises(AuthenticationError):
        asyncio.run(join())

    # a node token is not an mdm token
    result = cluster.tctl("tokens", "add", "--type=node", "--format=json")
    node_token = str(json.loads(result.stdout)["token"])

    async def join_node_token() -> None:
        async with _sink(cluster, node_token) as sink:
            await sink.join()

    with pytest.raises(AuthenticationError):
        asyncio.run(join_node_token())


@pytest.mark.integration
def test_a_session_only_touches_its_own_source(cluster: Cluster) -> None:
    added = cluster.tctl("devices", "add", "--os=macos", "--asset-tag=HANDMADE0001", "--format=json")
    assert added.returncode == 0, added.stderr
    hand = next(d for d in _devices(cluster) if d["spec"]["asset_tag"] == "HANDMADE0001")
    device_id = hand["metadata"]["name"]
    token = _mdm_token(cluster)
    other_source = DeviceSource("other", "jamf")
    removal = Removal(device_id, "macos", "HANDMADE0001", "test")

    async def attempts() -> tuple[int, list[StoredDevice], list[StoredDevice], list[SourceDevice]]:
        async with _sink(cluster, token) as sink:
            with pytest.raises(AccessDeniedError):
                await sink.delete(other_source, [removal])
            with pytest.raises(AccessDeniedError):
                await sink.apply(other_source, [_observation()], new_keys=frozenset())
            deleted = await sink.delete(JAMF, [removal])  # the device is not this source's: left alone
            # a lookup and the source's list answer with the session's own devices only
            looked_up = await sink.lookup([("macos", "HANDMADE0001")])
            own, _ = await sink.source_devices(JAMF, None)
            devices: list[StoredDevice] = []
            page: str | None = None
            while True:
                items, page = await sink.scan(page)
                devices.extend(items)
                if page is None:
                    return deleted, devices, looked_up, own

    deleted, scanned, looked_up, own = asyncio.run(attempts())
    assert deleted == 0
    assert any(d["metadata"]["name"] == device_id for d in _devices(cluster))
    assert all(device.source_name == "jamf" for device in scanned)
    assert looked_up == []
    assert device_id not in {device.id for device in own}
    # callers other than mdm agents are refused
    admin = _admin(cluster)
    with httpx.Client(
        base_url=f"https://{cluster.proxy}",
        verify=pinned_ssl_context(admin.host_ca_pem),
        headers={"Authorization": f"Bearer {admin.token}"},
    ) as http:
        assert http.get("/v1/mdm/devices").status_code == 403
        assert http.get("/v1/mdm/devices/identities", params={"origin": "jamf"}).status_code == 403
        lookup = {"identities": [{"os_type": "macos", "asset_tag": "HANDMADE0001"}]}
        assert http.post("/v1/mdm/devices/lookup", json=lookup).status_code == 403
        removals = {"source": {"name": "jamf", "origin": "jamf"}, "removals": []}
        assert http.post("/v1/mdm/devices/delete", json=removals).status_code == 403


@pytest.mark.integration
def test_a_jamf_only_daemon_joins_and_syncs(jamf: JamfSetup, tmp_path: Path) -> None:
    # a cluster of its own: the module's already holds the fake's devices under source "jamf"
    cluster = start_cluster(tmp_path / "cluster")
    try:
        _run_jamf_only_daemon(cluster, jamf, tmp_path)
    finally:
        cluster.stop()


def _run_jamf_only_daemon(cluster: Cluster, jamf: JamfSetup, tmp_path: Path) -> None:
    admin = _admin(cluster)
    ca_file = tmp_path / "host-ca.pem"
    ca_file.write_text(admin.host_ca_pem)
    token_file = tmp_path / "mdm-token"
    token_file.write_text(_mdm_token(cluster))
    config_path = tmp_path / "devicetrust.yaml"
    config_path.write_text(
        f"""version: v1
devicetrust:
  data_dir: {tmp_path / "data"}
auth_service:
  enabled: false
ssh_service:
  enabled: false
jamf_service:
  enabled: true
  name: jamf
  api_endpoint: {jamf.url}
  client_id: {CLIENT_ID}
  client_secret_file: {jamf.secret_file}
  ca_file: {jamf.pki.ca_file}
  sync_delay: 0s
  auth_server: {cluster.proxy}
  token_file: {token_file}
  auth_ca_file: {ca_file}
"""
    )
    load_config(config_path)
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(BIN / "devicetrust"), "start", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=cluster.env(),
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            remote = [d for d in _devices(cluster) if (d["spec"].get("source") or {}).get("name") == "jamf"]
            if len(remote) == 10:
                break
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.integration
def test_state_is_per_source_and_pages_are_bounded(cluster: Cluster) -> None:
    token = _mdm_token(cluster)
    tiny = {"external_id": "1", "os_type": "macos", "asset_tag": "T", "profile": {}}

    async def run() -> tuple[str | None, str | None, int, int, list[tuple[int, str]]]:
        async with _sink(cluster, token, "jamf") as jamf_sink, _sink(cluster, token, "other") as other_sink:
            await jamf_sink.save_state("jamf/jamf/entry/cut", "2026-01-01T00:00:00+00:00")
            mine = await jamf_sink.load_state("jamf/jamf/entry/cut")
            theirs = await other_sink.load_state("jamf/jamf/entry/cut")
            # a key is one path, never cut short at a "?" into another key
            with pytest.raises(ValidationError) as refused:
                await jamf_sink.save_state("jamf/cut?x", "never stored")
            assert str(refused.value) == "state key: 'jamf/cut?x' is not valid"
            assert await jamf_sink.load_state("jamf/cut") is None
            session = await jamf_sink.join()
            async with httpx.AsyncClient(
                base_url=f"https://{cluster.proxy}",
                verify=pinned_ssl_context(_admin(cluster).host_ca_pem),
                headers={"Authorization": f"Bearer {session}"},
            ) as http:
                body = {"source": {"name": "jamf", "origin": "jamf"}, "observations": [tiny] * 2001, "new_keys": []}
                response = await http.post("/v1/mdm/devices/apply", json=body)
                identities = [{"os_type": "macos", "asset_tag": f"T{index}"} for index in range(2001)]
                lookup = await http.post("/v1/mdm/devices/lookup", json={"identities": identities})
                # one line naming the field, whether the request's shape or the sync's checks refuse it
                errors = []
                for observation in ({**tiny, "report_time": "yesterday"}, {**tiny, "os_type": "amiga"}):
                    bad = {"source": {"name": "jamf", "origin": "jamf"}, "observations": [tiny, observation]}
                    refused = await http.post("/v1/mdm/devices/apply", json=bad)
                    errors.append((refused.status_code, refused.json()["error"]["message"]))
            return mine, theirs, response.status_code, lookup.status_code, errors

    mine, theirs, status, lookup_status, errors = asyncio.run(run())
    assert mine == "2026-01-01T00:00:00+00:00"
    assert theirs is None
    assert (status, lookup_status) == (400, 400)
    assert [code for code, _ in errors] == [400, 400]
    assert errors[0][1].startswith("observations.1.report_time: ")
    assert errors[1][1].startswith("observations[1].os_type: invalid OS type")
