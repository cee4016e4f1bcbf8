"""tsh loads the modules of its bigger commands only when one of them runs: OpenSSH runs ``tsh device
session-cert`` before each connection and kubectl runs ``tsh kube credentials``, so their start-up time is a
session's."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
from click.testing import CliRunner

from devicetrust.cli.tsh import LAZY_COMMANDS, cli

HEAVY_MODULES = ("asyncssh", "devicetrust.cli.tsh_ssh", "devicetrust.cli.tsh_db", "devicetrust.cli.tsh_kube")


def _modules_loaded_by(args: list[str]) -> set[str]:
    """The heavy modules a fresh interpreter has loaded after ``tsh ARGS``."""
    script = (
        "import sys\n"
        "from devicetrust.cli.tsh import cli\n"
        f"try:\n    cli.main({args!r}, prog_name='tsh')\nexcept SystemExit:\n    pass\n"
        f"print(' '.join(m for m in {HEAVY_MODULES!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    return set(result.stderr.splitlines()[-1].split()) if result.stderr.strip() else set()


def test_the_lazy_table_names_every_command_of_its_modules() -> None:
    by_module: dict[str, set[str]] = {}
    for name, module in LAZY_COMMANDS.items():
        by_module.setdefault(module, set()).add(name)
    for module, names in by_module.items():
        commands = importlib.import_module(module).COMMANDS
        assert {command.name for command in commands} == names, module


def test_every_command_is_listed_and_resolves() -> None:
    ctx = click.Context(cli)
    listed = cli.list_commands(ctx)
    assert set(LAZY_COMMANDS) <= set(listed)
    for name in listed:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in LAZY_COMMANDS:
        assert f"  {name} " in result.output


def test_session_cert_and_kube_credentials_start_without_the_ssh_client_or_the_database_relay() -> None:
    assert _modules_loaded_by(["device", "session-cert", "--help"]) == set()
    assert _modules_loaded_by(["kube", "credentials", "--help"]) == {"devicetrust.cli.tsh_kube"}
    assert _modules_loaded_by(["ssh", "--help"]) == {"asyncssh", "devicetrust.cli.tsh_ssh"}
