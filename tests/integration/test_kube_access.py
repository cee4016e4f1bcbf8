"""Kubernetes end to end: a real daemon (auth service + kube service in front of the fake API server), a laptop
with its own swtpm, the real tsh and kubectl, and a thief holding a copy of the owner's profile but not the
laptop's TPM.

The user's role requires a trusted device: kubectl's exec plugin (``tsh kube credentials``) proves the device for
the cluster; the copied profile gets kubectl's ``Error from server (Forbidden): access to resource requires a
trusted device``; the API server sees exactly the granted user and groups, impersonated.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
import yaml

from devicetrust.access import TRUSTED_DEVICE_REQUIRED
from devicetrust.access.decision import NO_SESSION_PROOF
from tests.fakes import websocket
from tests.fakes.kube_apiserver import FakeKubeAPIServer, RecordedRequest, running_kube_apiserver
from tests.integration.cluster import free_port, start_cluster
from tests.integration.laptops import StolenProfile, copy_profile, enrolled_laptop
from tests.integration.test_cluster_cli import ok
from tests.integration.test_devices import Laptop, _require_swtpm
from tests.kube.harness import KUBECTL_TIMEOUT_SECONDS, echoed, require_kubectl, start_kubectl, start_port_forward

pytestmark = [pytest.mark.integration]

SERIAL = "SN-KUBE-1"
KUBE_CLUSTER = "prod"
#: the same API server again, configured by a kubeconfig
STAGING = "staging"
GROUPS = ["developers", "viewers", "system:authenticated"]


@dataclass
class World(StolenProfile):
    api: FakeKubeAPIServer
    root: Path

    def thief_env(self, **extra: str) -> dict[str, str]:
        return super().thief_env(KUBECONFIG=str(self.thief_home / "kubeconfig"), **extra)

    def laptop_env(self) -> dict[str, str]:
        return {**self.laptop.env(), "KUBECONFIG": str(self.laptop.home / "kubeconfig")}

    def kubectl(self, env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [require_kubectl(), f"--cache-dir={Path(env['KUBECONFIG']).parent / 'kube-cache'}", *args],
            env=env,
            input=stdin,
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
        extra += api.kubeconfig_cluster_entry(STAGING, root / "sa-kubeconfig", {"env": "staging"})
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
    assert [(c["name"], c["labels"]) for c in listed] == [
        (KUBE_CLUSTER, {"env": "prod"}),
        (STAGING, {"env": "staging"}),
    ]
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
    process = start_kubectl(env, "get", "pods", "-n", "default", "-w", "--no-headers")
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
        _remove_locks(world)


def _remove_locks(world: World) -> None:
    """Remove every lock, and wait for the kube service to have seen it (it polls the cluster state)."""
    for lock in json.loads(ok(world.cluster.tctl("get", "locks", "--format=json"))):
        ok(world.cluster.tctl("rm", f"lock/{lock['metadata']['name']}"))
    deadline = time.monotonic() + 15
    while world.kubectl(world.laptop_env(), "get", "pods", "-n", "default").returncode != 0:
        assert time.monotonic() < deadline, "the kube service still applies a removed lock"
        time.sleep(0.5)


def _kept_alive_connection(world: World) -> http.client.HTTPSConnection:
    """One HTTPS connection to the kube service with the credentials kubectl would get (not yet opened)."""
    credential = json.loads(ok(world.laptop.tsh("kube", "credentials", f"--kube-cluster={KUBE_CLUSTER}")))["status"]
    cert, key = world.root / "keepalive-cert.pem", world.root / "keepalive-key.pem"
    cert.write_text(credential["clientCertificateData"])
    key.write_text(credential["clientKeyData"])
    host_ca = next(iter(json.loads((world.laptop.home / "known_cas.json").read_text()).values()))
    context = ssl.create_default_context(cadata=host_ca)
    context.load_cert_chain(cert, key)
    host, _, port = json.loads(ok(world.laptop.tsh("kube", "ls", "--format=json")))[0]["service"]["addr"].rpartition(
        ":"
    )
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=30)


def test_a_lock_refuses_the_next_request_on_a_kept_alive_connection(world: World) -> None:
    # the service reuses an allowed decision on a connection only while the cluster state is the same
    conn = _kept_alive_connection(world)

    def get_pods() -> tuple[int, bytes]:
        conn.request("GET", f"/kube/{KUBE_CLUSTER}/api/v1/namespaces/default/pods")
        response = conn.getresponse()
        return response.status, response.read()

    try:
        assert get_pods()[0] == 200 and get_pods()[0] == 200
        ok(world.cluster.tctl("lock", "--user=alice", "--message=stolen laptop reported"))
        deadline = time.monotonic() + 15  # the service polls the cluster state every 2 s
        while (reply := get_pods())[0] == 200:
            assert time.monotonic() < deadline, "the lock never reached the kept-alive connection"
            time.sleep(0.2)
        assert reply[0] == 403 and b"locked: stolen laptop reported" in reply[1]
    finally:
        conn.close()
        _remove_locks(world)


def test_a_chunked_reply_relayed_to_its_end_keeps_both_connections(world: World) -> None:
    # the real API server streams large lists chunked: kubectl's connection and the service's to the API server
    # both carry the next request
    conn = _kept_alive_connection(world)
    world.api.chunked_over = 0
    before = len(world.api.requests)
    try:
        conn.connect()
        client_socket = conn.sock
        for _ in range(3):
            conn.request("GET", f"/kube/{KUBE_CLUSTER}/api/v1/namespaces/default/pods")
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
            names = {pod["metadata"]["name"] for pod in json.loads(response.read())["items"]}
            assert {"web-0", "web-1"} <= names
            assert conn.sock is client_socket  # the same connection: the service did not close it
    finally:
        world.api.chunked_over = None
        conn.close()
    seen = [r for r in world.api.requests[before:] if r.path == "/api/v1/namespaces/default/pods"]
    assert len(seen) == 3 and len({r.client_port for r in seen}) == 1, seen


def test_a_reply_the_api_server_cuts_short_is_a_502(world: World) -> None:
    conn = _kept_alive_connection(world)
    world.api.cut_replies = True
    try:
        conn.request("GET", f"/kube/{KUBE_CLUSTER}/api/v1/namespaces/default/pods")
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        world.api.cut_replies = False
        conn.close()
    assert response.status == 502 and body["kind"] == "Status", body
    assert f"the Kubernetes API server of {KUBE_CLUSTER} failed its reply" in body["message"]
    event = world.wait_for_event("kube.request", lambda e: e.get("response_code") == 502)
    assert (event["resource_kind"], event["success"]) == ("pods", False)
    # the next request gets a new API server connection and a whole reply
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    assert world.kubectl(env, "get", "pods", "-n", "default").returncode == 0


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
    # request heads a strict reader refuses: a folded header line, a repeated Content-Length, a bare CR
    for head in (
        b"GET /kube/prod/api HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"POST /kube/prod/api HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"GET /kube/prod/api HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        b"POST /kube/prod/api/v1/namespaces/default/pods HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(head)
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 400") and b'"kind": "Status"' in reply, reply
    # a chunk size no body may have is refused before a byte of it is read (nor memory set aside for it)
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        head = b"POST /kube/prod/api/v1/namespaces/default/pods HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        tls.sendall(head + b"ffff0000ffff0000\r\n")
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 413") and b"RequestEntityTooLarge" in reply, reply
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(b"GET /kube/prod/api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 401") and b'"reason": "Unauthorized"' in reply
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    assert world.kubectl(env, "get", "pods", "-n", "default").returncode == 0


def _requests_to(world: World, subresource: str, since: int) -> list[RecordedRequest]:
    return [r for r in world.api.requests[since:] if r.path.endswith(f"/pods/web-0/{subresource}")]


def test_kubectl_exec_runs_through_the_service_as_the_granted_user(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    result = world.kubectl(env, "exec", "web-0", "--", "echo", "hello")
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    (upgraded,) = _requests_to(world, "exec", before)
    assert (upgraded.user, list(upgraded.groups)) == ("alice", GROUPS)
    assert upgraded.header("sec-websocket-protocol")[0].startswith("v5.channel.k8s.io")
    assert upgraded.header("authorization") == [f"Bearer {world.api.token}"]
    event = world.wait_for_event("kube.request", lambda e: e.get("resource_subresource") == "exec")
    assert (event["verb"], event["resource_kind"], event["resource_name"]) == ("get", "pods", "web-0")
    assert event["response_code"] == 101 and event["success"] and event["device"]["asset_tag"] == SERIAL
    # the command's exit code comes back through the stream; stdin goes in and comes out
    failed = world.kubectl(env, "exec", "web-0", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3 and "command terminated with exit code 3" in failed.stderr, failed.stderr
    interactive = world.kubectl(env, "exec", "-i", "web-0", "--", "cat", stdin="one\ntwo\n")
    assert (interactive.returncode, interactive.stdout) == (0, "one\ntwo\n"), interactive.stderr
    attached = world.kubectl(env, "attach", "-i", "web-0", stdin="to the main process\n")
    assert (attached.returncode, attached.stdout) == (0, "to the main process\n"), attached.stderr
    event = world.wait_for_event("kube.request", lambda e: e.get("resource_subresource") == "attach")
    assert (event["verb"], event["response_code"], event["kubernetes_groups"]) == ("get", 101, GROUPS)


#: kubectl's plain SPDY/3.1 streams (no WebSocket), as it speaks them when told to or when the WebSocket is refused
SPDY_EXEC = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}
SPDY_PORT_FORWARD = {"KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}


def test_kubectl_exec_over_plain_spdy_runs_through_the_service(world: World) -> None:
    env = {**world.laptop_env(), **SPDY_EXEC}
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    result = world.kubectl(env, "exec", "web-0", "--", "echo", "hello")
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    (upgraded,) = _requests_to(world, "exec", before)
    assert (upgraded.method, upgraded.header("upgrade"), upgraded.header("connection")) == (
        "POST",
        ["SPDY/3.1"],
        ["Upgrade"],
    )
    # every stream protocol kubectl offers reaches the API server, to pick one from
    offered = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
    assert upgraded.header("x-stream-protocol-version") == offered
    assert (upgraded.user, list(upgraded.groups)) == ("alice", GROUPS)
    event = world.wait_for_event(
        "kube.request", lambda e: e.get("resource_subresource") == "exec" and e.get("verb") == "create"
    )
    assert (event["resource_name"], event["response_code"], event["success"]) == ("web-0", 101, True)
    failed = world.kubectl(env, "exec", "web-0", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3 and "command terminated with exit code 3" in failed.stderr, failed.stderr
    interactive = world.kubectl(env, "exec", "-i", "web-0", "--", "cat", stdin="one\ntwo\n")
    assert (interactive.returncode, interactive.stdout) == (0, "one\ntwo\n"), interactive.stderr
    attached = world.kubectl(env, "attach", "-i", "web-0", stdin="to the main process\n")
    assert (attached.returncode, attached.stdout) == (0, "to the main process\n"), attached.stderr


def test_kubectl_falls_back_to_plain_spdy_through_the_service_when_the_websocket_is_refused(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    world.api.refuse_websocket_streams = True
    try:
        result = world.kubectl(env, "exec", "web-0", "--", "echo", "hello")
    finally:
        world.api.refuse_websocket_streams = False
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    refused, upgraded = _requests_to(world, "exec", before)
    assert (refused.method, refused.header("upgrade"), upgraded.method, upgraded.header("upgrade")) == (
        "GET",
        ["websocket"],
        "POST",
        ["SPDY/3.1"],
    )


def test_exec_impersonation_stays_within_the_grant(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    narrowed = world.kubectl(env, "exec", "--as=alice", "--as-group=viewers", "web-0", "--", "echo", "hi")
    assert narrowed.returncode == 0, narrowed.stderr
    (upgraded,) = _requests_to(world, "exec", before)
    assert list(upgraded.groups) == ["viewers", "system:authenticated"]
    before = len(world.api.requests)
    refused = world.kubectl(env, "exec", "--as=alice", "--as-group=system:masters", "web-0", "--", "echo", "hi")
    assert refused.returncode != 0 and 'group header "system:masters"' in refused.stderr, refused.stderr
    assert _requests_to(world, "exec", before) == []


def test_a_copied_profile_cannot_exec(world: World) -> None:
    env = world.thief_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    result = world.kubectl(env, "exec", "web-0", "--", "echo", "hello")
    assert result.returncode != 0 and "hello" not in result.stdout
    assert result.stderr.splitlines()[-1] == f"Error from server (Forbidden): {TRUSTED_DEVICE_REQUIRED}", result.stderr
    assert world.api.requests[before:] == []


def test_kubectl_logs_follow_streams_lines_as_they_come(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    assert world.kubectl(env, "logs", "web-0").stdout == "web-0: started\nweb-0: listening on :8080\n"
    process = start_kubectl(env, "logs", "-f", "web-0")
    assert process.stdout is not None
    try:
        lines = [process.stdout.readline().rstrip("\n") for _ in range(4)]
        assert lines == ["web-0: started", "web-0: listening on :8080", "web-0: tick 1", "web-0: tick 2"]
    finally:
        process.kill()
        process.communicate(timeout=10)


def _upgrade(
    world: World, env: dict[str, str], api_path: str, protocol: str, extra_headers: str = ""
) -> tuple[ssl.SSLSocket, BinaryIO, bytes, str]:
    """A WebSocket upgrade request through the service, with the credentials kubectl gets from tsh: the
    connection, its reader, the reply's status line and headers, and the Sec-WebSocket-Key sent."""
    credential = json.loads(
        ok(world.cluster.run("tsh", "kube", "credentials", f"--kube-cluster={KUBE_CLUSTER}", env=env))
    )
    config = yaml.safe_load(Path(env["KUBECONFIG"]).read_text())
    (entry,) = [c["cluster"] for c in config["clusters"] if c["cluster"]["server"].endswith(f"/kube/{KUBE_CLUSTER}")]
    cert_file = world.root / "upgrade-cert.pem"
    cert_file.write_text(credential["status"]["clientCertificateData"] + credential["status"]["clientKeyData"])
    context = ssl.create_default_context(cadata=base64.b64decode(entry["certificate-authority-data"]).decode())
    context.load_cert_chain(cert_file)
    context.set_alpn_protocols(["http/1.1"])
    host, _, port = entry["server"].removeprefix("https://").split("/", 1)[0].rpartition(":")
    raw = socket.create_connection((host, int(port)), timeout=10)
    tls = context.wrap_socket(raw, server_hostname=host)
    key = base64.b64encode(os.urandom(16)).decode()
    tls.sendall(
        (
            f"GET /kube/{KUBE_CLUSTER}{api_path} HTTP/1.1\r\n"
            f"Host: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {protocol}\r\n{extra_headers}\r\n"
        ).encode()
    )
    reader = tls.makefile("rb")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        assert line, head
        head += line
    return tls, reader, head, key


