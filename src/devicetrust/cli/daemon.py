"""devicetrust: the daemon — runs the services a devicetrust.yaml enables (auth, an SSH node)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from devicetrust import __version__
from devicetrust.cli.common import DevicetrustGroup
from devicetrust.config import (
    DEFAULT_CLUSTER_NAME,
    Overrides,
    environment_settings,
    load_config,
    render_default_config,
)
from devicetrust.errors import ConfigError
from devicetrust.logs import configure_json_logging


@click.group(cls=DevicetrustGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="devicetrust")
def cli() -> None:
    """devicetrust: device trust for infrastructure access."""


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Path to devicetrust.yaml (env: DEVICETRUST_CONFIG).",
)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), help="Override devicetrust.data_dir (env: DEVICETRUST_DATA_DIR)."
)
@click.option("--listen-addr", help="Override auth_service.listen_addr, HOST:PORT (env: DEVICETRUST_LISTEN_ADDR).")
@click.option(
    "--cluster-name", help="Override auth_service.cluster_name, first start only (env: DEVICETRUST_CLUSTER_NAME)."
)
def start(config_path: Path | None, data_dir: Path | None, listen_addr: str | None, cluster_name: str | None) -> None:
    """Start the services enabled in the config (default: auth on 127.0.0.1:3080 with SQLite, an SSH node on
    127.0.0.1:3022). Flags beat DEVICETRUST_* variables, which beat the file."""
    config = load_config(
        config_path,
        flags=Overrides(data_dir=data_dir, listen_addr=listen_addr or None, cluster_name=cluster_name or None),
    )
    if not config.auth_service.enabled and not config.ssh_service.enabled and not config.jamf_service:
        raise ConfigError("nothing to run: auth_service and ssh_service are both disabled")
    if config.ssh_service.enabled:
        config.node_auth_server()  # a remote-only node must name its auth service
    # Imported late (the web and SSH stacks are only needed to serve), and before logging is configured: the JSON
    # formatter reads the request id from the web app, which must not be half-imported when a library logs.
    from devicetrust.daemon import run_services

    configure_json_logging(config.log_severity)
    run_services(config)


@cli.command()
@click.option("--cluster-name", default=DEFAULT_CLUSTER_NAME, show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the daemon keeps its state.")
@click.option("--listen-addr", default="", help="auth_service.listen_addr (default 127.0.0.1:3080).")
@click.option("--ssh-listen-addr", default="", help="ssh_service.listen_addr (default 127.0.0.1:3022).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
def configure(
    cluster_name: str, data_dir: Path | None, listen_addr: str, ssh_listen_addr: str, output: Path | None
) -> None:
    """Print a complete default devicetrust.yaml."""
    text = render_default_config(
        cluster_name=cluster_name,
        data_dir=data_dir or environment_settings().data_dir,
        listen_addr=listen_addr,
        ssh_listen_addr=ssh_listen_addr,
    )
    if output:
        output.write_text(text)
        click.echo(f"Wrote {output}", err=True)
    else:
        sys.stdout.write(text)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"devicetrust {__version__}")


def _register_jamf() -> None:
    from devicetrust.cli.jamf import jamf

    cli.add_command(jamf)


_register_jamf()


def main() -> None:
    cli(prog_name="devicetrust")


if __name__ == "__main__":
    main()
