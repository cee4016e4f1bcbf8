"""What tctl, tsh and the daemon share: error reporting, output formats, durations."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import click
import yaml
from rich.console import Console
from rich.table import Table

from devicetrust import types
from devicetrust.errors import DevicetrustError, ValidationError

FORMATS = ("text", "json", "yaml")


class DevicetrustGroup(click.Group):
    """A click group that reports every user mistake as one ``ERROR:`` line on stderr and a non-zero exit.

    Anything that is not a :class:`DevicetrustError` or a click usage error is a bug and keeps its traceback.
    """

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> NoReturn:
        extra.pop("standalone_mode", None)
        try:
            result = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:
            click.echo(err.ctx.get_help() if err.ctx else "")
            sys.exit(0)
        except click.exceptions.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
            fail(f"{err.format_message()}{hint}", 2)
        except click.exceptions.Abort:
            fail("aborted", 1)
        except click.exceptions.Exit as err:
            sys.exit(err.exit_code)
        except click.ClickException as err:
            fail(err.format_message(), err.exit_code)
        except DevicetrustError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"WARNING: {message}", err=True)


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """Go-style durations as Teleport takes them: ``90s``, ``30m``, ``12h``, ``1h30m``."""
    try:
        return types.parse_duration(text.strip())
    except ValueError as err:
        raise ValidationError(f"{what}: {err}") from None


def format_duration(delta: timedelta) -> str:
    total = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes}m{seconds}s"


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


_Data = TypeVar("_Data")


def emit(data: _Data, fmt: str, render_text: Callable[[_Data], None]) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif fmt == "yaml":
        documents = data if isinstance(data, list) else [data]
        click.echo(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False).rstrip())
    else:
        render_text(data)


def labels_text(labels: Mapping[str, str]) -> str:
    """``key=value,…`` sorted by key, as listings show labels."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(*columns, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*(str(cell) if cell is not None else "" for cell in row))
    # Scripts and pipes get whole values rather than a table squeezed to 80 columns.
    Console(width=None if sys.stdout.isatty() else 400).print(table)


def format_option(default: str = "text") -> Callable[[Any], Any]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=default,
        show_default=True,
        help="Output format.",
    )
