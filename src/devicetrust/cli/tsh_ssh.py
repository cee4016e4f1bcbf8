"""tsh ssh, tsh ls and tsh config: reach the cluster's SSH nodes with the current profile's certificate.

``tsh ssh`` looks the node up in ``GET /v1/nodes`` (authenticated with the profile's session token) and connects
straight to its address with asyncssh. The node must prove itself with a host certificate from the cluster's host
CA that names the node's host id (every certificate the auth service issues at join does); nothing else is
trusted, and no ``~/.ssh`` file (config, known_hosts, agent, keys) is consulted.

Where device trust is in use, every session first proves the device (:mod:`devicetrust.cli.device_proof`): the
enrolled device answers a challenge bound to the node's host id and the session runs on the session certificate
that comes back. The ceremony's first request names the node as the user did and the auth service resolves it
(the same rules, :func:`devicetrust.access.resolve_node`), so there is no lookup before it; the rest of the
ceremony (the device's answer, the certificate) runs in a thread while the SSH connection and key exchange go on.
If the proof fails, the session is still attempted with the login certificate, so the node gives its verdict (a
node that requires a device refuses it as "unauthorized device").

``tsh config`` prints an OpenSSH client configuration that does the same with ``/usr/bin/ssh``, and writes the
``@cert-authority`` line it relies on to ``$TSH_HOME/known_hosts``. For the device proof it uses ``Match exec``:
ssh runs those commands synchronously while it reads its configuration, before it loads any certificate file,
so ``tsh device session-cert`` can write the node's session certificate that the block then names first. (A
ProxyCommand would race ssh: ssh reads ``CertificateFile`` right after starting it, without waiting.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, NotRequired, TypedDict, TypeVar

import asyncssh
import click

from devicetrust.access import UNAUTHORIZED_DEVICE, resolve_node
from devicetrust.cli.common import emit, format_option, labels_text, print_table, warn
from devicetrust.cli.device_proof import (
    PendingSessionProof,
    begin_node_proof,
    begin_session_proof,
    enrolled_backend,
    wants_session_proof,
)
from devicetrust.cli.profile import Profile, ProfileStore, session_client
from devicetrust.client import AuthApi
from devicetrust.crypto.certs import identity_from_ssh_cert
from devicetrust.crypto.identity import Identity
from devicetrust.errors import (
    AccessDeniedError,
    ConnectionFailedError,
    DevicetrustError,
    NotFoundError,
    SessionExpiredError,
    TrustError,
    ValidationError,
)
from devicetrust.files import write_atomic
from devicetrust.protocol import NodeInfo

T = TypeVar("T")

#: Seconds to wait for a node to accept the TCP connection and finish the SSH handshake.
CONNECT_TIMEOUT_SECONDS = 15.0
#: Keepalives notice a node that went away during a quiet interactive session.
KEEPALIVE_INTERVAL_SECONDS = 30.0
#: Exit status when the session ended without an exit status (killed by a signal, connection dropped), as OpenSSH.
NO_EXIT_STATUS = 255
DEFAULT_SSH_PORT = 22
DEFAULT_TERM = "xterm"
STDIN_CHUNK = 32 * 1024

#: Go's x/crypto/ssh names for the channel open failure codes: Teleport users see ``ssh: rejected: <name> (<msg>)``.
_REJECTION_NAMES = {
    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED: "administratively prohibited",
    asyncssh.OPEN_CONNECT_FAILED: "connect failed",
    asyncssh.OPEN_UNKNOWN_CHANNEL_TYPE: "unknown channel type",
    asyncssh.OPEN_RESOURCE_SHORTAGE: "resource shortage",
}
#: Marks our line in $TSH_HOME/known_hosts so re-running `tsh config` replaces it (one line per cluster).
_KNOWN_HOSTS_TAG = "devicetrust-cluster:"


# ------------------------------------------------------------------------------------------------ nodes
class NodeJson(TypedDict):
    """A node as ``tsh ls --format json`` shows it."""

    host_id: str
    hostname: str
    addr: str
    labels: dict[str, str]
    last_seen: str


@dataclass(frozen=True)
class Node:
    """One entry of ``GET /v1/nodes``."""

    host_id: str
    hostname: str
    addr: str
    labels: Mapping[str, str]
    last_seen: str = ""

    @classmethod
    def from_reply(cls, item: NodeInfo) -> Node:
        return cls(
            host_id=item.host_id,
            hostname=item.hostname,
            addr=item.addr,
            labels=dict(item.labels),
            last_seen=item.last_seen,
        )

    @property
    def host(self) -> str:
        return split_host_port(self.addr)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.addr)[1]

    def labels_text(self) -> str:
        return labels_text(self.labels)

    def to_json(self) -> NodeJson:
        return {
            "host_id": self.host_id,
            "hostname": self.hostname,
            "addr": self.addr,
            "labels": dict(sorted(self.labels.items())),
            "last_seen": self.last_seen,
        }


def split_host_port(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (a bare host means port 22)."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        # no port, or an unbracketed IPv6 address
        host, port_text = addr, str(DEFAULT_SSH_PORT)
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise DevicetrustError(f"the auth service listed a node with an invalid address {addr!r}")
    return host, port


def fetch_nodes(store: ProfileStore, profile: Profile, client: AuthApi | None = None) -> list[Node]:
    """The nodes the current user may reach (``GET /v1/nodes``), by host name; on ``client`` when given."""
    with contextlib.nullcontext(client) if client is not None else session_client(store, profile) as api:
        items = api.list_nodes().items
    return sorted((Node.from_reply(item) for item in items), key=lambda n: (n.hostname, n.host_id))


# --------------------------------------------------------------------------------------------- identity
@dataclass(frozen=True)
class ClientIdentity:
    """What tsh ssh presents: the profile's key and certificate, and what the certificate says."""

    profile: Profile
    key_path: Path
    cert_path: Path
    identity: Identity


