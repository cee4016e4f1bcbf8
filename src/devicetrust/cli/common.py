"""What tctl, tsh and the daemon share: error reporting, output formats, durations."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NoReturn

import click
import yaml
from rich.console import Console
from rich.table import Table

from devicetrust.errors import DevicetrustError

FORMATS = ("text", "json", "yaml")
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class DevicetrustGroup(click.Group):
    """A click group whose commands turn user mistakes into one line on stderr and a non-zero exit."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("standalone_mode", True)
        try:
            return super().main(*args, **kwargs)
        except DevicetrustError as err:  # pragma: no cover - reached only outside click's own handling
            fail(str(err), err.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DevicetrustError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"WARNING: {message}", err=True)


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """Go-style durations as Teleport takes them: ``90s``, ``30m``, ``12h``, ``1h30m``, ``7d``."""
    match = _DURATION_RE.match(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 12h or 1h30m", param_hint=what)
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(delta: timedelta) -> str:
    total = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes}m{seconds}s"


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def emit(data: Any, fmt: str, render_text: Callable[[Any], None]) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif fmt == "yaml":
        documents = data if isinstance(data, list) else [data]
        click.echo(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False).rstrip())
    else:
        render_text(data)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(*columns, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*(str(cell) if cell is not None else "" for cell in row))
    Console(soft_wrap=True).print(table)


def format_option(default: str = "text") -> Callable[[Any], Any]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=default,
        show_default=True,
        help="Output format.",
    )
