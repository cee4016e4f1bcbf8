"""``extra=`` keys must not name a LogRecord attribute: logging raises KeyError for those, but only when the level
is enabled, so a clash stays hidden until a daemon logs at INFO."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
RESERVED = set(logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _extra_keys(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, key) for every string key of a dict literal or ``dict(...)`` call passed as ``extra=``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg != "extra":
                continue
            value = keyword.value
            if isinstance(value, ast.Dict):
                found += [
                    (value.lineno, key.value)
                    for key in value.keys
                    if isinstance(key, ast.Constant) and isinstance(key.value, str)
                ]
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
                found += [(value.lineno, k.arg) for k in value.keywords if k.arg is not None]
    return found


def _clashes(tree: ast.AST) -> list[tuple[int, str]]:
    return [(line, key) for line, key in _extra_keys(tree) if key in RESERVED]


def test_the_check_sees_a_clash() -> None:
    tree = ast.parse('log.info("x", extra={"source": "a", "created": 1})\nlog.info("y", extra=dict(module="m"))\n')
    assert _clashes(tree) == [(1, "created"), (2, "module")]
    assert "created" in RESERVED and "message" in RESERVED


def test_no_extra_key_in_src_clashes_with_a_log_record_attribute() -> None:
    clashes: list[str] = []
    files = sorted(SRC.rglob("*.py"))
    assert files
    for path in files:
        for line, key in _clashes(ast.parse(path.read_text(), filename=str(path))):
            clashes.append(f"{path.relative_to(SRC)}:{line}: extra key {key!r} is a LogRecord attribute")
    assert clashes == []
