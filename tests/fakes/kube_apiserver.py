"""A fake Kubernetes API server for the tests, faithful to what kubectl and the kube service use of the real one.

- HTTPS with its own CA (:mod:`tests.fakes.pki`), HTTP/1.1 only (no h2 in ALPN, as an API server behind a proxy
  that does not speak it: kubectl falls back).
- Authentication by bearer token (the kube service's service account); anything else is 401 Unauthorized.
- Impersonation as in the API server's filter: ``Impersonate-User`` (required when ``Impersonate-Group`` is sent,
  else 400 BadRequest ... "without impersonating a user"), ``Impersonate-Group`` repeated; an impersonated user
  gets ``system:authenticated`` added. The token's user must be allowed to impersonate (``impersonators``).
- Discovery: ``/version``, ``/api`` (APIVersions), ``/apis`` (APIGroupList), ``/api/v1`` (APIResourceList),
  ``/apis/authentication.k8s.io/v1``. Aggregated discovery is not offered: a plain ``application/json`` reply makes
  client-go fall back to the legacy documents, as against an API server before 1.26.
- ``namespaces`` list/get; ``pods`` list/get/watch (``?watch=1``: a chunked stream of WatchEvents, one JSON object
  per line, staying open until the client goes or the server stops); tables (``Accept: ...;as=Table``) as kubectl
  asks for them.
- ``POST /apis/authentication.k8s.io/v1/selfsubjectreviews`` echoes the (impersonated) user and groups.
- ``pods/log`` (text; ``follow=true``: a chunked stream that writes a line every ``log_interval`` seconds until the
  client goes or the server stops).
- ``pods/exec`` and ``pods/attach`` over WebSocket (RFC 6455 handshake, ``v5.channel.k8s.io`` or
  ``v4.channel.k8s.io``: binary messages whose first byte is the channel, 0 stdin, 1 stdout, 2 stderr, 3 error
  (the exit as a ``metav1.Status``), 4 resize, and in v5 255 to close a channel). The pod runs a tiny canned
  interpreter: ``echo ARGS``, ``cat`` (stdin back on stdout until stdin closes), ``true``, ``false``,
  ``sh -c "exit N"``; anything else exits 127. ``attach`` is ``cat``.
- ``pods/exec`` and ``pods/attach`` over plain SPDY/3.1 (kubectl with ``KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false``,
  or after a refused WebSocket: a POST with ``Upgrade: SPDY/3.1``), as the kubelet serves them: the stream protocol
  is the first of the client's ``X-Stream-Protocol-Version`` values it speaks (``v4.channel.k8s.io`` down to
  ``channel.k8s.io``; v5 is WebSocket only), echoed in the 101 (none offered: 400, none it speaks: 403 with
  ``X-Accepted-Stream-Protocol-Versions``, both plain text). The client opens a stream per ``streamType`` (error,
  and stdin, stdout, stderr, resize as the options ask); each gets a SYN_REPLY, and once all are open the same
  interpreter runs: output on stdout/stderr, the exit on the error stream (v4: the Status; older: only a failure's
  message), then every stream ends (FIN) and a GOAWAY closes the connection.
- ``pods/portforward`` over WebSocket: ``SPDY/3.1+portforward.k8s.io`` as kubectl 1.32 asks for it (SPDY/3.1
  frames in binary messages, :mod:`devicetrust.agent.kube.spdy`: per forwarded connection an error and a data
  stream, headers ``streamType``, ``port``, ``requestID``), or ``v4.channel.k8s.io`` (per requested port a data and
  an error channel, each opened by the port number in two little-endian bytes); or over plain SPDY/3.1
  (``KUBECTL_PORT_FORWARD_WEBSOCKETS=false``: ``X-Stream-Protocol-Version: portforward.k8s.io``, the same streams on
  the connection itself). Every port echoes what it receives.
- ``refuse_websocket_streams``: WebSocket upgrades of exec, attach and port-forward get 400 BadRequest, as from an
  API server (or a proxy before it) that does not take them; kubectl then falls back to plain SPDY.
- Errors are ``metav1.Status`` objects (NotFound, Unauthorized, Forbidden, BadRequest, MethodNotAllowed), but for
  the plain-text refusals of a SPDY upgrade's stream protocol.

Every request's method, path and headers are recorded (``requests``) for the tests to check what reached it.

Run it by hand for the demo, from the repository root: ``python -m tests.fakes.kube_apiserver serve --dir
.demo/kube`` (writes its test CA, the service account token and ``endpoint.json`` to ``--dir``; stops on SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import secrets
import shlex
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devicetrust.agent.kube import spdy
from tests.fakes import websocket
from tests.fakes.pki import TestPKI, make_test_pki

__all__ = ["FakeKubeAPIServer", "RecordedRequest", "running_kube_apiserver"]

SERVICE_ACCOUNT = "system:serviceaccount:kube-system:devicetrust"
SERVICE_ACCOUNT_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated")
TABLE_MEDIA = "as=Table"
GIT_VERSION = "v1.32.4"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, list[str]]
    user: str
    groups: tuple[str, ...]
    #: the client's port: requests on one kept-alive connection share it
    client_port: int = 0

    def header(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])


@dataclass
class _Pod:
    name: str
    namespace: str
    created: str
    uid: str
    resource_version: int
    phase: str = "Running"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": str(self.resource_version),
                "creationTimestamp": self.created,
            },
            "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]},
            "status": {
                "phase": self.phase,
                "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0, "image": "nginx:1.27"}],
            },
        }


@dataclass
class FakeKubeAPIServer:
    pki: TestPKI
    token: str
    namespaces: tuple[str, ...] = ("default", "kube-system")
    impersonators: tuple[str, ...] = (SERVICE_ACCOUNT,)
    requests: list[RecordedRequest] = field(default_factory=list)
    #: seconds between the lines a followed log writes
    log_interval: float = 0.2
    #: JSON replies longer than this many bytes go chunked, as the real API server streams large lists (None: never)
    chunked_over: int | None = None
    #: JSON replies end halfway through their body and the connection closes (an API server that fails mid-reply)
    cut_replies: bool = False
    #: WebSocket upgrades of exec, attach and port-forward are refused (kubectl falls back to plain SPDY)
    refuse_websocket_streams: bool = False
    port: int = 0
    _pods: dict[tuple[str, str], _Pod] = field(default_factory=dict)
    _watchers: list[queue.Queue[dict[str, Any] | None]] = field(default_factory=list)
    _version: int = 100
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    # ------------------------------------------------------------------------------------------ state
    def add_pod(self, namespace: str, name: str, phase: str = "Running") -> None:
        with self._lock:
            self._version += 1
            pod = _Pod(
                name,
                namespace,
                datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                f"uid-{self._version}",
                self._version,
                phase,
            )
            existed = (namespace, name) in self._pods
            self._pods[(namespace, name)] = pod
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.put({"type": "MODIFIED" if existed else "ADDED", "object": pod.to_json()})

    def pods(self, namespace: str) -> list[_Pod]:
        with self._lock:
            return sorted((p for (ns, _), p in self._pods.items() if ns == namespace), key=lambda p: p.name)

    # ------------------------------------------------------------------------------------------ life cycle
    def start(self) -> FakeKubeAPIServer:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert_file, self.pki.key_file)
        context.set_alpn_protocols(["http/1.1"])
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, name="fake-kube-apiserver", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.put(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def kube_service_config(
        self, cluster_name: str, listen_port: int, token_file: Path, labels: Mapping[str, str] | None = None
    ) -> str:
        """The ``kube_service`` section of devicetrust.yaml: a kube service on ``listen_port`` fronting this server
        as the cluster ``cluster_name``, with the service account token it reads (written to ``token_file``)."""
        token_file.write_text(self.token)
        config = (
            "kube_service:\n"
            "  enabled: true\n"
            f"  listen_addr: 127.0.0.1:{listen_port}\n"
            "  kubernetes_clusters:\n"
            f"    - name: {cluster_name}\n"
            f"      api_server: {self.url}\n"
            f"      ca_file: {self.ca_file}\n"
            f"      token_file: {token_file}\n"
        )
        if labels:
            config += "      labels:\n" + "".join(f"        {key}: {value}\n" for key, value in labels.items())
        return config

    def kubeconfig_cluster_entry(self, cluster_name: str, kubeconfig: Path, labels: Mapping[str, str]) -> str:
        """One more ``kubernetes_clusters`` entry (to follow :meth:`kube_service_config`): this server again as
        ``cluster_name``, in the kubeconfig form (written to ``kubeconfig``)."""
        self.write_kubeconfig(kubeconfig)
        entry = f"    - name: {cluster_name}\n      kubeconfig: {kubeconfig}\n"
        return entry + "      labels:\n" + "".join(f"        {key}: {value}\n" for key, value in labels.items())

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that reaches this server directly with the service account token (for kubectl)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "sa", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "sa"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path


@contextmanager
def running_kube_apiserver(directory: Path, token: str | None = None) -> Iterator[FakeKubeAPIServer]:
    pki = make_test_pki(directory, name="Fake Kubernetes Test CA")
    server = FakeKubeAPIServer(pki, token or secrets.token_urlsafe(24)).start()
    server.add_pod("default", "web-0")
    server.add_pod("default", "web-1")
    server.add_pod("kube-system", "coredns-0")
    try:
        yield server
    finally:
        server.stop()


# -------------------------------------------------------------------------------------------------- documents
def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        doc["details"] = details
    return doc


def _resource(
    name: str, kind: str, namespaced: bool, verbs: list[str], short: list[str] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "singularName": kind.lower(),
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs,
    }
    if short:
        doc["shortNames"] = short
    return doc


API_V1 = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        _resource("namespaces", "Namespace", False, ["get", "list", "watch"], ["ns"]),
        _resource("pods", "Pod", True, ["get", "list", "watch"], ["po"]),
        _resource("pods/attach", "PodAttachOptions", True, ["create", "get"]),
        _resource("pods/exec", "PodExecOptions", True, ["create", "get"]),
        _resource("pods/log", "Pod", True, ["get"]),
        _resource("pods/portforward", "PodPortForwardOptions", True, ["create", "get"]),
    ],
}
AUTHN_V1 = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "authentication.k8s.io/v1",
    "resources": [
        _resource("selfsubjectreviews", "SelfSubjectReview", False, ["create"]),
        _resource("tokenreviews", "TokenReview", False, ["create"]),
    ],
}
API_GROUPS = {
    "kind": "APIGroupList",
    "apiVersion": "v1",
    "groups": [
        {
            "name": "authentication.k8s.io",
            "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"},
        }
    ],
}


def _age(created: str) -> str:
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def _pod_table(pods: list[_Pod], resource_version: str) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0},
            {"name": "Ready", "type": "string", "format": "", "description": "ready containers", "priority": 0},
            {"name": "Status", "type": "string", "format": "", "description": "pod phase", "priority": 0},
            {"name": "Restarts", "type": "string", "format": "", "description": "restarts", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "age", "priority": 0},
        ],
        "rows": [
            {
                "cells": [pod.name, "1/1", pod.phase, "0", _age(pod.created)],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": pod.to_json()["metadata"],
                },
            }
            for pod in pods
        ],
    }


# -------------------------------------------------------------------------------------------------- handler
class _Unauthorized(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeKubeAPIServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as Go's net/http: no 40 ms Nagle/delayed-ACK stall between header and body

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    # --------------------------------------------------------------------------------------------- helpers
    def _send_json(self, code: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        chunked_over = self.server_fake.chunked_over
        if chunked_over is None or len(body) <= chunked_over:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.server_fake.cut_replies:
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        half = len(body) // 2
        for part in (body[:half], body[half:]) if half else (body,):
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _authenticate(self) -> tuple[str, tuple[str, ...]]:
        fake = self.server_fake
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] != fake.token:
            raise _Unauthorized
        user, groups = SERVICE_ACCOUNT, SERVICE_ACCOUNT_GROUPS
        imp_user = self.headers.get_all("Impersonate-User") or []
        imp_groups = self.headers.get_all("Impersonate-Group") or []
        if imp_groups and not imp_user:
            raise _BadImpersonation(
                f"requested {[{'Kind': 'Group', 'Name': g} for g in imp_groups]} without impersonating a user"
            )
        if imp_user:
            if user not in fake.impersonators:
                raise _Forbidden(
                    f'users "{imp_user[0]}" is forbidden: User "{user}" cannot impersonate resource '
                    '"users" in API group "" at the cluster scope'
                )
            groups = tuple(dict.fromkeys([*imp_groups, "system:authenticated"]))
            user = imp_user[0]
        return user, groups

    def _handle(self) -> None:
        fake = self.server_fake
        split = urlsplit(self.path)
        path, query = split.path.rstrip("/") or "/", parse_qs(split.query)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            user, groups = self._authenticate()
        except _Unauthorized:
            fake.requests.append(
                RecordedRequest(self.command, path, split.query, headers, "", (), self.client_address[1])
            )
            self._send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return
        except _BadImpersonation as err:
            self._send_json(400, status(400, "BadRequest", str(err)))
            return
        except _Forbidden as err:
            self._send_json(403, status(403, "Forbidden", str(err)))
            return
        fake.requests.append(
            RecordedRequest(self.command, path, split.query, headers, user, groups, self.client_address[1])
        )
        table = TABLE_MEDIA in self.headers.get("Accept", "")
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 7 and parts[4] == "pods":
            self._pod_subresource(parts[3], parts[5], parts[6], query)
            return
        if self.command == "POST" and path == "/apis/authentication.k8s.io/v1/selfsubjectreviews":
            # kubectl sends the (empty) review as protobuf and accepts JSON back; its metadata is all it holds
            try:
                review = json.loads(body or b"{}")
            except ValueError:
                review = {}
            self._send_json(
                201,
                {
                    "kind": "SelfSubjectReview",
                    "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {**review.get("metadata", {}), "creationTimestamp": None},
                    "status": {"userInfo": {"username": user, "groups": list(groups)}},
                },
            )
            return
        if self.command != "GET":
            self._send_json(
                405, status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            )
            return
        if path == "/version":
            self._send_json(
                200,
                {
                    "major": "1",
                    "minor": "32",
                    "gitVersion": GIT_VERSION,
                    "platform": "linux/amd64",
                    "goVersion": "go1.23",
                },
            )
        elif path == "/api":
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        elif path == "/apis":
            self._send_json(200, API_GROUPS)
        elif path == "/api/v1":
            self._send_json(200, API_V1)
        elif path == "/apis/authentication.k8s.io/v1":
            self._send_json(200, AUTHN_V1)
        elif parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 3:
            self._send_json(
                200,
                {
                    "kind": "NamespaceList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(fake._version)},
                    "items": [
                        {
                            "kind": "Namespace",
                            "apiVersion": "v1",
                            "metadata": {"name": ns},
                            "status": {"phase": "Active"},
                        }
                        for ns in fake.namespaces
                    ],
                },
            )
        elif parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 4:
            if parts[3] not in fake.namespaces:
                self._not_found("namespaces", parts[3])
            else:
                self._send_json(200, {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": parts[3]}})
        elif parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5 and parts[4] == "pods":
            namespace = parts[3]
            if len(parts) == 5:
                if query.get("watch", ["0"])[0] in ("1", "true"):
                    self._watch(namespace, table)
                else:
                    self._list(namespace, table)
            elif len(parts) == 6:
                pod = next((p for p in fake.pods(namespace) if p.name == parts[5]), None)
                if pod is None:
                    self._not_found("pods", parts[5])
                elif table:
                    self._send_json(200, _pod_table([pod], str(pod.resource_version)))
                else:
                    self._send_json(200, pod.to_json())
            else:
                self._not_found("pods", parts[5])
        else:
            self._send_json(404, status(404, "NotFound", "the server could not find the requested resource"))

    def _not_found(self, kind: str, name: str) -> None:
        self._send_json(404, status(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind}))

    def _list(self, namespace: str, table: bool) -> None:
        fake = self.server_fake
        pods = fake.pods(namespace)
        version = str(fake._version)
        if table:
            self._send_json(200, _pod_table(pods, version))
            return
        self._send_json(
            200,
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": version},
                "items": [pod.to_json() for pod in pods],
            },
        )

    def _watch(self, namespace: str, table: bool) -> None:
        fake = self.server_fake
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with fake._lock:
            fake._watchers.append(events)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self.wfile.flush()
            while True:
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                if event is None:
                    break
                pod = event["object"]
                if pod["metadata"]["namespace"] != namespace:
                    continue
                if table:
                    found = next(p for p in fake.pods(namespace) if p.name == pod["metadata"]["name"])
                    event = {**event, "object": _pod_table([found], pod["metadata"]["resourceVersion"])}
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            with fake._lock:
                fake._watchers.remove(events)
            self.close_connection = True

    # --------------------------------------------------------------------------------------------- subresources
    def _pod_subresource(self, namespace: str, name: str, subresource: str, query: dict[str, list[str]]) -> None:
        if not any(pod.name == name for pod in self.server_fake.pods(namespace)):
            self._not_found("pods", name)
        elif subresource == "log" and self.command == "GET":
            self._log(name, query.get("follow", [""])[0] == "true")
        elif subresource in ("exec", "attach", "portforward") and self.command in ("GET", "POST"):
            command = query.get("command", []) if subresource == "exec" else ["cat"]
            upgrade = self.headers.get("Upgrade", "").lower()
            if upgrade == SPDY and "upgrade" in self.headers.get("Connection", "").lower():
                self._spdy_upgrade(subresource, command, query)
                return
            protocols = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            supported = _PORT_FORWARD_PROTOCOLS if subresource == "portforward" else _CHANNEL_PROTOCOLS
            offered = [p for p in supported if p in protocols]
            if upgrade != "websocket" or not offered or self.server_fake.refuse_websocket_streams:
                self._send_json(400, status(400, "BadRequest", "Upgrade request required"))
                return
            self._upgrade(offered[0])
            if offered[0] == SPDY_PORT_FORWARD:
                self._spdy_port_forward(self._binary_messages(), self._send_binary)
            elif subresource == "portforward":
                self._port_forward([int(port) for port in query.get("ports", [])])
            else:
                self._run(command, v5=offered[0] == V5_CHANNEL)
            self.close_connection = True
        else:
            self._send_json(
                405, status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            )

    def _log(self, pod: str, follow: bool) -> None:
        lines = [f"{pod}: started", f"{pod}: listening on :8080"]
        if not follow:
            body = "".join(line + "\n" for line in lines).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        tick = 0
        try:
            while not self.server_fake._stopped.is_set():
                for line in lines:
                    data = line.encode() + b"\n"
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                tick += 1
                lines = [f"{pod}: tick {tick}"]
                time.sleep(self.server_fake.log_interval)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        self.close_connection = True

    def _upgrade(self, protocol: str) -> None:
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket.accept_key(self.headers.get("Sec-WebSocket-Key", "")))
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.wfile.flush()

    def _send_channel(self, channel: int, data: bytes) -> None:
        self.wfile.write(websocket.frame(websocket.BINARY, bytes([channel]) + data))

    def _messages(self) -> Iterator[tuple[int, bytes]]:
        """(channel, data) of each message the client sends, answering pings, until it closes or goes."""
        for payload in self._binary_messages():
            if payload:
                yield payload[0], payload[1:]

    def _binary_messages(self) -> Iterator[bytes]:
        """Each data message the client sends, answering pings, until it closes or goes."""
        while True:
            try:
                message = websocket.read_frame(self.rfile)
            except OSError:
                return
            if message is None:
                return
            opcode, payload = message
            if opcode == websocket.PING:
                self.wfile.write(websocket.frame(websocket.PONG, payload))
            elif opcode == websocket.CLOSE:
                with contextlib.suppress(OSError):
                    self.wfile.write(websocket.frame(websocket.CLOSE, payload[:2]))
                return
            elif opcode in (websocket.BINARY, websocket.TEXT):
                yield payload

    def _run(self, command: list[str], *, v5: bool) -> None:
        """The canned interpreter over WebSocket channels; its exit goes on the error channel as a Status."""

        def stdin() -> Iterator[bytes]:
            for channel, data in self._messages():
                if channel == STDIN:
                    yield data
                elif v5 and channel == CLOSE_CHANNEL and data[:1] == bytes([STDIN]):
                    return

        try:
            result = _interpret(command, stdin(), self._send_channel)
            self._send_channel(ERROR, json.dumps(result).encode())
            self.wfile.write(websocket.frame(websocket.CLOSE, struct.pack("!H", 1000)))
            self.wfile.flush()
        except OSError:
            pass

    # --------------------------------------------------------------------------------------------- plain SPDY
    def _spdy_upgrade(self, subresource: str, command: list[str], query: dict[str, list[str]]) -> None:
        """``Upgrade: SPDY/3.1`` as the kubelet answers it: the stream protocol negotiated from the client's
        ``X-Stream-Protocol-Version`` list (its first the server supports), then SPDY frames on the connection
        itself."""
        supported = (PORT_FORWARD_V1,) if subresource == "portforward" else _SPDY_CHANNEL_PROTOCOLS
        offered = [p.strip() for value in self.headers.get_all(STREAM_PROTOCOL_HEADER) or [] for p in value.split(",")]
        offered = [p for p in offered if p]
        if not offered:
            self._send_text(400, f"unable to upgrade: {STREAM_PROTOCOL_HEADER} is required")
            return
        protocol = next((p for p in offered if p in supported), None)
        if protocol is None:
            self._send_text(
                403,
                f"unable to upgrade: unable to negotiate protocol: client supports [{' '.join(offered)}], "
                f"server accepts [{' '.join(supported)}]",
                [("X-Accepted-Stream-Protocol-Versions", p) for p in supported],
            )
            return
        self.send_response(101, "Switching Protocols")
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "SPDY/3.1")
        self.send_header(STREAM_PROTOCOL_HEADER, protocol)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        if subresource == "portforward":
            self._spdy_port_forward(self._raw_reads(), self.wfile.write)
        else:
            self._spdy_exec(command, query, protocol)

    def _send_text(self, code: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """An error as Go's ``http.Error`` writes it (the kubelet's refusals of an upgrade)."""
        body = message.encode() + b"\n"
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _raw_reads(self) -> Iterator[bytes]:
        """What the client sends on the upgraded connection, as it comes, until it closes or goes."""
        while True:
            try:
                data = self.rfile.read1(65536)
            except OSError:
                return
            if not data:
                return
            yield data

    def _spdy_frames(
        self, session: spdy.Session, chunks: Iterator[bytes], send: Callable[[bytes], object]
    ) -> Iterator[tuple[spdy.Frame, dict[str, str]]]:
        """The SPDY frames the client sends (and a SYN_STREAM's headers), as spdystream serves them: each new
        stream accepted with a SYN_REPLY, each PING answered."""
        for chunk in chunks:
            for frame in session.feed(chunk):
                if frame.kind == spdy.SYN_STREAM:
                    headers = session.headers(frame)
                    send(session.syn_reply(frame.stream_id))
                    yield frame, headers
                elif frame.kind == spdy.PING:
                    send(session.echo(frame))
                else:
                    yield frame, {}

    def _spdy_exec(self, command: list[str], query: dict[str, list[str]], protocol: str) -> None:
        """exec and attach over plain SPDY, as the kubelet serves them: once the client has opened the streams the
        options ask for (``streamtype`` error, and stdin, stdout, stderr, resize), the command runs; its exit goes
        on the error stream (v4: a Status; older: the failure's message only), then every stream ends and the
        connection goes away."""
        session = spdy.Session()
        send = self.wfile.write
        frames = self._spdy_frames(session, self._raw_reads(), send)
        wanted = {"error", *(name for name in ("stdin", "stdout", "stderr") if _flag(query, name))}
        if _flag(query, "tty"):
            wanted.add("resize")
        streams: dict[str, int] = {}  # stream type: stream id
        try:
            while not wanted <= streams.keys():
                frame, headers = next(frames, (None, {}))
                if frame is None:
                    return
                if frame.kind == spdy.SYN_STREAM:
                    streams[headers.get("streamtype", "")] = frame.stream_id

            def stdin() -> Iterator[bytes]:
                if "stdin" not in streams:
                    return
                for frame, _ in frames:
                    if frame.kind == spdy.DATA and frame.stream_id == streams["stdin"]:
                        if frame.data:
                            yield frame.data
                        if frame.flags & spdy.FLAG_FIN:
                            return

            def output(channel: int, data: bytes) -> None:
                stream_id = streams.get("stdout" if channel == STDOUT else "stderr")
                if stream_id is not None:
                    send(session.data(stream_id, data))

            result = _interpret(command, stdin(), output)
            if protocol == V4_CHANNEL:
                send(session.data(streams["error"], json.dumps(result).encode()))
            elif result["status"] != "Success":
                send(session.data(streams["error"], result["message"].encode()))
            for stream_id in streams.values():
                send(session.data(stream_id, b"", fin=True))
            send(session.goaway(max(streams.values())))
        except OSError:
            pass

    def _spdy_port_forward(self, chunks: Iterator[bytes], send: Callable[[bytes], object]) -> None:
        """Port-forward's SPDY/3.1 (in WebSocket binary messages as kubectl 1.31+ tunnels it, or on the connection
        itself): per forwarded connection an error and a data stream (headers streamType, port, requestID); the
        data stream echoes, and when the client ends it both streams end."""
        session = spdy.Session()
        error_streams: dict[str, int] = {}
        data_streams: dict[int, str] = {}  # stream id: request id
        try:
            for frame, headers in self._spdy_frames(session, chunks, send):
                if frame.kind == spdy.SYN_STREAM:
                    if headers.get("streamtype") == "error":
                        error_streams[headers.get("requestid", "")] = frame.stream_id
                    else:
                        data_streams[frame.stream_id] = headers.get("requestid", "")
                elif frame.kind == spdy.DATA and frame.stream_id in data_streams:
                    if frame.data:
                        send(session.data(frame.stream_id, frame.data))
                    if frame.flags & spdy.FLAG_FIN:
                        send(session.data(frame.stream_id, b"", fin=True))
                        error_stream = error_streams.pop(data_streams.pop(frame.stream_id), None)
                        if error_stream is not None:
                            send(session.data(error_stream, b"", fin=True))
        except OSError:
            pass

    def _send_binary(self, data: bytes) -> None:
        self.wfile.write(websocket.frame(websocket.BINARY, data))

    def _port_forward(self, ports: list[int]) -> None:
        """Each port's data channel echoes; each channel first says its port (two bytes, little-endian)."""
        try:
            for index, port in enumerate(ports):
                self._send_channel(2 * index, struct.pack("<H", port))
                self._send_channel(2 * index + 1, struct.pack("<H", port))
            for channel, data in self._messages():
                if channel % 2 == 0 and channel // 2 < len(ports):
                    self._send_channel(channel, data)
        except OSError:
            pass


def _interpret(command: list[str], stdin: Iterator[bytes], output: Callable[[int, bytes], None]) -> dict[str, Any]:
    """The pod's tiny canned interpreter: runs ``command`` (writing ``output(STDOUT or STDERR, data)``, reading
    ``stdin`` until it closes) and returns its exit as the API server reports it, a ``metav1.Status``."""
    code = 0
    if command[:1] == ["echo"]:
        output(STDOUT, " ".join(command[1:]).encode() + b"\n")
    elif command[:1] == ["cat"]:
        for data in stdin:
            output(STDOUT, data)
    elif command in (["true"], ["false"]):
        code = int(command == ["false"])
    elif command[:2] == ["sh", "-c"] and len(command) == 3 and command[2].startswith("exit "):
        code = int(command[2].split()[1])
    else:
        output(STDERR, f"sh: {shlex.join(command)}: not found\n".encode())
        code = 127
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    argv = " ".join(command)  # as Go prints a []string
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command [{argv}], exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, [""])[0] in ("1", "true")