def load_identity(store: ProfileStore, profile: Profile, now: datetime | None = None) -> ClientIdentity:
    key_path = store.key_path(profile.proxy, profile.user)
    cert_path = store.ssh_cert_path(profile)
    if not key_path.exists() or not cert_path.exists():
        raise SessionExpiredError("not logged in; run 'tsh login'")
    try:
        identity = identity_from_ssh_cert(cert_path.read_bytes())
    except DevicetrustError as err:
        raise ValidationError(f"the certificate in {cert_path} cannot be read ({err}); run 'tsh login'") from None
    if identity.not_after <= (now or datetime.now(UTC)):
        raise SessionExpiredError("your certificate has expired; run 'tsh login'")
    return ClientIdentity(profile, key_path, cert_path, identity)


def split_target(target: str) -> tuple[str | None, str]:
    """``[LOGIN@]HOST`` (the last ``@`` separates them, as in OpenSSH)."""
    login, sep, host = target.rpartition("@")
    if not host or (sep and not login):
        raise ValidationError(f"invalid destination {target!r}: expected [LOGIN@]HOST")
    return (login if sep else None), host


def choose_login(identity: Identity, login: str | None, target_login: str | None) -> str:
    chosen = login or target_login or (identity.logins[0] if identity.logins else None)
    if not chosen:
        raise ValidationError("your roles grant no SSH logins; give one with -l LOGIN or LOGIN@HOST")
    return chosen


# ---------------------------------------------------------------------------------------------- session
@dataclass(frozen=True)
class SSHRequest:
    """One ``tsh ssh`` invocation, resolved."""

    client: ClientIdentity
    node: Node
    login: str
    port: int
    #: None: the login shell
    command: str | None
    pty: bool
    #: this session's device proof, running in a thread while the connection and key exchange go on: it resolves
    #: to the session certificate, or to None to present the login certificate (None: no proof at all)
    proof: concurrent.futures.Future[bytes | None] | None = None

    @property
    def where(self) -> str:
        return f"{self.node.hostname} ({self.node.host}:{self.port})"


def rejection_message(err: asyncssh.ChannelOpenError) -> str:
    """The node refused the session channel: rendered as Teleport's (Go's) ``ssh: rejected: …`` line."""
    name = _REJECTION_NAMES.get(err.code)
    if name is None:
        if err.code == asyncssh.OPEN_REQUEST_PTY_FAILED:
            return f"ssh: the node refused a terminal ({err.reason})"
        if err.code == asyncssh.OPEN_REQUEST_SESSION_FAILED:
            return f"ssh: the node refused to start the session ({err.reason})"
        name = f"unknown reason {err.code}"
    return f"ssh: rejected: {name} ({err.reason})"


def _os_reason(err: OSError) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if err.errno:
        return os.strerror(err.errno)
    return str(err) or type(err).__name__


