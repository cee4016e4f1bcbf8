"""The fake Kubernetes API server, checked with the real kubectl talking to it directly: what the kube service's
tests rely on it for must be what kubectl sees from a real API server."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devicetrust.agent.kube import spdy
from tests.fakes.kube_apiserver import SERVICE_ACCOUNT, FakeKubeAPIServer, running_kube_apiserver
from tests.kube.harness import echoed, kubectl, kubectl_env, require_kubectl, start_kubectl, start_port_forward


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubeAPIServer]:
    require_kubectl()
    with running_kube_apiserver(tmp_path_factory.mktemp("fake-kube")) as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeKubeAPIServer, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


def test_get_pods_prints_the_servers_table(kubeconfig: Path) -> None:
    result = kubectl(kubeconfig, "get", "pods", "-n", "default")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["web-0", "web-1"]


def test_get_pods_as_json_and_namespaces(kubeconfig: Path) -> None:
    pods = json.loads(kubectl(kubeconfig, "get", "pods", "-n", "kube-system", "-o", "json").stdout)
    assert [pod["metadata"]["name"] for pod in pods["items"]] == ["coredns-0"]
    namespaces = kubectl(kubeconfig, "get", "namespaces", "-o", "name")
    assert namespaces.stdout.split() == ["namespace/default", "namespace/kube-system"]


def test_errors_are_status_objects(kubeconfig: Path, tmp_path: Path, api: FakeKubeAPIServer) -> None:
    missing = kubectl(kubeconfig, "get", "pod", "nope", "-n", "default")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'
    wrong = tmp_path / "wrong"
    wrong.write_text(kubeconfig.read_text().replace(api.token, "not-the-token"))
    refused = kubectl(wrong, "get", "pods")
    assert "You must be logged in to the server (Unauthorized)" in refused.stderr


def test_whoami_echoes_the_impersonated_user_and_groups(kubeconfig: Path) -> None:
    own = kubectl(kubeconfig, "auth", "whoami", "-o", "json")
    assert json.loads(own.stdout)["status"]["userInfo"]["username"] == SERVICE_ACCOUNT
    other = kubectl(kubeconfig, "auth", "whoami", "--as=bob", "--as-group=devs", "-o", "json")
    assert json.loads(other.stdout)["status"]["userInfo"] == {
        "username": "bob",
        "groups": ["devs", "system:authenticated"],
    }


def test_a_watch_streams_new_pods(kubeconfig: Path, api: FakeKubeAPIServer) -> None:
    process = start_kubectl(kubectl_env(kubeconfig), "get", "pods", "-n", "default", "-w", "--no-headers")
    assert process.stdout is not None
    try:
        assert [process.stdout.readline().split()[0] for _ in range(2)] == ["web-0", "web-1"]
        deadline = time.monotonic() + 10
        while not any(r.query.endswith("watch=true") or "watch=true" in r.query for r in api.requests):
            assert time.monotonic() < deadline, "kubectl never started watching"
            time.sleep(0.1)
        api.add_pod("default", "watched-0")
        assert process.stdout.readline().split()[0] == "watched-0"
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_exec_over_websocket_runs_the_canned_interpreter(kubeconfig: Path, api: FakeKubeAPIServer) -> None:
    hello = kubectl(kubeconfig, "exec", "web-0", "--", "echo", "hello")
    assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr
    (upgraded,) = [r for r in api.requests if r.path.endswith("/pods/web-0/exec")][-1:]
    assert upgraded.method == "GET" and upgraded.header("upgrade") == ["websocket"]
    assert "command=echo" in upgraded.query and "v5.channel.k8s.io" in upgraded.header("sec-websocket-protocol")[0]
    failed = kubectl(kubeconfig, "exec", "web-0", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3 and "command terminated with exit code 3" in failed.stderr
    interactive = subprocess.run(
        [require_kubectl(), "exec", "-i", "web-0", "--", "cat"],
        env=kubectl_env(kubeconfig),
        input="one\ntwo\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (interactive.returncode, interactive.stdout) == (0, "one\ntwo\n"), interactive.stderr
    missing = kubectl(kubeconfig, "exec", "nope", "--", "echo")
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'


def test_logs_and_followed_logs(kubeconfig: Path) -> None:
    assert kubectl(kubeconfig, "logs", "web-1").stdout == "web-1: started\nweb-1: listening on :8080\n"
    process = start_kubectl(kubectl_env(kubeconfig), "logs", "-f", "web-1")
    assert process.stdout is not None
    try:
        assert [process.stdout.readline() for _ in range(4)][2:] == ["web-1: tick 1\n", "web-1: tick 2\n"]
    finally:
        process.terminate()
        process.communicate(timeout=10)


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_port_forward(kubeconfig: Path, api: FakeKubeAPIServer, transport: str) -> None:
    """kubectl's port-forward: SPDY tunnelled in a WebSocket by default, or plain SPDY."""
    plain = {"KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"} if transport == "spdy" else {}
    process, port = start_port_forward({**kubectl_env(kubeconfig), **plain})
    try:
        for data in (b"first connection", b"second connection"):
            assert echoed(port, data) == data
        (upgraded,) = [r for r in api.requests if r.path.endswith("/pods/web-0/portforward")][-1:]
        if transport == "spdy":
            assert (upgraded.method, upgraded.header("upgrade")) == ("POST", ["SPDY/3.1"])
            assert upgraded.header("x-stream-protocol-version") == ["portforward.k8s.io"]
        else:
            assert upgraded.header("sec-websocket-protocol")[0].startswith("SPDY/3.1+portforward.k8s.io")
    finally:
        process.terminate()
        process.communicate(timeout=10)


SPDY_EXEC = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}


