"""tsh ssh / ls / config against a real cluster (the daemon as a subprocess) and small asyncssh test nodes.

The test nodes join the cluster through the real ``POST /v1/nodes/join`` with a token from ``tctl tokens add``, so
``GET /v1/nodes`` lists them and their host certificates come from the cluster's host CA. They trust the cluster's
user CA, run commands with ``/bin/sh -c`` as the current user, and — when told to require a trusted device — reject
session channels whose certificate lacks the teleport-device-* extensions, as the real node does
(docs/architecture.md, Enforcement).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity
from tests.integration.cluster import BIN, Cluster, free_port, start_cluster
from tests.integration.test_cluster_cli import ok, one_line_error, require_tool

from devicetrust.cli.profile import Profile, ProfileStore
from devicetrust.client import AuthClient
from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import issue_ssh_host_cert, issue_ssh_user_cert
from devicetrust.crypto.identity import Identity
from devicetrust.crypto.keys import generate_private_key, private_key_to_pem, public_key_to_openssh

pytestmark = pytest.mark.integration

CLUSTER = "test.cluster"
DEVICE_EXTENSIONS = (b"teleport-device-id", b"teleport-device-asset-tag", b"teleport-device-credential-id")
SEED_REJECTION = "ERROR: ssh: rejected: administratively prohibited (unauthorized device)"
DEV_ONLY_ROLE = """\
kind: role
version: v7
metadata:
  name: dev-only
spec:
  allow:
    node_labels:
      env: dev
    logins: ['{{internal.logins}}']