def _term_size(fds: Sequence[int]) -> tuple[int, int]:
    for fd in fds:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns and size.lines:
                return size.columns, size.lines
    return 80, 24


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode and always put it back."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Output:
    """Blocking writes of session data to one of our file descriptors (the pipe's reader sets the pace)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self._stream.write(data)
            self._stream.flush()
        except BrokenPipeError:
            self.broken = True


class _Session(asyncssh.SSHClientSession[bytes]):
    def __init__(self, stdout: _Output, stderr: _Output, on_pause: Callable[[bool], None]) -> None:
        self._stdout = stdout
        self._stderr = stderr
        self._on_pause = on_pause
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        out = self._stderr if datatype == asyncssh.EXTENDED_DATA_STDERR else self._stdout
        out.write(data)
        if self._stdout.broken and self.chan is not None:
            # like `ssh … | head`: nobody reads our output any more
            self.chan.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            if exc is None:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(exc)

    def pause_writing(self) -> None:
        self._on_pause(True)

    def resume_writing(self) -> None:
        self._on_pause(False)


class _StdinForwarder:
    """Copies our standard input into the channel, then sends EOF. Pollable inputs (terminals, pipes, sockets)
    are watched by the event loop; regular files and /dev/null are read in a worker thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._watching = False
        self._done = False
        self._task: asyncio.Task[None] | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()

    def start(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan
        try:
            mode = os.fstat(self._fd).st_mode
        except OSError:
            self._finish()
            return
        if stat.S_ISREG(mode) or not self._watch():
            self._task = asyncio.get_running_loop().create_task(self._pump_blocking())

    def _watch(self) -> bool:
        try:
            asyncio.get_running_loop().add_reader(self._fd, self._readable)
        except (OSError, ValueError):
            return False
        self._watching = True
        return True

    def _unwatch(self) -> None:
        if self._watching:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._watching = False

    def set_paused(self, paused: bool) -> None:
        """Flow control: stop reading while the channel's send buffer is full."""
        if paused:
            self._resumed.clear()
        else:
            self._resumed.set()
        if self._done or self._task is not None:
            return
        if paused:
            self._unwatch()
        elif not self._watching:
            self._watch()

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, STDIN_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish()
            return
        try:
            if self._chan is not None:
                self._chan.write(data)
        except (OSError, asyncssh.Error):
            # the session already ended
            self._finish()

    async def _pump_blocking(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.run_in_executor(None, os.read, self._fd, STDIN_CHUNK)
            if not data:
                break
            await self._resumed.wait()
            if self._chan is None:
                break
            try:
                self._chan.write(data)
            except (OSError, asyncssh.Error):
                break
        self._finish()

    def _finish(self) -> None:
        self._unwatch()
        if not self._done:
            self._done = True
            if self._chan is not None:
                with contextlib.suppress(OSError, asyncssh.Error):
                    self._chan.write_eof()

    async def stop(self) -> None:
        self._done = True
        self._unwatch()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._task


class _ConnectOptions(TypedDict):
    """The keyword arguments of asyncssh.connect that tsh sets."""

    username: str
    #: None with client_factory: the key is offered once the session's device proof is done
    client_keys: list[tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]] | None
    client_factory: NotRequired[Callable[[], asyncssh.SSHClient]]
    known_hosts: asyncssh.SSHKnownHosts
    host_key_alias: str
    config: None
    agent_path: None
    agent_forwarding: bool
    password_auth: bool
    kbdint_auth: bool
    gss_auth: bool
    host_based_auth: bool
    x509_trusted_certs: None
    preferred_auth: str
    connect_timeout: float
    keepalive_interval: float


class _Terminal(TypedDict, total=False):
    """The keyword arguments of SSHClientConnection.create_session that ask for (or refuse) a terminal."""

    request_pty: bool | str
    term_type: str | None
    term_size: tuple[int, int]


class SessionProofClient(asyncssh.SSHClient):
    """Offers the key with the certificate ``certificate`` resolves to, at user authentication: the session's device
    proof runs while the TCP connection, key exchange and host certificate check go on (as OpenSSH asks its agent
    for keys only then), so a session pays for the proof only where it outlasts them."""

    def __init__(self, key: asyncssh.SSHKey, certificate: asyncio.Future[asyncssh.SSHCertificate]) -> None:
        self._key = key
        self._certificate = certificate
        self._offered = False

    async def public_key_auth_requested(self) -> list[tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]] | None:
        if self._offered:  # asyncssh asks again after a refusal: there is nothing else to offer
            return None
        self._offered = True
        return [(self._key, await self._certificate)]