#: What the WebSocket subprotocol of a stream may be, preferred first.
V5_CHANNEL = "v5.channel.k8s.io"
V4_CHANNEL = "v4.channel.k8s.io"
_CHANNEL_PROTOCOLS = (V5_CHANNEL, V4_CHANNEL)
#: Plain SPDY: the kubelet's stream protocols (v5 is WebSocket only), named in X-Stream-Protocol-Version
SPDY = "spdy/3.1"
STREAM_PROTOCOL_HEADER = "X-Stream-Protocol-Version"
_SPDY_CHANNEL_PROTOCOLS = (V4_CHANNEL, "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
PORT_FORWARD_V1 = "portforward.k8s.io"
#: kubectl port-forward (1.31+) tunnels SPDY in the WebSocket; the channel protocol is the older one
SPDY_PORT_FORWARD = "SPDY/3.1+portforward.k8s.io"
_PORT_FORWARD_PROTOCOLS = (SPDY_PORT_FORWARD, "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE_CHANNEL = 0, 1, 2, 3, 4, 255


class _BadImpersonation(Exception):
    pass


class _Forbidden(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.kube_apiserver", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a fake Kubernetes API server over HTTPS on loopback")
    serve.add_argument("--dir", type=Path, required=True, help="where to write the test CA, token and endpoint.json")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt), running_kube_apiserver(directory) as api:
        token_file = directory / "sa-token"
        token_file.write_text(api.token + "\n")
        token_file.chmod(0o600)
        info = {"api_server": api.url, "ca_file": str(api.ca_file.resolve()), "token_file": str(token_file.resolve())}
        (directory / "endpoint.json").write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info), flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
