"""Devices end to end: a real daemon, real CLIs, and simulated devices with their own swtpm."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.cluster import PASSWORD, Cluster, start_cluster
from tests.integration.test_cluster_cli import ok, one_line_error, require_tool

pytestmark = pytest.mark.integration

SHA1_FIRMWARE_LOG = Path(__file__).parents[1] / "attestation" / "vectors" / "go-attestation" / "option_rom_eventlog"
DEVICE_EXTENSIONS = {"teleport-device-asset-tag", "teleport-device-credential-id", "teleport-device-id"}


def _require_swtpm() -> None:
    for tool in ("swtpm", "swtpm_setup"):
        require_tool(tool)
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"tpm2-pytss is required in CI: {err}")
        pytest.skip(f"tpm2-pytss unavailable: {err}")


class Laptop:
    """A simulated device: its own swtpm, serial and tsh home, used by one user."""

    def __init__(self, cluster: Cluster, root: Path, user: str, serial: str) -> None:
        from devicetrust.device.swtpm import SimulatedTPM, manufacture

        self.cluster, self.user, self.serial = cluster, user, serial
        self.tpm_dir = root / f"tpm-{serial}-{uuid.uuid4().hex[:8]}"
        manufacture(self.tpm_dir)
        self.tpm = SimulatedTPM(self.tpm_dir)
        self.tpm.start()
        self.home = cluster.home(f"{user}@{serial}")
        #: the event log the device sends with its quotes (none by default: swtpm has no firmware)
        self.event_log: Path | None = None

    def env(self) -> dict[str, str]:
        extra = {} if self.event_log is None else {"DEVICETRUST_TPM_EVENT_LOG": str(self.event_log)}
        return self.cluster.env(
            TSH_HOME=str(self.home), DEVICETRUST_TPM_TCTI=self.tpm.tcti, DEVICETRUST_ASSET_TAG=self.serial, **extra
        )

    def tsh(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.run("tsh", *args, input=input, env=self.env())

    def login(self) -> subprocess.CompletedProcess[str]:
        return self.tsh(
            "login",
            f"--proxy={self.cluster.proxy}",
            f"--user={self.user}",
            "--password-stdin",
            "--format=json",
            input=PASSWORD,
        )

    def status(self) -> dict[str, object]:
        return dict(json.loads(ok(self.tsh("status", "--format=json"))))

    def stop(self) -> None:
        self.tpm.stop()


@pytest.fixture(scope="module")
def devices_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _require_swtpm()
    running = start_cluster(tmp_path_factory.mktemp("devices"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def laptops(devices_cluster: Cluster, tmp_path: Path) -> Iterator[list[Laptop]]:
    made: list[Laptop] = []
    yield made
    for laptop in made:
        laptop.stop()


def new_laptop(cluster: Cluster, laptops: list[Laptop], tmp_path: Path, user: str, serial: str) -> Laptop:
    laptop = Laptop(cluster, tmp_path, user, serial)
    laptops.append(laptop)
    return laptop


def enroll_token(cluster: Cluster, asset_tag: str) -> str:
    out = ok(cluster.tctl("devices", "enroll", f"--asset-tag={asset_tag}"))
    lines = out.strip().splitlines()
    assert lines[0] == f'Run the command below on device "{asset_tag}" to enroll it:'
    assert lines[1].startswith("tsh device enroll --token=")
    return lines[1].split("=", 1)[1]


def set_device_trust(cluster: Cluster, tmp_path: Path, **settings: object) -> None:
    doc = json.loads(ok(cluster.tctl("get", "cap", "--format=json")))[0]
    doc["spec"]["device_trust"] = {"mode": "optional", **settings}
    path = tmp_path / "cap.json"
    path.write_text(json.dumps(doc))
    ok(cluster.tctl("create", "-f", str(path)))


def test_seed_enrollment_story_with_a_real_tpm(devices_cluster: Cluster, laptops: list[Laptop], tmp_path: Path) -> None:
    cluster = devices_cluster
    laptop = new_laptop(cluster, laptops, tmp_path, "alice", "SN-0001")

    assert ok(laptop.tsh("device", "asset-tag")).strip() == "SN-0001"
    collected = json.loads(ok(laptop.tsh("device", "collect", "--format=json")))
    assert collected["serial_number"] == "SN-0001" and collected["os_type"] == "linux"

    assert ok(cluster.tctl("devices", "add", "--os=linux", "--asset-tag=SN-0001")).strip() == (
        "Device SN-0001/Linux added to the inventory"
    )
    listing = ok(cluster.tctl("devices", "ls"))
    assert "Asset Tag" in listing and "Enroll Status" in listing and "Device ID" in listing
    assert "SN-0001" in listing and "not enrolled" in listing

    invite = cluster.add_user("alice", logins="alice")
    ok(
        laptop.tsh(
            "login", f"--proxy={cluster.proxy}", "--user=alice", f"--token={invite}", "--password-stdin", input=PASSWORD
        )
    )

    token = enroll_token(cluster, "SN-0001")
    assert ok(laptop.tsh("device", "enroll", f"--token={token}")).strip() == 'Device "SN-0001"/Linux enrolled'
    assert "invalid device enrollment token" in one_line_error(laptop.tsh("device", "enroll", f"--token={token}"))

    ok(laptop.tsh("logout"))
    ok(laptop.login())
    status = laptop.status()
    assert set(status["extensions"]) >= DEVICE_EXTENSIONS  # type: ignore[arg-type]
    assert status["device"]["asset_tag"] == "SN-0001"  # type: ignore[index]
    cert = laptop.home / "keys" / cluster.proxy / "alice-cert.pub"
    listing = ok(
        subprocess.run([require_tool("ssh-keygen"), "-L", "-f", str(cert)], capture_output=True, text=True, check=False)
    )
    for extension in DEVICE_EXTENSIONS:
        assert extension in listing

    device = json.loads(ok(cluster.tctl("devices", "get", "--asset-tag=SN-0001", "--format=json")))
    assert device["spec"]["enroll_status"] == "enrolled"
    assert device["spec"]["owner"] == "alice"
    assert device["spec"]["credential"]["attestation_type"] == "tpm_ekcert"
    assert len(device["spec"]["collected_data"]) == 2  # the enrollment record + one authentication

    # Refreshing without logging in again refuses to augment certificates that already carry device data.
    refused = one_line_error(laptop.tsh("device", "authenticate"))
    assert "already carries device extensions" in refused

    events = json.loads(ok(cluster.tctl("audit", "ls", "--format=json", "--limit=1000")))
    kinds = {e["event"] for e in events if e.get("device", {}).get("asset_tag") == "SN-0001"}
    assert {
        "device.create",
        "device.token.create",
        "device.token.spent",
        "device.enroll",
        "device.authenticate",
    } <= kinds
    codes = {e["event"]: e["code"] for e in events}
    assert codes["device.enroll"] == "TV005I" and codes["device.authenticate"] == "TV006I"
    failed = [e for e in events if e["event"] == "device.token.spent" and not e["success"]]
    assert failed and failed[-1]["reason"] == "invalid device enrollment token"


def test_an_unreadable_event_log_is_no_worse_than_none(
    devices_cluster: Cluster, laptops: list[Laptop], tmp_path: Path
) -> None:
    """A real TCG 1.2 (SHA-1) firmware log, then a garbage one: the device enrolls and authenticates as it would
    without a log, and its record and the audit log say the log is unverified, and why."""
    cluster = devices_cluster
    laptop = new_laptop(cluster, laptops, tmp_path, "lena", "SN-LOG1")
    laptop.event_log = tmp_path / "sha1-eventlog"
    shutil.copyfile(SHA1_FIRMWARE_LOG, laptop.event_log)
    ok(cluster.tctl("devices", "add", "--os=linux", "--asset-tag=SN-LOG1"))
    invite = cluster.add_user("lena", logins="lena")
    ok(
        laptop.tsh(
            "login", f"--proxy={cluster.proxy}", "--user=lena", f"--token={invite}", "--password-stdin", input=PASSWORD
        )
    )
    token = enroll_token(cluster, "SN-LOG1")
    assert ok(laptop.tsh("device", "enroll", f"--token={token}")).strip() == 'Device "SN-LOG1"/Linux enrolled'

    laptop.event_log.write_bytes(b"\x00" * 40)
    ok(laptop.tsh("logout"))
    ok(laptop.login())
    assert laptop.status()["device"]["asset_tag"] == "SN-LOG1"  # type: ignore[index]

    sha1_unverified = (
        "unverified: TCG 1.2 (SHA-1) event log (60 events) has only SHA-1 digests, "
        "and the SHA-1 PCR bank was not quoted"
    )
    garbage_unverified = "unverified: malformed event log: truncated"
    device = json.loads(ok(cluster.tctl("devices", "get", "--asset-tag=SN-LOG1", "--format=json")))
    assert [record["event_log"] for record in device["spec"]["collected_data"]] == [
        sha1_unverified,
        garbage_unverified,
    ]
    events = json.loads(ok(cluster.tctl("audit", "ls", "--format=json", "--limit=1000")))
    logged = {
        e["event"]: e["event_log"]
        for e in events
        if e.get("device", {}).get("asset_tag") == "SN-LOG1" and e["event"] in ("device.enroll", "device.authenticate")
    }
    assert logged == {"device.enroll": sha1_unverified, "device.authenticate": garbage_unverified}


def test_a_device_cannot_change_tpm_without_an_admin(
    devices_cluster: Cluster, laptops: list[Laptop], tmp_path: Path
) -> None:
    cluster = devices_cluster
    first = new_laptop(cluster, laptops, tmp_path, "bob", "SN-0002")
    cluster.signup_and_login("bob")
    shutil.copytree(cluster.home("bob"), first.home, dirs_exist_ok=True)
    ok(cluster.tctl("devices", "add", "--os=linux", "--asset-tag=SN-0002"))
    ok(first.tsh("device", "enroll", f"--token={enroll_token(cluster, 'SN-0002')}"))

    # Same serial, another TPM: refused until an administrator unenrolls the device.
    impostor = new_laptop(cluster, laptops, tmp_path, "bob", "SN-0002")
    impostor.home = cluster.home("bob@impostor")
    shutil.copytree(cluster.home("bob"), impostor.home, dirs_exist_ok=True)
    refused = one_line_error(impostor.tsh("device", "enroll", f"--token={enroll_token(cluster, 'SN-0002')}"))
    assert "enrolled with a different TPM" in refused
    # The impostor's login gets no device extensions either: its TPM holds no enrolled key.
    ok(impostor.login())
    assert not DEVICE_EXTENSIONS & set(impostor.status()["extensions"])  # type: ignore[arg-type]

    ok(cluster.tctl("devices", "unenroll", "--asset-tag=SN-0002"))
    device = json.loads(ok(cluster.tctl("devices", "get", "--asset-tag=SN-0002", "--format=json")))
    assert device["spec"]["enroll_status"] == "not_enrolled" and not device["spec"].get("owner")
    ok(impostor.tsh("device", "enroll", f"--token={enroll_token(cluster, 'SN-0002')}"))


def test_auto_enroll_and_self_enroll(devices_cluster: Cluster, laptops: list[Laptop], tmp_path: Path) -> None:
    cluster = devices_cluster
    carol = new_laptop(cluster, laptops, tmp_path, "carol", "SN-0003")
    cluster.signup_and_login("carol")
    shutil.copytree(cluster.home("carol"), carol.home, dirs_exist_ok=True)
    ok(cluster.tctl("devices", "add", "--os=linux", "--asset-tag=SN-0003"))
    set_device_trust(cluster, tmp_path, auto_enroll=True)
    try:
        result = carol.login()
        ok(result)
        assert 'Device "SN-0003"/Linux enrolled' in result.stderr
        assert set(carol.status()["extensions"]) >= DEVICE_EXTENSIONS  # type: ignore[arg-type]
    finally:
        set_device_trust(cluster, tmp_path)

    # An unregistered device is not auto-enrolled; --current-device registers it, for editors only.
    dave = new_laptop(cluster, laptops, tmp_path, "dave", "SN-0004")
    cluster.signup_and_login("dave")
    shutil.copytree(cluster.home("dave"), dave.home, dirs_exist_ok=True)
    denied = one_line_error(dave.tsh("device", "enroll", "--current-device"))
    assert 'missing permission "create" on "device"' in denied
    ok(cluster.tctl("users", "update", "dave", "--set-roles=access,editor"))
    out = ok(dave.tsh("device", "enroll", "--current-device"))
    assert out.strip() == 'Device "SN-0004"/Linux enrolled'
    assert "SN-0004" in ok(cluster.tctl("devices", "ls"))


def test_ekcert_allowed_cas(devices_cluster: Cluster, laptops: list[Laptop], tmp_path: Path) -> None:
    from devicetrust.device.swtpm import ek_ca_certificates

    cluster = devices_cluster
    erin = new_laptop(cluster, laptops, tmp_path, "erin", "SN-0005")
    other = new_laptop(cluster, laptops, tmp_path, "erin", "SN-0006")
    cluster.signup_and_login("erin")
    for laptop in (erin, other):
        shutil.copytree(cluster.home("erin"), laptop.home, dirs_exist_ok=True)
        ok(cluster.tctl("devices", "add", "--os=linux", f"--asset-tag={laptop.serial}"))
    set_device_trust(cluster, tmp_path, ekcert_allowed_cas=ek_ca_certificates(erin.tpm_dir))
    try:
        ok(erin.tsh("device", "enroll", f"--token={enroll_token(cluster, 'SN-0005')}"))
        device = json.loads(ok(cluster.tctl("devices", "get", "--asset-tag=SN-0005", "--format=json")))
        assert device["spec"]["credential"]["attestation_type"] == "tpm_ekcert_trusted"
        # The other laptop's EK was issued by its own swtpm CA, which the cluster does not trust.
        refused = one_line_error(other.tsh("device", "enroll", f"--token={enroll_token(cluster, 'SN-0006')}"))
        assert "EK" in refused or "endorsement" in refused
    finally:
        set_device_trust(cluster, tmp_path)


def test_unsafe_software_keys_only_when_allowed(devices_cluster: Cluster, tmp_path: Path) -> None:
    cluster = devices_cluster
    cluster.signup_and_login("frank")
    env = cluster.env(TSH_HOME=str(cluster.home("frank")), DEVICETRUST_ASSET_TAG="SN-SOFT-1")
    ok(cluster.tctl("devices", "add", "--os=linux", "--asset-tag=SN-SOFT-1"))
    args = ("device", "enroll", "--device-key=unsafe-software")
    refused = cluster.run("tsh", *args, f"--token={enroll_token(cluster, 'SN-SOFT-1')}", env=env)
    assert "allow_unsafe_software_keys" in one_line_error(refused)
    set_device_trust(cluster, tmp_path, allow_unsafe_software_keys=True)
    try:
        result = cluster.run("tsh", *args, f"--token={enroll_token(cluster, 'SN-SOFT-1')}", env=env)
        assert ok(result).strip() == 'Device "SN-SOFT-1"/Linux enrolled'
        assert "UNSAFE SOFTWARE DEVICE KEY" in result.stderr
        login = cluster.run(
            "tsh", "login", "--device-key=unsafe-software", "--password-stdin", "--format=json", input=PASSWORD, env=env
        )
        assert set(json.loads(ok(login))["extensions"]) >= DEVICE_EXTENSIONS
    finally:
        set_device_trust(cluster, tmp_path)


def test_device_trust_off_refuses_authentication(devices_cluster: Cluster, tmp_path: Path) -> None:
    cluster = devices_cluster
    cluster.signup_and_login("gina")
    doc = json.loads(ok(cluster.tctl("get", "cap", "--format=json")))[0]
    doc["spec"]["device_trust"] = {"mode": "off"}
    path = tmp_path / "off.json"
    path.write_text(json.dumps(doc))
    ok(cluster.tctl("create", "-f", str(path)))
    try:
        env = cluster.env(TSH_HOME=str(cluster.home("gina")), DEVICETRUST_ASSET_TAG="SN-OFF")
        result = cluster.run("tsh", "device", "authenticate", "--device-key=unsafe-software", env=env)
        assert "device trust disabled by cluster settings" in one_line_error(result)
    finally:
        set_device_trust(cluster, tmp_path)


def test_one_token_many_concurrent_enrollments(devices_cluster: Cluster, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from devicetrust.crypto.keys import generate_private_key

    cluster = devices_cluster
    set_device_trust(cluster, tmp_path, allow_unsafe_software_keys=True)
    try:
        ok(cluster.tctl("devices", "add", "--os=linux", "--asset-tag=SN-RACE"))
        token = enroll_token(cluster, "SN-RACE")
        identity = json.loads((cluster.root / "data" / "admin" / "identity.json").read_text())
        context = ssl.create_default_context(cadata=identity["host_ca_pem"])
        key_der = (
            generate_private_key()
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        import base64

        body = {
            "token": token,
            "credential_id": "race-credential",
            "device_data": {
                "collect_time": "2026-11-25T00:00:00+00:00",
                "os_type": "linux",
                "serial_number": "SN-RACE",
            },
            "key": {"public_key_der": base64.b64encode(key_der).decode(), "attestation_type": "unsafe_software"},
        }
        statuses: list[int] = []
        barrier = threading.Barrier(8)

        def attempt() -> None:
            with httpx.Client(base_url=f"https://{cluster.proxy}", verify=context) as client:
                barrier.wait()
                statuses.append(client.post("/v1/devices/enroll/begin", json=body).status_code)

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(statuses) == [200] + [400] * 7
    finally:
        set_device_trust(cluster, tmp_path)


def test_a_locked_device_cannot_authenticate(devices_cluster: Cluster, tmp_path: Path) -> None:
    cluster = devices_cluster
    cluster.signup_and_login("hank")
    env = cluster.env(TSH_HOME=str(cluster.home("hank")), DEVICETRUST_ASSET_TAG="SN-LOCK-1")
    set_device_trust(cluster, tmp_path, allow_unsafe_software_keys=True)
    try:
        ok(cluster.tctl("devices", "add", "--os=linux", "--asset-tag=SN-LOCK-1"))
        token = enroll_token(cluster, "SN-LOCK-1")
        ok(cluster.run("tsh", "device", "enroll", "--device-key=unsafe-software", f"--token={token}", env=env))
        out = ok(cluster.tctl("devices", "lock", "--asset-tag=SN-LOCK-1", "--message=stolen laptop", "--ttl=24h"))
        assert out.startswith('Created a lock with name "')
        login = cluster.run(
            "tsh", "login", "--device-key=unsafe-software", "--password-stdin", "--format=json", input=PASSWORD, env=env
        )
        assert "stolen laptop" in login.stderr
        assert not DEVICE_EXTENSIONS & set(json.loads(ok(login))["extensions"])
        events = json.loads(ok(cluster.tctl("audit", "ls", "--type=device.authenticate", "--format=json")))
        assert any(not e["success"] and e["reason"] == "locked" for e in events)
        locks = json.loads(ok(cluster.tctl("get", "locks", "--format=json")))
        assert any(lock["spec"]["message"] == "stolen laptop" for lock in locks)
    finally:
        set_device_trust(cluster, tmp_path)


def test_a_locked_user_gets_no_certificates(devices_cluster: Cluster) -> None:
    cluster = devices_cluster
    cluster.signup_and_login("ivy")
    out = ok(cluster.tctl("lock", "--user=ivy", "--message=on leave"))
    name = out.split('"')[1]
    refused = one_line_error(cluster.login("ivy"))
    assert "user ivy is locked: on leave" in refused
    ok(cluster.tctl("rm", f"lock/{name}"))
    ok(cluster.login("ivy"))
    assert "exactly one of" in one_line_error(cluster.tctl("lock", "--user=ivy", "--role=access"))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/devices/enroll/begin", {}),
        ("/v1/devices/enroll/begin", {"token": "x", "credential_id": "c", "device_data": {}}),
        ("/v1/devices/enroll/begin", {"token": "x", "credential_id": "c", "device_data": {"os_type": 7}}),
        ("/v1/devices/enroll/begin", {"token": "x" * 300, "credential_id": "c", "device_data": {}}),
        (
            "/v1/devices/enroll/begin",
            {
                "token": "x",
                "credential_id": "c",
                "device_data": {"collect_time": "t", "os_type": "linux", "serial_number": "S"},
                "tpm": {"ak_public": "!!"},
            },
        ),
        (
            "/v1/devices/enroll/begin",
            {
                "token": "x",
                "credential_id": "c",
                "device_data": {"collect_time": "t", "os_type": "linux", "serial_number": "S"},
                "key": {"public_key_der": "AA=="},
            },
        ),
        ("/v1/devices/enroll/finish", {}),
        ("/v1/devices/enroll/finish", {"ceremony_id": "nope"}),
        (
            "/v1/devices/enroll/finish",
            {"ceremony_id": "c", "quote": {"attest": "AAAA", "signature": "AAAA", "pcr_values": {"99": "00"}}},
        ),
        ("/v1/devices/enroll/finish", {"ceremony_id": "c", "signature": "A" * 5000}),
        ("/v1/devices/authenticate/begin", {"credential_id": "c", "device_data": {}, "ssh_cert": "garbage"}),
        ("/v1/devices/authenticate/finish", {"ceremony_id": "c"}),
    ],
)
def test_malformed_ceremony_messages_get_a_clear_4xx(devices_cluster: Cluster, path: str, body: object) -> None:
    identity = json.loads((devices_cluster.root / "data" / "admin" / "identity.json").read_text())
    context = ssl.create_default_context(cadata=identity["host_ca_pem"])
    with httpx.Client(base_url=f"https://{devices_cluster.proxy}", verify=context) as client:
        for headers in ({}, {"Authorization": "Bearer not-a-session"}):
            response = client.post(path, json=body, headers=headers)
            assert 400 <= response.status_code < 500, response.text
            assert response.json()["error"]["message"]
        garbage = client.post(path, content=b"\x00\xff not json", headers={"Content-Type": "application/json"})
        assert 400 <= garbage.status_code < 500


def test_devices_are_resources_too(devices_cluster: Cluster, tmp_path: Path) -> None:
    cluster = devices_cluster
    device_id = str(uuid.uuid4())
    doc = tmp_path / "device.yaml"
    doc.write_text(
        f"kind: device\nversion: v1\nmetadata:\n  name: {device_id}\nspec:\n  os_type: macOS\n"
        "  asset_tag: C02XJ0ABHX87\n"
    )
    assert 'device "' in ok(cluster.tctl("create", "-f", str(doc)))
    listed = json.loads(ok(cluster.tctl("get", "devices", "--format=json")))
    mine = [d for d in listed if d["metadata"]["name"] == device_id]
    assert mine and mine[0]["spec"]["os_type"] == "macos" and mine[0]["spec"]["asset_tag"] == "C02XJ0ABHX87"
    assert "already exists" in one_line_error(cluster.tctl("create", "-f", str(doc)))
    enrolled = tmp_path / "enrolled.yaml"
    enrolled.write_text(
        doc.read_text().replace("C02XJ0ABHX87", "C02OTHER").replace(device_id, str(uuid.uuid4()))
        + "  enroll_status: enrolled\n  credential:\n    id: x\n    attestation_type: unsafe_software\n"
        "    public_key_der: AAAA\n"
    )
    assert "spec.credential" in one_line_error(cluster.tctl("create", "-f", str(enrolled)))
    ok(cluster.tctl("rm", f"device/{device_id}"))
    assert "not found" in one_line_error(cluster.tctl("devices", "get", f"--device-id={device_id}"))
    assert "no device with asset tag" in one_line_error(cluster.tctl("devices", "get", "--asset-tag=NOPE"))