def in_thread(work: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Start ``work`` in a new thread now; the future resolves to its result or its exception. The thread does not
    hold the process up at exit (tsh exits once the session is over, whatever a late proof is doing)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as err:
            future.set_exception(err)

    threading.Thread(target=run, name="session-proof", daemon=True).start()
    return future


def proved_certificate(
    proof: concurrent.futures.Future[bytes | None], fallback: asyncssh.SSHCertificate
) -> asyncio.Future[asyncssh.SSHCertificate]:
    """The certificate a running ``proof`` yields: its session certificate, or ``fallback`` without one."""

    async def certificate() -> asyncssh.SSHCertificate:
        session_cert = await asyncio.wrap_future(proof)
        return fallback if session_cert is None else asyncssh.import_certificate(session_cert)

    return asyncio.ensure_future(certificate())


def _connect_options(req: SSHRequest) -> tuple[_ConnectOptions, asyncio.Future[asyncssh.SSHCertificate] | None]:
    key = asyncssh.read_private_key(str(req.client.key_path))
    cert = asyncssh.read_certificate(str(req.client.cert_path))
    ca_line = f"@cert-authority * {req.client.profile.host_ca_ssh.strip()}\n"
    options: _ConnectOptions = {
        "username": req.login,
        "client_keys": [(key, cert)],
        # the cluster host CA and nothing else; its certificate must name this node's host id
        "known_hosts": asyncssh.import_known_hosts(ca_line),
        "host_key_alias": req.node.host_id,
        "config": None,
        "agent_path": None,
        "agent_forwarding": False,
        "password_auth": False,
        "kbdint_auth": False,
        "gss_auth": False,
        "host_based_auth": False,
        "x509_trusted_certs": None,
        "preferred_auth": "publickey",
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "keepalive_interval": KEEPALIVE_INTERVAL_SECONDS,
    }
    if req.proof is None:
        return options, None
    proof = proved_certificate(req.proof, cert)
    options["client_keys"] = None
    options["client_factory"] = lambda: SessionProofClient(key, proof)
    return options, proof


async def _connect(req: SSHRequest) -> asyncssh.SSHClientConnection:
    try:
        options, proof = _connect_options(req)
    except (OSError, asyncssh.KeyImportError) as err:
        raise ValidationError(f"cannot read your key or certificate ({err}); run 'tsh login'") from None
    try:
        return await _open(req, options)
    except BaseException:
        if proof is not None:
            proof.cancel()
        raise


async def _open(req: SSHRequest, options: _ConnectOptions) -> asyncssh.SSHClientConnection:
    try:
        return await asyncssh.connect(req.node.host, req.port, **options)
    except asyncssh.PermissionDenied:
        raise AccessDeniedError(
            f"ssh: access denied to {req.login}@{req.node.hostname} (your certificate was not accepted)"
        ) from None
    except asyncssh.HostKeyNotVerifiable as err:
        raise TrustError(
            f"ssh: {req.where} is not a node of cluster {req.client.profile.cluster_name} "
            f"(its host certificate was not accepted: {err.reason})"
        ) from None
    except asyncssh.KeyExchangeFailed as err:
        # we accept only host certificates, so a node with a plain host key fails here, before any verification
        raise TrustError(
            f"ssh: {req.where} is not a node of cluster {req.client.profile.cluster_name} "
            f"(it offers no host certificate tsh accepts: {err.reason})"
        ) from None
    except asyncssh.DisconnectError as err:
        raise ConnectionFailedError(f"ssh: {req.where} closed the connection: {err.reason}") from None
    except (TimeoutError, OSError) as err:
        raise ConnectionFailedError(f"ssh: cannot connect to {req.where}: {_os_reason(err)}") from None


async def run_ssh(req: SSHRequest, stdin_fd: int = 0) -> int:
    """Connect, run the command or shell, stream its output and return its exit status."""
    stdin_tty = os.isatty(stdin_fd)
    stdout = _Output(sys.stdout.buffer)
    stderr = _Output(sys.stderr.buffer)
    forwarder = _StdinForwarder(stdin_fd)
    conn = await _connect(req)
    try:
        term: _Terminal = {"request_pty": False, "term_type": None}
        if req.pty:
            term = {
                "request_pty": "force",
                "term_type": os.environ.get("TERM") or DEFAULT_TERM,
                "term_size": _term_size((1, stdin_fd)),
            }
        try:
            chan, session = await conn.create_session(
                lambda: _Session(stdout, stderr, forwarder.set_paused), req.command, encoding=None, **term
            )
        except asyncssh.ChannelOpenError as err:
            raise AccessDeniedError(rejection_message(err)) from None
        assert isinstance(session, _Session)
        raw = raw_terminal(stdin_fd) if req.pty and stdin_tty else contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        with raw:
            if req.pty:
                loop.add_signal_handler(signal.SIGWINCH, lambda: chan.change_terminal_size(*_term_size((1, stdin_fd))))
            forwarder.start(chan)
            try:
                await session.closed
            except asyncssh.Error as err:
                raise ConnectionFailedError(f"ssh: the connection to {req.where} was lost: {err.reason}") from None
            except OSError as err:
                raise ConnectionFailedError(f"ssh: the connection to {req.where} was lost: {_os_reason(err)}") from None
            finally:
                if req.pty:
                    loop.remove_signal_handler(signal.SIGWINCH)
                await forwarder.stop()
        status = chan.get_exit_status()
        return NO_EXIT_STATUS if status is None or status < 0 else status
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            await conn.wait_closed()


def ssh_command(
    store: ProfileStore,
    target: str,
    command: Sequence[str],
    *,
    login: str | None = None,
    port: int | None = None,
    force_pty: bool = False,
    device_key: str | None = None,
) -> int:
    """``tsh ssh``: everything but process exit. Raises DevicetrustError for what users can fix."""
    profile = store.require_current()
    client = load_identity(store, profile)
    target_login, host = split_target(target)
    with session_client(store, profile) as api:
        proof = SessionProof(store, profile, device_key, api)
        # With a session proof, the ceremony's first request also resolves the node: one round trip less.
        began = proof.begin(host) if proof.wanted() else None
        node = (
            began[0]
            if began is not None
            else resolve_node(fetch_nodes(store, profile, api), host, profile.cluster_name)
        )
        text = " ".join(command) if command else None
        req = SSHRequest(
            client=client,
            node=node,
            login=choose_login(client.identity, login, target_login),
            port=port or node.port,
            command=text,
            pty=force_pty or (text is None and os.isatty(0)),
            proof=began[1] if began is not None else None,
        )
        # asyncssh would log handshake failures to stderr through logging's last-resort handler
        logging.getLogger("asyncssh").setLevel(logging.CRITICAL)
        try:
            return asyncio.run(run_ssh(req))
        except AccessDeniedError as err:
            if req.proof is None and f"({UNAUTHORIZED_DEVICE})" in str(err) and proof.wanted(always=True):
                # The cluster's settings changed since login (the profile said no proof was needed): prove and retry.
                session_cert = proof.for_node(node)
                if session_cert is not None:
                    proven: concurrent.futures.Future[bytes | None] = concurrent.futures.Future()
                    proven.set_result(session_cert)
                    return asyncio.run(run_ssh(dataclasses.replace(req, proof=proven)))
            if proof.error is not None:
                warn(f"this device could not prove itself for the session: {proof.error}")
            raise


class SessionProof:
    """The device proof for a session, on the auth service connection ``client``; remembers what kept the device
    from proving itself (the node's refusal is then explained by it)."""

    def __init__(self, store: ProfileStore, profile: Profile, device_key: str | None, client: AuthApi) -> None:
        self._store, self._profile, self._device_key, self._client = store, profile, device_key, client
        self.error: DevicetrustError | None = None

    def wanted(self, *, always: bool = False) -> bool:
        """Whether this profile proves the device before sessions (``always``: whatever the profile says) and this
        tsh home has an enrolled device to do it."""
        wanted = always or wants_session_proof(self._profile)
        return wanted and enrolled_backend(self._store, self._device_key) is not None

    def begin(self, name: str) -> tuple[Node, concurrent.futures.Future[bytes | None]] | None:
        """Begin the proof for the node the user calls ``name``, which the auth service resolves: that node, and
        the rest of the proof running in a thread (resolving to the session certificate, or None with ``error``
        set). None, with ``error`` set, when the ceremony could not begin; NotFoundError for a name that no node,
        or several, carry."""
        try:
            node, pending = begin_node_proof(
                self._store, self._profile, name, backend=self._device_key, client=self._client
            )
        except NotFoundError:
            raise
        except DevicetrustError as err:
            self.error = err
            return None
        return Node.from_reply(node), in_thread(lambda: self._finished(pending))

    def for_node(self, node: Node) -> bytes | None:
        """The whole proof for ``node``: the session certificate, or None (and ``error`` set)."""
        try:
            pending = begin_session_proof(
                self._store, self._profile, "ssh", node.host_id, backend=self._device_key, client=self._client
            )
        except DevicetrustError as err:
            self.error = err
            return None
        return self._finished(pending)

    def _finished(self, pending: PendingSessionProof) -> bytes | None:
        try:
            return pending.finish().ssh_cert
        except DevicetrustError as err:
            self.error = err
            return None


# ----------------------------------------------------------------------------------------------- config
def _ssh_config_path(path: Path) -> str:
    text = str(path)
    if any(c in text for c in '"\n\r'):
        raise ValidationError(f"{text!r}: OpenSSH cannot use a path with quotes or line breaks; set TSH_HOME")
    # ssh_config expands %-tokens in these paths
    return '"' + text.replace("%", "%%") + '"'


def _config_safe(node: Node) -> bool:
    """Addresses come from node heartbeats: only plain host names, IPs and ids go into ssh_config and known_hosts."""
    try:
        host = node.host
    except DevicetrustError:
        return False
    return all(c.isalnum() or c in ".-:_" for c in host) and all(c.isalnum() or c in "-_" for c in node.host_id)


def _host_patterns(cluster_name: str, nodes: Sequence[Node]) -> list[str]:
    patterns = [f"*.{cluster_name}"]
    for node in nodes:
        host, port = node.host, node.port
        patterns += [node.hostname, host, node.host_id]
        if port != DEFAULT_SSH_PORT:
            patterns.append(f"[{host}]:{port}")
    return list(dict.fromkeys(patterns))


def known_hosts_line(profile: Profile, nodes: Sequence[Node]) -> str:
    """The ``@cert-authority`` line that makes OpenSSH trust the cluster's host CA for its nodes' names."""
    patterns = ",".join(_host_patterns(profile.cluster_name, nodes))
    return f"@cert-authority {patterns} {profile.host_ca_ssh.strip()} {_KNOWN_HOSTS_TAG}{profile.cluster_name}"


def write_known_hosts(path: Path, profile: Profile, nodes: Sequence[Node]) -> None:
    """Replace this cluster's line in ``path``, keeping other clusters' lines."""
    tag = f" {_KNOWN_HOSTS_TAG}{profile.cluster_name}"
    kept = []
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and not line.endswith(tag)]
    text = "\n".join([*kept, known_hosts_line(profile, nodes)]) + "\n"
    write_atomic(path, text.encode(), 0o644)