def _port_forward(world: World, env: dict[str, str], extra_headers: str = "") -> ssl.SSLSocket:
    """An upgrade to the WebSocket port-forward channel protocol through the service; returns the upgraded
    connection (after the 101, the port announcements and one echo)."""
    path = "/api/v1/namespaces/default/pods/web-0/portforward?ports=8080"
    tls, reader, head, key = _upgrade(world, env, path, "v4.channel.k8s.io", extra_headers)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert f"Sec-WebSocket-Accept: {websocket.accept_key(key)}".encode() in head
    # the data and the error channel each announce the port
    assert websocket.read_frame(reader) == (websocket.BINARY, b"\x00" + struct.pack("<H", 8080))
    assert websocket.read_frame(reader) == (websocket.BINARY, b"\x01" + struct.pack("<H", 8080))
    tls.sendall(websocket.frame(websocket.BINARY, b"\x00GET / HTTP/1.0\r\n\r\n", mask=True))
    assert websocket.read_frame(reader) == (websocket.BINARY, b"\x00GET / HTTP/1.0\r\n\r\n")
    reader.close()
    return tls


def test_an_upgrade_the_api_server_refuses_is_relayed_as_it_is(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    path = "/api/v1/namespaces/default/pods/nope/exec?command=true&stdout=true"
    tls, reader, head, _ = _upgrade(world, env, path, "v5.channel.k8s.io")
    with tls, reader:
        assert head.startswith(b"HTTP/1.1 404"), head
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        assert json.loads(reader.read(length))["message"] == 'pods "nope" not found'
    event = world.wait_for_event("kube.request", lambda e: e.get("resource_name") == "nope")
    assert (event["response_code"], event["resource_subresource"], event["success"]) == (404, "exec", False)


def test_port_forward_passes_through_as_the_granted_user(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    # a Connection header naming the impersonation headers (a proxy would drop them) is not passed on
    extra = "Impersonate-User: alice\r\nImpersonate-Group: viewers\r\nConnection: Impersonate-User\r\n"
    with _port_forward(world, env, extra):
        (upgraded,) = _requests_to(world, "portforward", before)
        assert (upgraded.user, list(upgraded.groups)) == ("alice", ["viewers", "system:authenticated"])
        assert upgraded.header("connection") == ["Upgrade"]
    event = world.wait_for_event("kube.request", lambda e: e.get("resource_subresource") == "portforward")
    assert (event["verb"], event["resource_kind"], event["response_code"]) == ("get", "pods", 101)


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_kubectl_port_forward_runs_through_the_service(world: World, transport: str) -> None:
    env = {**world.laptop_env(), **(SPDY_PORT_FORWARD if transport == "spdy" else {})}
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    process, port = start_port_forward(env)
    try:
        assert echoed(port, b"GET / HTTP/1.0\r\n\r\n") == b"GET / HTTP/1.0\r\n\r\n"
        assert echoed(port, b"a second connection") == b"a second connection"
        (upgraded,) = _requests_to(world, "portforward", before)
        assert (upgraded.user, list(upgraded.groups)) == ("alice", GROUPS)
        if transport == "spdy":
            assert (upgraded.method, upgraded.header("upgrade")) == ("POST", ["SPDY/3.1"])
            assert upgraded.header("x-stream-protocol-version") == ["portforward.k8s.io"]
        else:  # SPDY tunnelled in a WebSocket
            assert upgraded.header("sec-websocket-protocol")[0].startswith("SPDY/3.1+portforward.k8s.io")
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_a_lock_ends_open_exec_logs_and_port_forward_streams(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    # one after the other: each kubectl asks tsh for credentials, and one TPM proves one at a time
    cat = start_kubectl(env, "exec", "-i", "web-0", "--", "cat", stdin=True)
    assert cat.stdin is not None and cat.stdout is not None
    logs: subprocess.Popen[str] | None = None
    port_forward: subprocess.Popen[str] | None = None
    forwarded: ssl.SSLSocket | None = None
    try:
        cat.stdin.write("before the lock\n")
        cat.stdin.flush()
        cat_line = cat.stdout.readline()
        assert cat_line == "before the lock\n", cat.stderr.read() if cat.stderr else ""
        logs = start_kubectl(env, "logs", "-f", "web-0")
        assert logs.stdout is not None
        assert logs.stdout.readline() == "web-0: started\n"
        forwarded = _port_forward(world, env)
        port_forward, port = start_port_forward(env)
        assert echoed(port, b"before the lock") == b"before the lock"
        ok(world.cluster.tctl("lock", "--user=alice", "--message=stolen laptop reported"))
        # the service polls the cluster state every 2 s: the streams end then, with the stdin still open
        assert cat.wait(timeout=15) != 0
        logs.wait(timeout=15)
        assert port_forward.wait(timeout=15) != 0  # kubectl: lost connection to pod
        forwarded.settimeout(15)
        with contextlib.suppress(OSError):
            while forwarded.recv(4096):
                pass  # what was in flight, then the end
        for subresource in ("exec", "log", "portforward"):
            event = world.wait_for_event(
                "kube.request",
                lambda e, sub=subresource: (
                    e.get("resource_subresource") == sub and e.get("reason") == "locked: stolen laptop reported"
                ),
            )
            assert event["resource_name"] == "web-0"
    finally:
        if forwarded is not None:
            forwarded.close()
        for process in (cat, logs, port_forward):
            if process is None:
                continue
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
        _remove_locks(world)


def test_a_lock_ends_open_plain_spdy_exec_and_port_forward_streams(world: World) -> None:
    env = {**world.laptop_env(), **SPDY_EXEC, **SPDY_PORT_FORWARD}
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    before = len(world.api.requests)
    cat = start_kubectl(env, "exec", "-i", "web-0", "--", "cat", stdin=True)
    assert cat.stdin is not None and cat.stdout is not None
    port_forward: subprocess.Popen[str] | None = None
    try:
        cat.stdin.write("before the lock\n")
        cat.stdin.flush()
        cat_line = cat.stdout.readline()
        assert cat_line == "before the lock\n", cat.stderr.read() if cat.stderr else ""
        port_forward, port = start_port_forward(env)
        assert echoed(port, b"before the lock") == b"before the lock"
        assert {r.header("upgrade")[0] for r in world.api.requests[before:] if r.header("upgrade")} == {"SPDY/3.1"}
        ok(world.cluster.tctl("lock", "--user=alice", "--message=stolen laptop reported"))
        # the service polls the cluster state every 2 s: the streams end then, with the stdin still open; the exec
        # ends as a failed command does, with a Status on its error stream (a cut connection alone would read as
        # success to kubectl's SPDY executor)
        assert cat.wait(timeout=15) != 0
        assert cat.stdout.read() == ""
        assert cat.stderr is not None
        assert "the kube service ended the session: locked: stolen laptop reported" in cat.stderr.read()
        assert port_forward.wait(timeout=15) != 0  # kubectl: lost connection to pod
        for subresource in ("exec", "portforward"):
            event = world.wait_for_event(
                "kube.request",
                lambda e, sub=subresource: (
                    e.get("resource_subresource") == sub
                    and e.get("verb") == "create"
                    and e.get("reason") == "locked: stolen laptop reported"
                ),
            )
            assert event["resource_name"] == "web-0"
    finally:
        for process in (cat, port_forward):
            if process is None:
                continue
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
        _remove_locks(world)


def test_a_cluster_configured_by_a_kubeconfig_is_reached_the_same_way(world: World) -> None:
    env = world.laptop_env()
    ok(world.cluster.run("tsh", "kube", "login", STAGING, env=env))
    before = len(world.api.requests)
    result = world.kubectl(env, "get", "pods", "-n", "default")
    assert result.returncode == 0, result.stderr
    assert {"web-0", "web-1"} <= {line.split()[0] for line in result.stdout.splitlines()[1:]}
    seen = world.api.requests[before:]
    assert seen and all(r.user == "alice" and list(r.groups) == GROUPS for r in seen)
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))


def test_tsh_logout_removes_the_kube_contexts_login_wrote(world: World) -> None:
    env = world.thief_env()  # the copied profile: logging it out leaves the laptop's own
    kubeconfig = Path(env["KUBECONFIG"])
    ok(world.cluster.run("tsh", "kube", "login", KUBE_CLUSTER, env=env))
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"].append({"name": "mine", "cluster": {"server": "https://10.0.0.1:6443"}})
    kubeconfig.write_text(yaml.safe_dump(config))
    out = ok(world.cluster.run("tsh", "logout", env=env))
    assert "Removed the Kubernetes contexts" in out
    after = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in after["clusters"]] == ["mine"]
    assert after["users"] == [] and after["contexts"] == [] and after["current-context"] == ""
