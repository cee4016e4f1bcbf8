"""Runs the daemon's services: the auth service (first-start initialisation, TLS identity, local admin identity,
HTTPS server), the SSH node and the database service beside it in the same process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import uvicorn
from cryptography.hazmat.primitives import serialization

from devicetrust.auth.app import build_app
from devicetrust.auth.server import AuthServer, Caller
from devicetrust.config import AdminIdentity, Config, is_ip_address, split_host_port
from devicetrust.crypto.keys import generate_private_key, load_private_key_pem, private_key_to_pem
from devicetrust.errors import ConfigError
from devicetrust.files import write_atomic
from devicetrust.storage.backend import Backend
from devicetrust.types import preset_roles

if TYPE_CHECKING:
    from devicetrust.agent.db.service import DatabaseService, DatabaseServiceConfig
    from devicetrust.agent.kube.service import KubeService, KubeServiceConfig
    from devicetrust.agent.server import NodeConfig, SSHNode

log = logging.getLogger(__name__)

#: Seconds in-flight requests get to finish after SIGTERM/SIGINT.
GRACEFUL_SHUTDOWN_SECONDS = 10
#: How often start-up checks whether uvicorn is listening yet.
STARTUP_POLL_SECONDS = 0.05
#: The join token the in-process SSH node gets; it is spent within milliseconds.
IN_PROCESS_NODE_TOKEN_TTL = timedelta(minutes=1)
IN_PROCESS_CALLER = "devicetrust-start"


def prepare_auth_server(config: Config) -> AuthServer:
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = Backend.open(config.storage_url)
    server = AuthServer(backend, cluster_name=config.auth_service.cluster_name)
    server.initialize()
    return server


def tls_files(config: Config, server: AuthServer) -> tuple[Path, Path]:
    """Key kept across restarts; certificate re-issued by the host CA at every start."""
    key_path = config.tls_dir / "auth.key"
    cert_path = config.tls_dir / "auth.crt"
    if key_path.exists():
        key = load_private_key_pem(key_path.read_bytes())
    else:
        key = generate_private_key()
        write_atomic(key_path, private_key_to_pem(key))
    host, _ = split_host_port(config.auth_service.listen_addr, what="auth_service.listen_addr")
    names = {"localhost", socket.gethostname(), *config.auth_service.public_addrs}
    ips = {"127.0.0.1", "::1"}
    (ips if is_ip_address(host) else names).add(host)
    dns = sorted(n for n in names if not is_ip_address(n))
    ips |= {n for n in names if is_ip_address(n)}
    ips.discard("0.0.0.0")  # noqa: S104 - not a usable SAN
    cert = server.issue_tls_server_cert(key.public_key(), dns, sorted(ips))
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, cert_path


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn minus its own signal handling: :func:`run_services` owns SIGTERM/SIGINT for every service, so it
    can stop the SSH node (ending sessions, flushing their audit events) before the auth service."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(config: Config, server: AuthServer, tls: tuple[Path, Path] | None = None) -> uvicorn.Config:
    key_path, cert_path = tls or tls_files(config, server)
    host, port = split_host_port(config.auth_service.listen_addr, what="auth_service.listen_addr")
    return uvicorn.Config(
        build_app(server),
        host=host,
        port=port,
        ssl_keyfile=str(key_path),
        ssl_certfile=str(cert_path),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )


#: How long the daemon waits for its auth workers to listen before it gives up starting.
WORKER_START_TIMEOUT_SECONDS = 60
#: Bytes of the length that precedes the pickled configuration on a worker's stdin.
CONFIG_LENGTH_BYTES = 8
#: A worker that dies is restarted after this delay, doubled after each quick death, up to the maximum.
WORKER_RESTART_DELAY_SECONDS = 1.0
WORKER_MAX_RESTART_DELAY_SECONDS = 30.0
#: A worker that ran at least this long before dying counts as healthy: its restart delay starts over.
WORKER_HEALTHY_SECONDS = 60.0


def listening_socket(config: Config) -> socket.socket:
    """The auth service's listening socket, bound by the daemon and shared by its workers."""
    host, port = split_host_port(config.auth_service.listen_addr, what="auth_service.listen_addr")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"auth_service.listen_addr: cannot listen on {config.auth_service.listen_addr}: {err.strerror}"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class AuthWorkers:
    """``auth_service.workers`` processes serving the auth API on one listening socket, restarted if they die.

    Each worker is ``python -m devicetrust.daemon`` reading its configuration from stdin; it opens its own
    backend connections and shares nothing else with its siblings, since auth servers keep no state of their
    own (the caches they keep are checked against the backend at every request)."""

    def __init__(self, config: Config, sock: socket.socket) -> None:
        self._config = config
        self._sock = sock
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes.values()]

    async def start(self) -> None:
        """Start every worker and wait until each one listens (ConfigError if one cannot)."""
        ready = [asyncio.get_running_loop().create_future() for _ in range(self._config.auth_service.workers)]
        for index, future in enumerate(ready):
            self._tasks.append(asyncio.create_task(self._supervise(index, future), name=f"auth-worker-{index}"))
        try:
            await asyncio.wait_for(asyncio.gather(*ready), WORKER_START_TIMEOUT_SECONDS)
        except TimeoutError:
            raise ConfigError(f"the auth workers did not start within {WORKER_START_TIMEOUT_SECONDS} s") from None

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader]:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "devicetrust.daemon",
                str(self._sock.fileno()),
                str(write_fd),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(self._sock.fileno(), write_fd),
            )
        finally:
            os.close(write_fd)
        assert process.stdin is not None
        configuration = pickle.dumps(self._config)
        # The pipe stays open for the worker's life: its end of file tells the worker the daemon is gone.
        process.stdin.write(len(configuration).to_bytes(CONFIG_LENGTH_BYTES, "big") + configuration)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb"))
        return process, reader

    async def _supervise(self, index: int, ready: asyncio.Future[None]) -> None:
        delay = WORKER_RESTART_DELAY_SECONDS
        loop = asyncio.get_running_loop()
        while not self._stopped():
            process, reader = await self._spawn()
            self._processes[index] = process
            started = loop.time()
            if await reader.read(1) and not ready.done():
                ready.set_result(None)
            code = await process.wait()
            _close_lifeline(process)
            if self._stopped():
                return
            if not ready.done():
                ready.set_exception(ConfigError(f"an auth worker exited at start (exit status {code})"))
                return
            delay = WORKER_RESTART_DELAY_SECONDS if loop.time() - started >= WORKER_HEALTHY_SECONDS else delay
            log.error("auth worker exited; restarting it", extra={"worker": index, "status": code, "delay": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, WORKER_MAX_RESTART_DELAY_SECONDS)

    def _stopped(self) -> bool:
        return self._stopping

    async def stop(self) -> None:
        """SIGTERM to every worker (they finish in-flight requests), SIGKILL to those still running after the
        graceful shutdown period."""
        self._stopping = True
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes.values():
            try:
                await asyncio.wait_for(process.wait(), GRACEFUL_SHUTDOWN_SECONDS + 5)
            except TimeoutError:
                process.kill()
                await process.wait()
            _close_lifeline(process)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sock.close()


def _close_lifeline(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()


def serve_auth_worker(config: Config, listen_fd: int, ready_fd: int, lifeline_fd: int | None = None) -> None:
    """One auth worker: the auth API on the daemon's listening socket ``listen_fd``; writes one byte to
    ``ready_fd`` once it accepts connections. SIGTERM stops it gracefully, and so does the end of file on
    ``lifeline_fd``, a pipe the daemon holds open while it lives: a worker never outlives its daemon, even one
    killed with SIGKILL, so nothing keeps serving on the port of a daemon that is gone."""
    backend = Backend.open(config.storage_url)
    try:
        server = AuthServer(backend, cluster_name=config.auth_service.cluster_name)
        server.initialize()  # already done by the daemon: this loads the CAs and keys
        tls = (config.tls_dir / "auth.key", config.tls_dir / "auth.crt")
        web = uvicorn.Server(_uvicorn_config(config, server, tls))
        sock = socket.socket(fileno=listen_fd)

        def daemon_gone() -> None:
            if lifeline_fd is not None and not os.read(lifeline_fd, 1):
                asyncio.get_running_loop().remove_reader(lifeline_fd)
                log.warning("the daemon is gone; this auth worker stops")
                web.should_exit = True

        async def serve() -> None:
            if lifeline_fd is not None:
                asyncio.get_running_loop().add_reader(lifeline_fd, daemon_gone)
            task = asyncio.create_task(web.serve(sockets=[sock]))
            while not web.started and not task.done():  # noqa: ASYNC110 - uvicorn has no "started" event
                await asyncio.sleep(STARTUP_POLL_SECONDS)
            if web.started:
                os.write(ready_fd, b"1")
            os.close(ready_fd)
            await task

        with asyncio.Runner(loop_factory=_worker_loop_factory()) as runner:
            runner.run(serve())
    finally:
        backend.close()


def _worker_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: an auth worker only serves HTTPS, and uvloop does that with less CPU. (The
    daemon's own loop, which also runs the SSH node, stays asyncio's.)"""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def write_admin_identity(config: Config, server: AuthServer) -> None:
    """A new local admin token replacing only this server's previous one (found in its own data dir)."""
    admin = AdminIdentity(
        auth_addr=config.auth_service.listen_addr,
        cluster_name=server.cluster_name,
        token=server.issue_admin_identity(replaces=_previous_admin_token(config)),
        host_ca_pem=server.host_ca.certificate_pem().decode(),
    )
    write_atomic(config.admin_identity_path, admin.to_json().encode())


def _previous_admin_token(config: Config) -> str | None:
    try:
        return AdminIdentity.from_json(config.admin_identity_path.read_text()).token
    except (OSError, UnicodeDecodeError, ConfigError):
        return None  # nothing (readable) to revoke


def mint_node_join_token(server: AuthServer, agent: str = "node") -> str:
    """A short-lived join token for an agent in this process (``agent``: its token type, "node", "db" or "kube";
    no token needs configuring)."""
    editor = tuple(role for role in preset_roles() if role.name == "editor")
    caller = Caller(name=IN_PROCESS_CALLER, kind="admin", roles=editor, traits={})
    token, _ = server.create_join_token(caller, agent, IN_PROCESS_NODE_TOKEN_TTL)
    return token


class _AgentSection(Protocol):
    """What ssh_service, db_service and kube_service share about joining the auth service."""

    @property
    def auth_server(self) -> str: ...

    @property
    def ca_file(self) -> Path | None: ...

    @property
    def listen_addr(self) -> str: ...

    def effective_hostname(self) -> str: ...

    def read_join_token(self) -> str: ...


JoinToken = str | Callable[[], str] | None


class _AgentSettings(TypedDict):
    """What every agent's settings (NodeConfig, DatabaseServiceConfig, KubeServiceConfig) take alike."""

    hostname: str
    listen_addr: str
    auth_ca_pem: str | None
    join_token: JoinToken


def _agent_settings(
    config: Config, server: AuthServer | None, section: _AgentSection, name: str, agent: str
) -> _AgentSettings:
    """The agent's host name and address, the host CA (PEM) it verifies the auth service with, and its join
    token: from the section's files, else (auth in this process, ``server``) the cluster's CA and a token minted
    here when it must join, else the CA from the local admin identity."""
    local = server is not None and not section.auth_server
    ca_pem: str | None = None
    if section.ca_file is not None:
        try:
            ca_pem = section.ca_file.read_text()
        except OSError as err:
            raise ConfigError(f"{name}.ca_file: cannot read {section.ca_file}: {err.strerror}") from None
    elif local and server is not None:
        ca_pem = server.host_ca.certificate_pem().decode()
    elif config.admin_identity_path.exists():
        ca_pem = AdminIdentity.from_json(config.admin_identity_path.read_text()).host_ca_pem
    token: JoinToken = section.read_join_token() or None
    if token is None and local and server is not None:
        in_process = server
        token = lambda: mint_node_join_token(in_process, agent)  # noqa: E731 - called only if it must join
    return _AgentSettings(
        hostname=section.effective_hostname(), listen_addr=section.listen_addr, auth_ca_pem=ca_pem, join_token=token
    )


def node_config(config: Config, server: AuthServer | None) -> NodeConfig:
    """The SSH node's settings; with ``server`` (auth in this process) it joins with a token minted here."""
    from devicetrust.agent.server import NodeConfig

    ssh = config.ssh_service
    auth_server = config.node_auth_server()
    return NodeConfig(
        node_dir=config.node_dir,
        auth_server=auth_server,
        labels=dict(ssh.labels),
        **_agent_settings(config, server, ssh, "ssh_service", "node"),
    )


def kube_service_config(config: Config, server: AuthServer | None) -> KubeServiceConfig:
    """The kube service's settings; with ``server`` (auth in this process) it joins with a token minted here."""
    from devicetrust.agent.kube.service import KubeServiceConfig

    kube = config.kube_service
    return KubeServiceConfig(
        **_agent_settings(config, server, kube, "kube_service", "kube"),
        service_dir=config.kube_service_dir,
        auth_server=config.kube_auth_server(),
        clusters=kube.kubernetes_clusters,
    )


def database_service_config(config: Config, server: AuthServer | None) -> DatabaseServiceConfig:
    """The database service's settings; with ``server`` (auth in this process) it joins with a token minted here."""
    from devicetrust.agent.db.service import DatabaseServiceConfig

    db = config.db_service
    return DatabaseServiceConfig(
        **_agent_settings(config, server, db, "db_service", "db"),
        service_dir=config.db_service_dir,
        auth_server=config.db_auth_server(),
        databases=db.databases,
    )


def run_services(config: Config) -> None:
    """Run the auth service and/or the SSH node this config enables, until SIGTERM or SIGINT.

    Both run on ONE asyncio loop in this thread: uvicorn's ``Server.serve()`` and asyncssh are both asyncio, the
    auth service's request handlers run in worker threads (they are sync), so SSH traffic never waits for the
    database. The node starts once uvicorn reports it is listening and then talks HTTPS to it like a remote node
    would. On a signal the node stops first (its sessions end and their audit events reach the auth service),
    then the auth service.
    """
    asyncio.run(_serve(config))


#: Seconds the Jamf service gets to abandon an in-flight sync at shutdown.
JAMF_STOP_SECONDS = 10


def _jamf_config(config: Config) -> Any:
    """The validated jamf_service section when it is enabled (ConfigError before anything is served)."""
    if not config.jamf_service:
        return None
    from devicetrust.mdm.jamf import parse_jamf_service_config

    jamf = parse_jamf_service_config(config.jamf_service)
    if not jamf.enabled:
        return None
    if not config.auth_service.enabled and not jamf.auth_server:
        raise ConfigError(
            "jamf_service runs beside the auth service: enable auth_service in this config, or set "
            "jamf_service.auth_server (with join_token or token_file, and auth_ca_file) to join a remote one"
        )
    return jamf


#: How often expired sessions, tokens, rate-limit windows and spent ceremonies are deleted.
JANITOR_PERIOD_SECONDS = 60


async def _janitor(server: AuthServer) -> None:
    """Deletes what has expired, once per period, for as long as the auth service runs. A failed round (the
    database away, say) is logged and the next one tries again."""
    while True:
        await asyncio.sleep(JANITOR_PERIOD_SECONDS)
        try:
            purged = await asyncio.to_thread(server.purge_expired)
        except Exception as err:
            log.warning("expired records not purged; trying again later", extra={"error": str(err)})
        else:
            if any(purged.values()):
                log.debug("expired records purged", extra={"purged": purged})


def _report_jamf_exit(error: BaseException | None) -> None:
    if error is not None:
        # The service has already logged the cause; the daemon keeps serving auth and SSH.
        log.error("jamf service stopped", extra={"error": str(error)})


def _report_jamf_task_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        _report_jamf_exit(task.exception())


async def _serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stop.set)
    server: AuthServer | None = None
    web: _EmbeddedUvicorn | None = None
    web_task: asyncio.Task[None] | None = None
    node: SSHNode | None = None
    databases: DatabaseService | None = None
    kube: KubeService | None = None
    jamf_thread: Any = None
    jamf_task: asyncio.Task[None] | None = None
    jamf_stop = asyncio.Event()
    workers: AuthWorkers | None = None
    janitor_task: asyncio.Task[None] | None = None
    jamf = _jamf_config(config)
    try:
        if config.auth_service.enabled:
            server = prepare_auth_server(config)
            worker_count = config.auth_service.workers
            log.info(
                "auth service starting",
                extra={
                    "listen_addr": config.auth_service.listen_addr,
                    "cluster_name": server.cluster_name,
                    "workers": worker_count,
                },
            )
            if worker_count > 1:
                tls_files(config, server)
                workers = AuthWorkers(config, listening_socket(config))
                write_admin_identity(config, server)
                await workers.start()
            else:
                web = _EmbeddedUvicorn(_uvicorn_config(config, server))
                write_admin_identity(config, server)
                web_task = loop.create_task(web.serve(), name="auth-service")
                while not web.started:
                    if web_task.done() or stop.is_set():
                        break
                    await asyncio.sleep(STARTUP_POLL_SECONDS)
            if web_task is None or not web_task.done():
                log.info(
                    "auth service ready",
                    extra={"listen_addr": config.auth_service.listen_addr, "workers": worker_count},
                )
            janitor_task = loop.create_task(_janitor(server), name="janitor")
        if config.ssh_service.enabled and not stop.is_set() and (web_task is None or not web_task.done()):
            from devicetrust.agent.server import SSHNode

            # One line per SSH packet exchange and per state poll is noise; the node logs what matters itself.
            for chatty in ("asyncssh", "httpx"):
                logging.getLogger(chatty).setLevel(logging.WARNING)
            node = SSHNode(node_config(config, server))
            await node.start()
        if config.db_service.enabled and not stop.is_set() and (web_task is None or not web_task.done()):
            from devicetrust.agent.db.service import DatabaseService

            databases = DatabaseService(database_service_config(config, server))
            await databases.start()
        if config.kube_service.enabled and not stop.is_set() and (web_task is None or not web_task.done()):
            from devicetrust.agent.kube.service import KubeService

            kube = KubeService(kube_service_config(config, server))
            await kube.start()
        if jamf is not None and jamf.auth_server and not stop.is_set():
            from devicetrust.mdm.api_sink import run_remote_jamf_service

            # Apart from the auth service: joins it with the mdm token and writes through /v1/mdm/...
            jamf_task = loop.create_task(run_remote_jamf_service(jamf, jamf_stop), name="jamf-service")
            jamf_task.add_done_callback(_report_jamf_task_exit)
        elif jamf is not None and server is not None and not stop.is_set():
            from devicetrust.mdm.jamf.service import JamfServiceThread

            # Its own thread and loop: parsing and mapping inventory pages must not delay auth requests.
            jamf_thread = JamfServiceThread(jamf, server.backend, audit=server.audit, on_exit=_report_jamf_exit)
            jamf_thread.start()
        waiters: list[asyncio.Future[Any]] = [loop.create_task(stop.wait())]
        if web_task is not None:
            waiters.append(web_task)
        if jamf_task is not None and web_task is None and node is None and databases is None and kube is None:
            waiters.append(jamf_task)  # the only service: the daemon ends with it
        _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            if task is not web_task and task is not jamf_task:
                task.cancel()
        agents = (node, databases, kube)
        if jamf_task is not None and jamf_task.done() and web_task is None and agents == (None, None, None):
            jamf_task.result()  # a fatal error (refused token, untrusted certificate) is the daemon's exit
    finally:
        if jamf_task is not None and not jamf_task.done():
            jamf_stop.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(jamf_task, JAMF_STOP_SECONDS)
        if jamf_thread is not None:
            await asyncio.to_thread(jamf_thread.stop, JAMF_STOP_SECONDS)
        if kube is not None:
            await kube.stop()
        if databases is not None:
            await databases.stop()
        if node is not None:
            await node.stop()
        if janitor_task is not None:
            janitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await janitor_task
        if workers is not None:
            await workers.stop()
        if web is not None and web_task is not None:
            web.should_exit = True
            await web_task
        if server is not None:
            server.backend.close()
            log.info("auth service stopped")
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(stop_signal)


def _auth_worker_main() -> None:
    """``python -m devicetrust.daemon LISTEN_FD READY_FD``, configuration (pickled) on stdin: started by
    :class:`AuthWorkers`, never by hand."""
    from devicetrust.logs import configure_json_logging

    if len(sys.argv) != 3 or sys.stdin.isatty():
        sys.exit("devicetrust.daemon is started by 'devicetrust start' (auth_service.workers), not by hand")
    lifeline = sys.stdin.fileno()
    header = _read_exactly(lifeline, CONFIG_LENGTH_BYTES)
    payload = _read_exactly(lifeline, int.from_bytes(header, "big"))
    config = pickle.loads(payload)  # noqa: S301 - written by the parent daemon over a pipe
    if not isinstance(config, Config):
        sys.exit("devicetrust.daemon: expected a configuration on stdin")
    configure_json_logging(config.log_severity)
    serve_auth_worker(config, int(sys.argv[1]), int(sys.argv[2]), lifeline)


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``; exits if the daemon's pipe ends first (the daemon died while starting us)."""
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            sys.exit("devicetrust.daemon: the daemon's pipe closed before the configuration was read")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    _auth_worker_main()
