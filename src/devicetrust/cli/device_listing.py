"""``tctl devices ls``: the inventory, filtered by the auth service and printed as it streams in.

A fleet can hold a hundred thousand devices, so nothing here holds the whole listing: the auth service streams it
(one device per line) and each batch is printed as it arrives. Text is plain aligned columns (the widths of the
first batch, widened when a later one needs more); JSON passes each device's document through as the service
sent it, one per line, inside one array; YAML is a stream of documents.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import click

from devicetrust.client import AuthApi, DeviceStream
from devicetrust.errors import DevicetrustError
from devicetrust.protocol import DeviceListQuery
from devicetrust.types import os_display_name

COLUMNS = ("Asset Tag", "OS", "Source", "Enroll Status", "Owner", "Device ID")
#: The keys a device document starts with in YAML, as ``tctl get`` prints resources.
_DOCUMENT_ORDER = ("kind", "version", "metadata", "spec")


def _stream(client: AuthApi, query: DeviceListQuery, limit: int | None, view: str) -> DeviceStream:
    return client.stream_devices(query.model_copy(update={"page_size": limit, "view": view}))


def _parse(lines: Sequence[bytes]) -> list[Any]:
    try:
        items: list[Any] = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        raise DevicetrustError("the auth service sent an unexpected reply to devices (not JSON lines)") from None
    return items


def summary_rows(lines: Sequence[bytes]) -> list[tuple[str, ...]]:
    """The text columns of a batch of summaries."""
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
    stream = _stream(client, query, limit, "summary")
    written = False
    for lines in stream:
        writer.write(summary_rows(lines))
        written = True
    if not written:
        writer.write([])
    return stream.next_page_token


def print_json(client: AuthApi, query: DeviceListQuery, limit: int | None) -> None:
    """A JSON array of the devices' documents, one per line. With ``limit``: ``{"items": [...],
    "next_page_token": ...}``, the shape of one page of the API. Nothing is written before the listing has
    begun, so a refused one prints no half document."""
    out = sys.stdout.buffer
    opening = b'{"items": [' if limit is not None else b"["
    separator = b"\n"
    stream = _stream(client, query, limit, "resource")
    for lines in stream:
        out.write(opening + separator + b",\n".join(lines))
        out.flush()
        opening, separator = b"", b",\n"
    if limit is not None:
        out.write(opening + b'\n], "next_page_token": ' + json.dumps(stream.next_page_token).encode() + b"}\n")
    else:
        out.write(opening + b"\n]\n")
    out.flush()


def print_yaml(client: AuthApi, query: DeviceListQuery, limit: int | None) -> None:
    """A stream of YAML documents, one per device. With ``limit``: one document, ``items`` and
    ``next_page_token``, as in JSON."""
    import yaml  # only here: it is slow to import and only YAML output needs it

    stream = _stream(client, query, limit, "resource")
    out = sys.stdout
    if limit is not None:
        items = [document for batch in _documents(stream) for document in batch]
        page = {"items": items, "next_page_token": stream.next_page_token}
        out.write(yaml.safe_dump(page, sort_keys=False, default_flow_style=False))
        out.flush()
        return
    first = True
    for documents in _documents(stream):
        text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)
        out.write(text if first else "---\n" + text)
        out.flush()
        first = False


def _documents(stream: DeviceStream) -> Iterator[list[Any]]:
    for lines in stream:
        yield [_document(item) for item in _parse(lines)]


def _document(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    ordered = {key: item[key] for key in _DOCUMENT_ORDER if key in item}
    ordered.update(item)
    return ordered