"""


# ------------------------------------------------------------------------------------------ test node
def has_device_extensions(key_data: bytes) -> bool:
    """Read the raw certificate (asyncssh drops unknown extensions)."""
    name_len = int.from_bytes(key_data[:4], "big")
    line = key_data[4 : 4 + name_len] + b" " + base64.b64encode(key_data)
    cert = load_ssh_public_identity(line)
    return isinstance(cert, SSHCertificate) and all(cert.extensions.get(ext) for ext in DEVICE_EXTENSIONS)


def loopback_socket() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class TestNode:
    """An asyncssh server on loopback, in its own thread and event loop."""

    __test__ = False  # not a test class

    name: str
    sock: socket.socket
    host_key: asyncssh.SSHKey
    host_cert: asyncssh.SSHCertificate | None
    user_ca_ssh: str
    require_device: bool = False
    commands: list[str | None] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"ssh-{self.name}", daemon=True)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._conns: list[asyncssh.SSHServerConnection] = []
        self._procs: list[asyncio.subprocess.Process] = []
        self._user_ca = asyncssh.import_public_key(self.user_ca_ssh)

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> TestNode:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        keys: list[Any] = [(self.host_key, self.host_cert)] if self.host_cert else [self.host_key]
        self._acceptor = await asyncssh.listen(
            sock=self.sock,
            server_factory=lambda: _Server(self),
            server_host_keys=keys,
            encoding=None,
            line_editor=False,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            config=None,
        )

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    async def _stop(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for conn in self._conns:
            conn.close()
            await conn.wait_closed()

    # ---------------------------------------------------------------------------------- sessions
    def trusts_ca(self, ca_key: asyncssh.SSHKey) -> bool:
        return bool(ca_key.public_data == self._user_ca.public_data)

    async def handle(self, login: str, stdin: Any, stdout: Any, stderr: Any) -> None:
        chan = stdout.channel
        command = chan.get_command()
        term = chan.get_terminal_type()
        self.commands.append(command)
        self.logins.append(login)
        if command is None and term:
            await self._terminal_echo(chan, stdin, stdout, term)
            return
        argv = ["/bin/sh"] if command is None else ["/bin/sh", "-c", command]
        env = {**os.environ, "TEST_LOGIN": login, "TEST_TERM": term or ""}
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self._procs.append(proc)
        assert proc.stdin and proc.stdout and proc.stderr

        async def feed() -> None:
            assert proc.stdin
            with contextlib.suppress(OSError, asyncssh.Error):
                while data := await stdin.read(65536):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            proc.stdin.close()

        async def copy(source: asyncio.StreamReader, sink: Any) -> None:
            while data := await source.read(65536):
                sink.write(data)

        feeder = asyncio.create_task(feed())
        await asyncio.gather(copy(proc.stdout, stdout), copy(proc.stderr, stderr))
        status = await proc.wait()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        if status < 0:
            chan.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
        else:
            chan.exit(status)

    async def _terminal_echo(self, chan: Any, stdin: Any, stdout: Any, term: str) -> None:
        """A fake interactive shell: reports the terminal, its resizes and each byte typed; 'q' ends it."""
        width, height = chan.get_terminal_size()[:2]
        stdout.write(f"pty {term} {width}x{height}\r\n".encode())
        while True:
            try:
                data = await stdin.read(1)
            except asyncssh.TerminalSizeChanged as change:
                stdout.write(f"resize {change.width}x{change.height}\r\n".encode())
                continue
            if not data or data == b"q":
                break
            stdout.write(f"got {data!r}\r\n".encode())
        chan.exit(0)


class _Server(asyncssh.SSHServer):
    def __init__(self, node: TestNode) -> None:
        self.node = node
        self.conn: asyncssh.SSHServerConnection | None = None
        self.key_data = b""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.node._conns.append(conn)
        original = conn.validate_public_key

        async def capture(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            accepted = bool(await original(username, key_data, msg, signature))
            if accepted:
                self.key_data = key_data
            return accepted

        conn.validate_public_key = capture  # type: ignore[method-assign]

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # certificates only

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self.node.trusts_ca(key)

    def session_requested(self) -> Callable[..., Any]:
        if self.node.require_device and not has_device_extensions(self.key_data):
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "unauthorized device")
        assert self.conn is not None
        login = str(self.conn.get_extra_info("username"))

        async def run(stdin: Any, stdout: Any, stderr: Any) -> None:
            await self.node.handle(login, stdin, stdout, stderr)

        return run


# ------------------------------------------------------------------------------------------- fixtures
@dataclass
class World:
    cluster: Cluster
    nodes: dict[str, TestNode]
    records: dict[str, dict[str, Any]]

    def tsh(
        self, *args: str, input: str | None = None, who: str = "alice", **env: str
    ) -> subprocess.CompletedProcess[str]:
        environment = self.cluster.env(TSH_HOME=str(self.cluster.home(who)), **env)
        environment.pop("SSH_AUTH_SOCK", None)
        return subprocess.run(
            [str(BIN / "tsh"), *args],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )


def _join(cluster: Cluster, ca_pem: str, hostname: str, addr: str, public_key: str, labels: dict[str, str]) -> Any:
    result = cluster.tctl("tokens", "add", "--type=node", "--format=json")
    token = json.loads(ok(result))["token"]
    with AuthClient(cluster.proxy, ca_pem=ca_pem) as client:
        return client.post(
            "/v1/nodes/join",
            {"token": token, "hostname": hostname, "addr": addr, "labels": labels, "public_key": public_key},
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    cluster = start_cluster(tmp_path_factory.mktemp("ssh"))
    nodes: dict[str, TestNode] = {}
    try:
        cluster.signup_and_login("alice", logins="alice,bob")
        (cluster.root / "dev-only.yaml").write_text(DEV_ONLY_ROLE)
        ok(cluster.tctl("create", "-f", str(cluster.root / "dev-only.yaml")))
        cluster.signup_and_login("dora", roles="dev-only", logins="dora")
        ca_pem = ProfileStore(cluster.home("alice")).pinned_ca(cluster.proxy)
        assert ca_pem
        records: dict[str, dict[str, Any]] = {}
        foreign_ca = CertAuthority.generate("host", CLUSTER, datetime.now(UTC))

        def node(name: str, labels: dict[str, str], *, require_device: bool = False, signer: str = "cluster") -> None:
            key = generate_private_key()
            sock, addr = loopback_socket()
            reply = _join(cluster, ca_pem, name, addr, public_key_to_openssh(key.public_key()), labels)
            host_cert = None
            if signer == "cluster":
                host_cert = asyncssh.import_certificate(reply["host_cert"])
            elif signer == "foreign":
                # everything right but the signer
                now = datetime.now(UTC)
                principals = [reply["host_id"], name, f"{name}.{CLUSTER}", "127.0.0.1"]
                valid = (now - timedelta(minutes=1), now + timedelta(hours=1))
                cert = issue_ssh_host_cert(foreign_ca, key.public_key(), reply["host_id"], principals, *valid)
                host_cert = asyncssh.import_certificate(cert)
            ssh_key = asyncssh.import_private_key(private_key_to_pem(key))
            test_node = TestNode(name, sock, ssh_key, host_cert, reply["user_ca_ssh"], require_device=require_device)
            nodes[name] = test_node.start()
            records[name] = {"host_id": reply["host_id"], "addr": addr}

        node("dev-server", {"env": "dev"})
        node("prod-server", {"env": "prod", "team": "ops"}, require_device=True)
        node("rogue-server", {"env": "dev"}, signer="foreign")
        node("plain-server", {"env": "dev"}, signer="none")
        # A record whose address is another node's: that node's certificate does not name this host id.
        key = generate_private_key()
        dev_addr = nodes["dev-server"].addr
        reply = _join(cluster, ca_pem, "impostor", dev_addr, public_key_to_openssh(key.public_key()), {"env": "dev"})
        records["impostor"] = {"host_id": reply["host_id"], "addr": dev_addr}
        down_addr = f"127.0.0.1:{free_port()}"
        reply = _join(
            cluster, ca_pem, "down-server", down_addr, public_key_to_openssh(key.public_key()), {"env": "dev"}
        )
        records["down-server"] = {"host_id": reply["host_id"], "addr": down_addr}
        yield World(cluster, nodes, records)
    finally:
        for test_node in nodes.values():
            test_node.stop()
        cluster.stop()


# ---------------------------------------------------------------------------------------------- tsh ssh
def test_exec_streams_stdout_and_stderr_and_propagates_exit_status(world: World) -> None:
    result = world.tsh("ssh", "dev-server", "echo out; echo err >&2; exit 7")
    assert result.returncode == 7, result.stderr
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert world.tsh("ssh", "dev-server", "true").returncode == 0
    # killed by a signal: no exit status, 255 as OpenSSH
    assert world.tsh("ssh", "dev-server", "kill -9 $$").returncode == 255


def test_arguments_after_the_host_belong_to_the_command(world: World) -> None:
    result = world.tsh("ssh", "dev-server", "echo", "-n", "hello", "--world")
    assert ok(result) == "hello --world"


def test_login_defaults_to_the_first_and_can_be_overridden(world: World) -> None:
    assert ok(world.tsh("ssh", "dev-server", "echo $TEST_LOGIN")) == "alice\n"
    assert ok(world.tsh("ssh", "-l", "bob", "dev-server", "echo $TEST_LOGIN")) == "bob\n"
    assert ok(world.tsh("ssh", "bob@dev-server", "echo $TEST_LOGIN")) == "bob\n"
    # by <hostname>.<cluster> and by host id
    assert ok(world.tsh("ssh", f"dev-server.{CLUSTER}", "echo ok")) == "ok\n"
    assert ok(world.tsh("ssh", world.records["dev-server"]["host_id"], "echo ok")) == "ok\n"


def test_stdin_is_forwarded_and_a_shell_without_terminal_runs_it(world: World) -> None:
    assert ok(world.tsh("ssh", "dev-server", "wc -c", input="abcde")).strip() == "5"
    result = world.tsh("ssh", "dev-server", input='echo "from shell [$TEST_TERM]"\nexit 3\n')
    assert result.returncode == 3, result.stderr
    assert result.stdout == "from shell []\n"
    assert world.nodes["dev-server"].commands[-1] is None  # a shell request, not exec


def test_dash_t_requests_a_terminal(world: World) -> None:
    assert ok(world.tsh("ssh", "-t", "dev-server", 'echo "[$TEST_TERM]"', TERM="vt100")) == "[vt100]\n"


def test_device_trust_rejection_prints_the_seed_line(world: World) -> None:
    node = world.nodes["prod-server"]
    before = len(node.commands)
    result = world.tsh("ssh", "alice@prod-server", "echo hi")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == SEED_REJECTION + "\n"
    assert len(node.commands) == before  # nothing ran


def test_unknown_host(world: World) -> None:
    assert one_line_error(world.tsh("ssh", "nosuch", "true")) == 'ERROR: no node named "nosuch" (see tsh ls)'


@pytest.mark.parametrize("name", ["rogue-server", "plain-server", "impostor"])
def test_node_without_a_host_certificate_for_it_is_refused(world: World, name: str) -> None:
    target = world.nodes.get(name) or world.nodes["dev-server"]
    before = len(target.commands)
    error = one_line_error(world.tsh("ssh", name, "echo hi"))
    assert error.startswith(f"ERROR: ssh: {name} (127.0.0.1:"), error
    if name == "plain-server":
        # No host key algorithm in common: whichever side notices first ends the key exchange.
        assert "is not a node of cluster test.cluster" in error or "closed the connection" in error
    else:
        assert "is not a node of cluster test.cluster" in error
    assert len(target.commands) == before
    assert not target.logins[before:]  # authentication never happened


def test_login_not_in_the_certificate_is_denied(world: World) -> None:
    error = one_line_error(world.tsh("ssh", "carol@dev-server", "true"))
    assert error == "ERROR: ssh: access denied to carol@dev-server (your certificate was not accepted)"


def test_unreachable_node(world: World) -> None:
    addr = world.records["down-server"]["addr"]
    error = one_line_error(world.tsh("ssh", "down-server", "true"))
    assert error == f"ERROR: ssh: cannot connect to down-server ({addr}): Connection refused"
    port = int(world.records["dev-server"]["addr"].rsplit(":", 1)[1])
    closed = free_port()
    error = one_line_error(world.tsh("ssh", "-p", str(closed), "dev-server", "true"))
    assert error == f"ERROR: ssh: cannot connect to dev-server (127.0.0.1:{closed}): Connection refused"
    assert ok(world.tsh("ssh", "-p", str(port), "dev-server", "echo ok")) == "ok\n"


def _winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)


def test_interactive_shell_gets_a_raw_terminal_resizes_and_restores_it(world: World) -> None:
    master, slave = os.openpty()
    try:
        _winsize(slave, 100, 30)
        before = termios.tcgetattr(slave)
        env = world.cluster.env(TSH_HOME=str(world.cluster.home("alice")), TERM="xterm-test")
        proc = subprocess.Popen(
            [str(BIN / "tsh"), "ssh", "dev-server"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        try:
            seen = bytearray()
            _read_until(master, b"pty xterm-test 100x30\r\n", seen)
            # raw mode: ^C travels as a byte instead of interrupting tsh; it also proves the forwarding started
            os.write(master, b"\x03")
            _read_until(master, b"got b'\\x03'\r\n", seen)
            _winsize(slave, 120, 40)
            proc.send_signal(signal.SIGWINCH)
            _read_until(master, b"resize 120x40\r\n", seen)
            os.write(master, b"q")
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_expired_certificate(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    user_ca = CertAuthority.generate("user", CLUSTER, now)
    host_ca = CertAuthority.generate("host", CLUSTER, now)
    key = generate_private_key()
    identity = Identity(
        username="alice",
        roles=("access",),
        logins=("alice",),
        traits={},
        not_before=now - timedelta(hours=13),
        not_after=now - timedelta(hours=1),
    )
    profile = Profile(
        proxy="127.0.0.1:1",
        user="alice",
        cluster_name=CLUSTER,
        kind="user",
        user_ca_ssh=user_ca.ssh_public_key(),
        user_ca_pem=user_ca.certificate_pem().decode(),
        host_ca_ssh=host_ca.ssh_public_key(),
    )
    ProfileStore(tmp_path).save(
        profile,
        private_key_pem=private_key_to_pem(key),
        public_key_openssh=public_key_to_openssh(key.public_key()),
        ssh_cert=issue_ssh_user_cert(user_ca, key.public_key(), identity).decode(),
        tls_cert_pem="",
        session_token="unused",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVICETRUST_", "TSH_"))}
    result = subprocess.run(
        [str(BIN / "tsh"), "ssh", "dev-server", "true"],
        capture_output=True,
        text=True,
        env={**env, "TSH_HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert one_line_error(result) == "ERROR: your certificate has expired; run 'tsh login'"


# ----------------------------------------------------------------------------------------------- tsh ls
def test_ls_lists_reachable_nodes(world: World) -> None:
    text = ok(world.tsh("ls"))
    lines = text.splitlines()
    assert lines[0].split() == ["Node", "Name", "Address", "Labels"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["dev-server"] == [world.records["dev-server"]["addr"], "env=dev"]
    assert rows["prod-server"] == [world.records["prod-server"]["addr"], "env=prod,team=ops"]
    items = json.loads(ok(world.tsh("ls", "--format=json")))
    # The cluster's own embedded node (this machine's host name, labels env=dev) is listed too.
    own = {item["hostname"] for item in items} - set(world.records)
    assert own == {socket.gethostname()}
    test_nodes = [item for item in items if item["hostname"] in world.records]
    assert {item["host_id"] for item in test_nodes} == {r["host_id"] for r in world.records.values()}
    # a role that only allows env=dev nodes sees only those
    visible = {item["hostname"] for item in json.loads(ok(world.tsh("ls", "--format=json", who="dora")))}
    assert visible == {"dev-server", "rogue-server", "plain-server", "impostor", "down-server"} | own


# ------------------------------------------------------------------------------------------- tsh config
def test_config_works_with_openssh(world: World, tmp_path: Path) -> None:
    ssh = require_tool("ssh")
    text = ok(world.tsh("config"))
    home = world.cluster.home("alice")
    assert f"Host *.{CLUSTER} " in text
    assert "IdentitiesOnly yes" in text and "StrictHostKeyChecking yes" in text
    assert "Match originalhost" not in text  # no enrolled device in this tsh home: nothing to prove
    known_hosts = (home / "known_hosts").read_text()
    assert known_hosts.startswith(f"@cert-authority *.{CLUSTER},")
    assert len(known_hosts.splitlines()) == 1
    ok(world.tsh("config"))  # rerunning replaces the line
    assert (home / "known_hosts").read_text() == known_hosts
    config = tmp_path / "ssh_config"
    config.write_text(text + "\n")
    env = world.cluster.env()
    env.pop("SSH_AUTH_SOCK", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [ssh, "-F", str(config), "-o", "BatchMode=yes", *args]
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60, check=False
        )

    for target in (f"alice@dev-server.{CLUSTER}", "alice@dev-server", "bob@dev-server"):
        result = run(target, "echo hi $TEST_LOGIN")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"hi {target.split('@')[0]}\n"
    result = run(f"alice@dev-server.{CLUSTER}", "exit 5")
    assert result.returncode == 5
    # OpenSSH refuses what tsh refuses
    for target in ("alice@rogue-server", "alice@plain-server", "alice@impostor"):
        result = run(target, "echo hi")
        assert result.returncode == 255 and "hi" not in result.stdout, result.stderr
    result = run("alice@prod-server", "echo hi")
    assert result.returncode == 255 and "administratively prohibited" in result.stderr.lower(), result.stderr
