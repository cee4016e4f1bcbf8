"""Kubernetes end to end: a real daemon (auth service + kube service in front of the fake API server), a laptop
with its own swtpm, the real tsh and kubectl, and a thief holding a copy of the owner's profile but not the
laptop's TPM.

The user's role requires a trusted device: kubectl's exec plugin (``tsh kube credentials``) proves the device for
the cluster; the copied profile gets kubectl's ``Error from server (Forbidden): access to resource requires a
trusted device``; the API server sees exactly the granted user and groups, impersonated.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from devicetrust.access import TRUSTED_DEVICE_REQUIRED
from devicetrust.access.decision import NO_SESSION_PROOF
from tests.fakes.kube_apiserver import FakeKubeAPIServer, running_kube_apiserver
from tests.integration.cluster import free_port, start_cluster
from tests.integration.laptops import StolenProfile, copy_profile, enrolled_laptop
from tests.integration.test_cluster_cli import ok
from tests.integration.test_devices import Laptop, _require_swtpm
from tests.kube.harness import KUBECTL_TIMEOUT_SECONDS, require_kubectl

pytestmark = [pytest.mark.integration]

SERIAL = "SN-KUBE-1"
KUBE_CLUSTER = "prod"
GROUPS = ["developers", "viewers", "system:authenticated"]


@dataclass
class World(StolenProfile):
    api: FakeKubeAPIServer
    root: Path

    def thief_env(self, **extra: str) -> dict[str, str]:
        return super().thief_env(KUBECONFIG=str(self.thief_home / "kubeconfig"), **extra)

    def laptop_env(self) -> dict[str, str]:
        return {**self.laptop.env(), "KUBECONFIG": str(self.laptop.home / "kubeconfig")}

    def kubectl(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [require_kubectl(), f"--cache-dir={Path(env['KUBECONFIG']).parent / 'kube-cache'}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_SECONDS,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    _require_swtpm()
    require_kubectl()
    root = tmp_path_factory.mktemp("kube-access")
    with running_kube_apiserver(root / "apiserver") as api:
        extra = api.kube_service_config(KUBE_CLUSTER, free_port(), root / "sa-token", {"env": "prod"})
        cluster = start_cluster(root / "cluster", extra_config=extra)
        laptop: Laptop | None = None
        try:
            laptop = enrolled_laptop(cluster, root, "alice", SERIAL, roles="access,require-trusted-device")
            ok(cluster.tctl("users", "update", "alice", "--set-kubernetes-groups=viewers"))
            ok(laptop.login())
            deadline = time.monotonic() + 20
            while KUBE_CLUSTER not in ok(laptop.tsh("kube", "ls")):
                assert time.monotonic() < deadline, "the kube service did not announce its cluster"
                time.sleep(0.2)
            yield World(cluster, laptop, copy_profile(laptop, root), api, root)
        finally:
            if laptop is not None:
                laptop.stop()
            cluster.stop()


def test_tsh_kube_ls_shows_the_cluster_and_what_the_roles_grant(world: World) -> None:
    listed = json.loads(ok(world.laptop.tsh("kube", "ls", "--format=json")))
    assert [(c["name"], c["labels"]) for c in listed] == [(KUBE_CLUSTER, {"env": "prod"})]
    assert listed[0]["kubernetes_groups"] == ["developers", "viewers"]
    assert listed[0]["kubernetes_users"] == []


def test_tsh_kube_login_writes_an_exec_plugin_context(world: World) -> None:
    env = world.laptop_env()
    out = ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, "--format=json", env=env))
    context = json.loads(out)["context"]
    config = yaml.safe_load(Path(env["KUBECONFIG"]).read_text())
    assert config["current-context"] == context
    (user,) = [u["user"] for u in config["users"] if u["name"] == context]
    assert user["exec"]["apiVersion"] == "client.authentication.k8s.io/v1"
    assert user["exec"]["args"][:3] == ["kube", "credentials", f"--kube-cluster={KUBE_CLUSTER}"]
    (entry,) = [c["cluster"] for c in config["clusters"] if c["name"] == context]
    assert entry["server"].endswith(f"/kube/{KUBE_CLUSTER}")


def test_kubectl_get_pods_works_from_the_trusted_device(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    result = world.kubectl(env, "get", "pods", "-n", "default")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["web-0", "web-1"]
    # the API server saw the service's token and exactly the granted impersonation, never the client's credentials
    seen = world.api.requests[before:]
    assert seen and all(r.user == "alice" and list(r.groups) == GROUPS for r in seen)
    assert all(r.header("impersonate-group") == GROUPS for r in seen)
    event = world.wait_for_event(
        "kube.request", lambda e: e.get("request_path", "").startswith("/api/v1/namespaces/default/pods")
    )
    assert event["success"] and event["response_code"] == 200 and event["kubernetes_cluster"] == KUBE_CLUSTER
    assert (event["verb"], event["resource_kind"], event["resource_namespace"]) == ("list", "pods", "default")
    assert event["device"]["asset_tag"] == SERIAL, event
    proof_id = event["device_proof"]["id"]
    authn = world.wait_for_event("device.authenticate", lambda e: e.get("proof", {}).get("id") == proof_id)
    assert authn["target"] == {"kind": "kube", "id": KUBE_CLUSTER}


def test_kubectl_auth_whoami_shows_exactly_the_granted_user_and_groups(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    result = world.kubectl(env, "auth", "whoami", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"]["userInfo"] == {"username": "alice", "groups": GROUPS}
    # a group the roles grant may be asked for alone; one they do not grant is refused
    narrowed = world.kubectl(env, "auth", "whoami", "--as=alice", "--as-group=viewers", "-o", "json")
    assert json.loads(narrowed.stdout)["status"]["userInfo"]["groups"] == ["viewers", "system:authenticated"]
    # (kubectl auth whoami hides a 403's message: ask for pods to see it)
    refused = world.kubectl(env, "get", "pods", "--as=alice", "--as-group=system:masters")
    assert refused.returncode != 0
    assert refused.stderr.startswith("Error from server (Forbidden): impersonation request has been denied")
    assert 'group header "system:masters" value is not allowed in roles' in refused.stderr, refused.stderr
    other_user = world.kubectl(env, "get", "pods", "--as=root")
    assert 'user header "root" is not allowed in roles' in other_user.stderr, other_user.stderr


def test_a_copied_profile_is_refused_with_the_exact_message(world: World) -> None:
    env = world.thief_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    result = world.kubectl(env, "get", "pods", "-n", "default")
    assert result.returncode != 0 and "web-0" not in result.stdout
    # kubectl's last word (its discovery warnings before it carry the same message)
    assert result.stderr.splitlines()[-1] == f"Error from server (Forbidden): {TRUSTED_DEVICE_REQUIRED}", result.stderr
    assert world.api.requests[before:] == []  # nothing reached the API server
    event = world.wait_for_event("kube.request", lambda e: not e["success"] and e.get("error") == NO_SESSION_PROOF)
    assert event["response_code"] == 403


def test_a_lock_ends_an_open_watch(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    process = subprocess.Popen(
        [require_kubectl(), "get", "pods", "-n", "default", "-w", "--no-headers"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        assert [process.stdout.readline().split()[0] for _ in range(2)] == ["web-0", "web-1"]
        deadline = time.monotonic() + 10
        while not any("watch=true" in r.query for r in world.api.requests):
            assert time.monotonic() < deadline, "kubectl never started watching"
            time.sleep(0.1)
        world.api.add_pod("default", "before-the-lock")
        assert process.stdout.readline().split()[0] == "before-the-lock"
        ok(world.cluster.tctl("lock", "--user=alice", "--message=stolen laptop reported"))
        # the service polls the cluster state every 2 s; the watch ends then, and kubectl with it
        out, _ = process.communicate(timeout=15)
        assert "before-the-lock" not in out  # nothing more came after the lock
        event = world.wait_for_event("kube.request", lambda e: e.get("reason") == "locked: stolen laptop reported")
        assert (event["verb"], event["resource_kind"]) == ("watch", "pods")
        again = world.kubectl(env, "get", "pods", "-n", "default")
        assert again.stderr.splitlines()[-1] == "Error from server (Forbidden): locked: stolen laptop reported"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
        for lock in json.loads(ok(world.cluster.tctl("get", "locks", "--format=json"))):
            ok(world.cluster.tctl("rm", f"lock/{lock['metadata']['name']}"))


def test_malformed_clients_cost_only_their_own_connection(world: World) -> None:
    service = json.loads(ok(world.laptop.tsh("kube", "ls", "--format=json")))[0]["service"]
    host, _, port = service["addr"].rpartition(":")
    # plain HTTP where TLS is required, garbage bytes, a TLS client without a certificate sending junk
    for payload in (b"GET /kube/prod/api HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64 + b"\xff" * 4096):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(payload)
            raw.settimeout(10)
            with contextlib.suppress(OSError):
                raw.recv(1024)  # whatever it says, if anything: the service must just survive it
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"BREW /kube/prod/api HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while chunk := tls.recv(4096):  # the service closes after a malformed request
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 501") and b'"kind": "Status"' in reply
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"GET /kube/prod/api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 401") and b'"reason": "Unauthorized"' in reply
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    assert world.kubectl(env, "get", "pods", "-n", "default").returncode == 0