def session_cert_path(store: ProfileStore, profile: Profile, host_id: str) -> Path:
    """Where ``tsh config``'s OpenSSH setup keeps the session certificate for one node."""
    base = store.key_path(profile.proxy, profile.user)
    return base.with_name(base.name + "-sessions") / f"{host_id}-cert.pub"


def _proof_command(store: ProfileStore, node: Node, out: Path) -> str:
    """The ``Match exec`` command proving the device for ``node``: this tsh, this tsh home, quoted for sh."""
    argv = [
        sys.executable,
        "-m",
        "devicetrust.cli.tsh",
        "device",
        "session-cert",
        f"--ssh-node={node.host_id}",
        f"--out={out}",
    ]
    command = f"TSH_HOME={shlex.quote(str(store.home))} " + " ".join(shlex.quote(arg) for arg in argv)
    if any(c in command for c in '"\n\r'):
        raise ValidationError(f"{command!r}: OpenSSH cannot run a command with quotes or line breaks; set TSH_HOME")
    # ssh_config expands %-tokens in exec commands too
    return '"' + command.replace("%", "%%") + '"'


def render_ssh_config(store: ProfileStore, profile: Profile, nodes: Sequence[Node], known_hosts: Path) -> str:
    cluster = profile.cluster_name
    key_path = store.key_path(profile.proxy, profile.user)
    lines = [
        f"# Begin generated devicetrust configuration for cluster {cluster} (auth service {profile.proxy})",
        f"# Use: ssh LOGIN@NODE.{cluster}, or ssh LOGIN@NODE (tsh ls lists the nodes).",
        "",
    ]
    unique: list[Node] = []
    seen: dict[str, str] = {}
    for node in nodes:
        if node.hostname in seen:
            warn(
                f'several nodes are named "{node.hostname}": ssh reaches the one with host id '
                f"{seen[node.hostname]}; use tsh ssh with a host id for the others"
            )
            continue
        seen[node.hostname] = node.host_id
        unique.append(node)
    # only where this tsh home holds an enrolled device: anywhere else the proof could only fail, on every ssh
    if wants_session_proof(profile) and enrolled_backend(store) is not None:
        lines += [
            "# Each connection first proves this device: the session certificate it yields is offered first.",
            "",
        ]
        for node in unique:
            out = session_cert_path(store, profile, node.host_id)
            names = ",".join([node.hostname, f"{node.hostname}.{cluster}", node.host_id])
            lines += [
                f"Match originalhost {names} exec {_proof_command(store, node, out)}",
                f"    CertificateFile {_ssh_config_path(out)}",
                "",
            ]
    for node in unique:
        lines += [
            f"Host {node.hostname} {node.hostname}.{cluster}",
            f"    HostName {node.host}",
            f"    Port {node.port}",
            # the node's certificate must name its host id, as tsh ssh requires
            f"    HostKeyAlias {node.host_id}",
            "",
        ]
    hostnames = sorted({node.hostname for node in nodes})
    lines += [
        f"Host {' '.join([f'*.{cluster}', *hostnames])}",
        f"    UserKnownHostsFile {_ssh_config_path(known_hosts)}",
        f"    IdentityFile {_ssh_config_path(key_path)}",
        f"    CertificateFile {_ssh_config_path(store.ssh_cert_path(profile))}",
        "    IdentitiesOnly yes",
        "    StrictHostKeyChecking yes",
        "",
        f"# End generated devicetrust configuration for cluster {cluster}",
    ]
    return "\n".join(lines)