def test_exec_and_attach_over_plain_spdy(kubeconfig: Path, api: FakeKubeAPIServer) -> None:
    hello = kubectl(kubeconfig, "exec", "web-0", "--", "echo", "hello", env=SPDY_EXEC)
    assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr
    (upgraded,) = [r for r in api.requests if r.path.endswith("/pods/web-0/exec")][-1:]
    assert upgraded.method == "POST" and upgraded.header("upgrade") == ["SPDY/3.1"]
    assert upgraded.header("x-stream-protocol-version")[:2] == ["v5.channel.k8s.io", "v4.channel.k8s.io"]
    failed = kubectl(kubeconfig, "exec", "web-0", "--", "sh", "-c", "exit 3", env=SPDY_EXEC)
    assert failed.returncode == 3 and "command terminated with exit code 3" in failed.stderr, failed.stderr
    unknown = kubectl(kubeconfig, "exec", "web-0", "--", "ls", env=SPDY_EXEC)
    assert (unknown.returncode, unknown.stderr.splitlines()[0]) == (127, "sh: ls: not found"), unknown.stderr
    interactive = subprocess.run(
        [require_kubectl(), "exec", "-i", "web-0", "--", "cat"],
        env={**kubectl_env(kubeconfig), **SPDY_EXEC},
        input="one\ntwo\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (interactive.returncode, interactive.stdout) == (0, "one\ntwo\n"), interactive.stderr
    attached = subprocess.run(
        [require_kubectl(), "attach", "-i", "web-0"],
        env={**kubectl_env(kubeconfig), **SPDY_EXEC},
        input="to the main process\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (attached.returncode, attached.stdout) == (0, "to the main process\n"), attached.stderr


def _spdy_exec(
    api: FakeKubeAPIServer, protocols: tuple[str, ...], query: str = "command=true&stdout=true", *, streams: int = 0
) -> tuple[bytes, list[spdy.Frame]]:
    """A plain SPDY exec upgrade offering ``protocols``: the reply's status line and headers, and, when it opens
    ``streams`` of ``error``, ``stdout``, ``stderr`` (in that order) once upgraded, every frame the fake sends."""
    context = ssl.create_default_context(cafile=str(api.ca_file))
    with (
        socket.create_connection(("127.0.0.1", api.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        offers = "".join(f"X-Stream-Protocol-Version: {protocol}\r\n" for protocol in protocols)
        tls.sendall(
            (
                f"POST /api/v1/namespaces/default/pods/web-0/exec?{query} HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: Bearer {api.token}\r\nContent-Length: 0\r\n"
                f"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n{offers}\r\n"
            ).encode()
        )
        received = b""
        while b"\r\n\r\n" not in received:
            data = tls.recv(4096)
            assert data, received
            received += data
        head, rest = received.split(b"\r\n\r\n", 1)
        session = spdy.Session()
        for index, stream_type in enumerate(("error", "stdout", "stderr")[:streams]):
            tls.sendall(session.syn_stream(2 * index + 1, {"streamType": stream_type}))
        frames = session.feed(rest)
        while streams and (data := tls.recv(4096)):
            frames += session.feed(data)
        return head, frames


def _spdy_upgrade_reply(api: FakeKubeAPIServer, *protocols: str) -> bytes:
    return _spdy_exec(api, protocols)[0]


def test_a_plain_spdy_upgrade_negotiates_the_stream_protocol_as_the_kubelet(api: FakeKubeAPIServer) -> None:
    # v5 is WebSocket only: the first the client offers that the kubelet speaks over SPDY wins
    chosen = _spdy_upgrade_reply(api, "v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io")
    assert chosen.startswith(b"HTTP/1.1 101 ") and b"\r\nUpgrade: SPDY/3.1" in chosen, chosen
    assert b"\r\nX-Stream-Protocol-Version: v4.channel.k8s.io" in chosen
    assert b"\r\nX-Stream-Protocol-Version: v3.channel.k8s.io" in _spdy_upgrade_reply(api, "v3.channel.k8s.io")
    refused = _spdy_upgrade_reply(api, "v5.channel.k8s.io")
    assert refused.startswith(b"HTTP/1.1 403 ") and b"X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io" in refused
    assert _spdy_upgrade_reply(api).startswith(b"HTTP/1.1 400 ")


def test_plain_spdy_exec_streams_end_with_the_exit_the_protocol_version_reports(api: FakeKubeAPIServer) -> None:
    exit_3 = "command=sh&command=-c&command=exit+3&stdout=true&stderr=true"
    _, frames = _spdy_exec(api, ("v4.channel.k8s.io",), exit_3, streams=3)
    # each stream accepted, the Status on the error stream, every stream ended, then the connection goes away
    assert [(f.kind, f.stream_id) for f in frames if f.kind == spdy.SYN_REPLY] == [
        (spdy.SYN_REPLY, i) for i in (1, 3, 5)
    ]
    (written,) = [f for f in frames if f.kind == spdy.DATA and f.data]
    assert written.stream_id == 1 and json.loads(written.data)["details"]["causes"][0]["message"] == "3"
    assert sorted(f.stream_id for f in frames if f.kind == spdy.DATA and f.flags & spdy.FLAG_FIN) == [1, 3, 5]
    assert frames[-1].kind == spdy.GOAWAY
    # before v4 the error stream carries only a failure's message
    _, frames = _spdy_exec(api, ("v3.channel.k8s.io",), exit_3, streams=3)
    (written,) = [f for f in frames if f.kind == spdy.DATA and f.data]
    assert (written.stream_id, written.data.decode()) == (
        1,
        "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",
    )
    _, frames = _spdy_exec(api, ("v3.channel.k8s.io",), "command=true&stdout=true", streams=2)
    assert [f for f in frames if f.kind == spdy.DATA and f.data] == []
