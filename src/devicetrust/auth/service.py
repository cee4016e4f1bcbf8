"""Runs the auth service: first-start initialisation, TLS identity, local admin identity, HTTPS server."""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path

import uvicorn
from cryptography.hazmat.primitives import serialization

from devicetrust.auth.app import build_app
from devicetrust.auth.server import AuthServer
from devicetrust.config import AdminIdentity, Config, is_ip_address, split_host_port
from devicetrust.crypto import generate_private_key, load_private_key_pem, private_key_to_pem
from devicetrust.files import write_atomic
from devicetrust.storage import Backend

log = logging.getLogger(__name__)

#: Seconds in-flight requests get to finish after SIGTERM/SIGINT.
GRACEFUL_SHUTDOWN_SECONDS = 10


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


def run_auth_service(config: Config) -> None:
    server = prepare_auth_server(config)
    key_path, cert_path = tls_files(config, server)
    admin = AdminIdentity(
        auth_addr=config.auth_service.listen_addr,
        cluster_name=server.cluster_name,
        token=server.issue_admin_identity(),
        host_ca_pem=server.host_ca.certificate_pem().decode(),
    )
    write_atomic(config.admin_identity_path, admin.to_json().encode())
    host, port = split_host_port(config.auth_service.listen_addr, what="auth_service.listen_addr")
    uv_config = uvicorn.Config(
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
    log.info(
        "auth service starting",
        extra={"listen_addr": config.auth_service.listen_addr, "cluster_name": server.cluster_name},
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler that was in place
    # before it started. Ours ignores it, so a requested stop ends with status 0 rather than death by signal.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    try:
        uvicorn.Server(uv_config).run()
    finally:
        server.backend.close()
        log.info("auth service stopped")
