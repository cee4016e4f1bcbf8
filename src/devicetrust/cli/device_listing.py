"""``tctl devices ls``: the inventory, filtered by the auth service and printed page by page as pages arrive.

A fleet can hold a hundred thousand devices, so nothing here holds the whole listing: each page is printed and
dropped while the next one is already on its way. Text is plain aligned columns (the widths of the first page,
widened when a later page needs more); JSON passes each device's document through as the service sent it, one
per line, inside one array; YAML is a stream of documents.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import click

from devicetrust.client import AuthApi
from devicetrust.errors import DevicetrustError
from devicetrust.protocol import MAX_DEVICE_PAGE_SIZE, DeviceListQuery
from devicetrust.types import os_display_name

COLUMNS = ("Asset Tag", "OS", "Source", "Enroll Status", "Owner", "Device ID")
#: The first page is small so the first screen comes quickly; the rest come as large as the service allows.
FIRST_PAGE_SIZE = 100
PAGE_SIZE = MAX_DEVICE_PAGE_SIZE
#: The keys a device document starts with in YAML, as ``tctl get`` prints resources.
_DOCUMENT_ORDER = ("kind", "version", "metadata", "spec")

Page = tuple[list[bytes], str | None]


def pages(client: AuthApi, query: DeviceListQuery, limit: int | None) -> Iterator[Page]:
    """The listing's pages (at most ``limit`` devices in all), each with the token that continues after it; the
    next page is fetched while the caller prints the current one."""
    remaining = limit

    def size(wanted: int) -> int:
        return wanted if remaining is None else min(wanted, remaining)

    def fetch(token: str | None, page_size: int) -> Page:
        return client.device_lines(query.model_copy(update={"page_token": token, "page_size": page_size}))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devices-ls") as pool:
        pending = pool.submit(fetch, query.page_token, size(FIRST_PAGE_SIZE))
        while True:
            lines, token = pending.result()
            if remaining is not None:
                remaining -= len(lines)
            more = token is not None and (remaining is None or remaining > 0)
            if more:
                pending = pool.submit(fetch, token, size(PAGE_SIZE))
            yield lines, token
            if not more:
                return


def _parse(lines: Sequence[bytes]) -> list[Any]:
    try:
        items: list[Any] = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        raise DevicetrustError("the auth service sent an unexpected reply to devices (not JSON lines)") from None
    return items


def summary_rows(lines: Sequence[bytes]) -> list[tuple[str, ...]]:
    """The text columns of a page of summaries."""
    try:
        return [
            (
                item["asset_tag"],
                os_display_name(item["os_type"]),
                item["source"],
                item["enroll_status"].replace("_", " "),
                item["owner"],
                item["id"],
            )
            for item in _parse(lines)
        ]
    except (KeyError, TypeError, AttributeError):
        raise DevicetrustError("the auth service sent an unexpected reply to devices (not device summaries)") from None


class ColumnWriter:
    """Aligned columns two spaces apart, written a batch of rows at a time. The header and the first batch set
    the widths; a later batch may widen a column, never narrow it."""

    def __init__(self, headers: Sequence[str], out: TextIO) -> None:
        self._headers = tuple(headers)
        self._out = out
        self._widths = [len(header) for header in headers]
        self._started = False

    def write(self, rows: Sequence[Sequence[str]]) -> None:
        widths = self._widths
        for row in rows:
            for index, cell in enumerate(row):
                if len(cell) > widths[index]:
                    widths[index] = len(cell)
        last = len(widths) - 1
        parts: list[str] = []
        if not self._started:
            self._started = True
            header = "  ".join(h.ljust(w) for h, w in zip(self._headers, widths, strict=True)).rstrip()
            parts.append((click.style(header, bold=True) if self._out.isatty() else header) + "\n")
        for row in rows:
            # the last column is not padded: no trailing blanks
            parts.append("  ".join([*(row[i].ljust(widths[i]) for i in range(last)), row[last]]).rstrip() + "\n")
        self._out.write("".join(parts))
        self._out.flush()


def print_text(client: AuthApi, query: DeviceListQuery, limit: int | None) -> str | None:
    """The listing as columns; returns the token that continues after it, if any."""
    writer = ColumnWriter(COLUMNS, sys.stdout)
    query = query.model_copy(update={"view": "summary"})
    token: str | None = None
    written = False
    for lines, next_token in pages(client, query, limit):
        token = next_token
        if lines or not written:
            writer.write(summary_rows(lines))
            written = True
    return token


def print_json(client: AuthApi, query: DeviceListQuery, limit: int | None) -> None:
    """A JSON array of the devices' documents, one per line. With ``limit``: ``{"items": [...],
    "next_page_token": ...}``, the shape of one page of the API. Nothing is written before the first page has
    come, so a refused listing prints no half document."""
    out = sys.stdout.buffer
    opening = b'{"items": [' if limit is not None else b"["
    separator = b"\n"
    token: str | None = None
    for lines, next_token in pages(client, query.model_copy(update={"view": "resource"}), limit):
        token = next_token
        chunk = b"".join((separator if index == 0 else b",\n") + line for index, line in enumerate(lines))
        if lines:
            separator = b",\n"
        out.write(opening + chunk)
        opening = b""
        out.flush()
    if limit is not None:
        out.write(b'\n], "next_page_token": ' + json.dumps(token).encode() + b"}\n")
    else:
        out.write(b"\n]\n")
    out.flush()


def print_yaml(client: AuthApi, query: DeviceListQuery, limit: int | None) -> None:
    """A stream of YAML documents, one per device. With ``limit``: one document, ``items`` and
    ``next_page_token``, as in JSON."""
    import yaml  # only here: it is slow to import and only YAML output needs it

    query = query.model_copy(update={"view": "resource"})
    out = sys.stdout
    if limit is not None:
        items: list[Any] = []
        token: str | None = None
        for lines, next_token in pages(client, query, limit):
            token = next_token
            items.extend(_document(item) for item in _parse(lines))
        document = {"items": items, "next_page_token": token}
        out.write(yaml.safe_dump(document, sort_keys=False, default_flow_style=False))
        out.flush()
        return
    first = True
    for lines, _ in pages(client, query, limit):
        documents = [_document(item) for item in _parse(lines)]
        if not documents:
            continue
        text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)
        out.write(text if first else "---\n" + text)
        out.flush()
        first = False


def _document(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    ordered = {key: item[key] for key in _DOCUMENT_ORDER if key in item}
    ordered.update(item)
    return ordered
