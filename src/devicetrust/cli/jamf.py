"""``devicetrust jamf``: run the Jamf Pro inventory sync by hand, in-process against the configured backend.

    devicetrust jamf sync --config devicetrust.yaml --once          # a partial sync of every inventory entry
    devicetrust jamf sync --config devicetrust.yaml --once --full   # a full sync (removals included)
    devicetrust jamf sync --config devicetrust.yaml                 # keep syncing on schedule (foreground)

The lead registers the group under the daemon's CLI: ``cli.add_command(jamf)`` in devicetrust.cli.daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from devicetrust.cli.common import DevicetrustGroup
from devicetrust.config import load_config
from devicetrust.errors import ConfigError, DevicetrustError
from devicetrust.logs import configure_json_logging
from devicetrust.mdm.jamf.config import InventoryEntry, JamfServiceConfig, parse_jamf_service_config
from devicetrust.mdm.jamf.service import JamfService
from devicetrust.mdm.sink import BackendSink, SyncReport
from devicetrust.storage.backend import Backend

__all__ = ["jamf", "load_jamf_service_config"]

SECTION = "jamf_service"
#: characters of progress bar (the counters and the phase need the rest of a narrow terminal)
BAR_WIDTH = 16


def load_jamf_service_config(path: Path | None) -> tuple[JamfServiceConfig, str]:
    """The validated jamf_service section of the config file (``path`` or $DEVICETRUST_CONFIG) and the storage
    URL of the same file."""
    config = load_config(path)
    if config.source is None:
        raise ConfigError("no config file: pass --config devicetrust.yaml (or set DEVICETRUST_CONFIG)")
    jamf_config = parse_jamf_service_config(config.jamf_service)
    if not jamf_config.enabled:
        raise ConfigError(f"{SECTION} is not enabled in {config.source} (set {SECTION}.enabled: true)")
    return jamf_config, config.storage_url


class _RichProgress:
    """:class:`~devicetrust.mdm.jamf.engine.SyncProgress` as a rich progress bar (records and pages)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def started(self, kind: str, entry: InventoryEntry) -> None:
        self._task = self._progress.add_task(f"{kind} {entry.kind}", total=None, pages=0, phase="starting")

    def page(self, *, records: int, total: int | None) -> None:
        if self._task is None:
            return
        task = self._progress.tasks[self._task]
        pages = int(task.fields.get("pages", 0)) + 1
        self._progress.update(self._task, advance=records, pages=pages, total=total)

    def phase(self, text: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, phase=text)


def _summary(report: SyncReport) -> str:
    """One line per sync, readable at any terminal width."""
    counts = (
        f"{report.records:,} read, {report.created:,} new, {report.updated:,} changed, {report.unchanged:,} unchanged, "
        f"{report.deleted:,} removed, {report.skipped:,} skipped, {report.foreign:,} foreign (left alone), "
        f"{report.kept:,} missing but kept"
    )
    outcome = "[green]ok[/green]" if report.error is None else f"[red]failed: {escape(report.error)}[/red]"
    notes = f" ({escape('; '.join(report.notes))})" if report.notes else ""
    return f"{report.kind} sync of {escape(report.inventory)}: {counts} in {report.duration_s:.1f}s: {outcome}{notes}"


@click.group("jamf")
def jamf() -> None:
    """Jamf Pro inventory sync (the jamf_service section of devicetrust.yaml)."""


@jamf.command("sync")
@click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), help="devicetrust.yaml (or $DEVICETRUST_CONFIG)."
)
@click.option("--once", is_flag=True, help="Sync every inventory entry once, then exit (with a progress bar).")
@click.option("--full", is_flag=True, help="With --once: a full sync, which also removes devices Jamf retired.")
def sync(config_path: Path | None, once: bool, full: bool) -> None:
    """Sync the Jamf inventory into the cluster's device inventory (runs against the configured backend)."""
    if full and not once:
        raise click.UsageError("--full goes with --once (the scheduled service decides on its own)")
    jamf_config, storage_url = load_jamf_service_config(config_path)
    backend = Backend.open(storage_url)
    try:
        backend.migrate()
        service = JamfService(jamf_config, BackendSink(backend))
        if once:
            reports = _once(service, full=full)
            if any(report.error is not None for report in reports):
                raise DevicetrustError("the Jamf sync failed; see the table above")
        else:
            configure_json_logging(logging.getLevelName(logging.INFO))
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(service.run())
    finally:
        backend.close()


def _once(service: JamfService, *, full: bool) -> list[SyncReport]:
    console = Console(stderr=True)
    root = logging.getLogger()
    handler = RichHandler(console=console, show_path=False, show_time=False)
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.WARNING)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(),
            TextColumn("devices, {task.fields[pages]} pages"),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[phase]}"),
            console=console,
            transient=False,
        ) as progress:
            reports = asyncio.run(service.sync_once(full=full, progress=_RichProgress(progress)))
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    out = Console(highlight=False)
    for report in reports:
        out.print(_summary(report), soft_wrap=True)
    return reports


@click.group(cls=DevicetrustGroup, context_settings={"help_option_names": ["-h", "--help"]})
def _standalone() -> None:
    """devicetrust jamf, runnable before the daemon's CLI registers it: python -m devicetrust.cli.jamf jamf sync …"""


_standalone.add_command(jamf)


def main() -> None:
    _standalone(prog_name="python -m devicetrust.cli.jamf")


if __name__ == "__main__":
    main()