def config_command(store: ProfileStore) -> str:
    """``tsh config``: write $TSH_HOME/known_hosts, return the ssh_config text."""
    profile = store.require_current()
    if not store.ssh_cert_path(profile).exists():
        raise SessionExpiredError("not logged in; run 'tsh login'")
    nodes = []
    for node in fetch_nodes(store, profile):
        if _config_safe(node):
            nodes.append(node)
        else:
            warn(f"node {node.hostname} has an address OpenSSH cannot use ({node.addr!r}); left out")
    known_hosts = store.home / "known_hosts"
    text = render_ssh_config(store, profile, nodes, known_hosts)
    write_known_hosts(known_hosts, profile, nodes)
    return text


# ---------------------------------------------------------------------------------------------- commands
@click.command(
    "ssh",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="Port of the node (default: the one it reports).")
@click.option("-l", "--login", help="Remote login (default: your first login).")
@click.option("-t", "force_pty", is_flag=True, help="Allocate a terminal even for a command.")
@click.argument("target", metavar="[LOGIN@]HOST")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(port: int | None, login: str | None, force_pty: bool, target: str, command: tuple[str, ...]) -> None:
    """Run a command on a node, or open a shell there; exits with the remote exit status.

    HOST is a node's name or host id as 'tsh ls' shows them."""
    status = ssh_command(ProfileStore(), target, command, login=login, port=port, force_pty=force_pty)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    sys.exit(status)


@click.command("ls")
@format_option()
def ls(fmt: str) -> None:
    """List the nodes you may reach: name, address and labels."""
    store = ProfileStore()
    nodes = fetch_nodes(store, store.require_current())
    emit(
        [node.to_json() for node in nodes],
        fmt,
        lambda _: print_table(
            ["Node Name", "Address", "Labels"], [(node.hostname, node.addr, node.labels_text()) for node in nodes]
        ),
    )


@click.command("config")
def config() -> None:
    """Print an OpenSSH client configuration for the cluster's nodes (append it to ~/.ssh/config).

    Also writes $TSH_HOME/known_hosts, which trusts the cluster's host CA for its nodes."""
    click.echo(config_command(ProfileStore()))


COMMANDS = (ssh, ls, config)
