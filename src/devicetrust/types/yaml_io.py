"""YAML text <-> plain documents. Pure string transforms: callers read and write the files.

Reading differs from ``yaml.safe_load_all`` in two ways that matter for policy files:
- only ``true``/``false`` are booleans (YAML 1.2), so ``mode: off`` is the string "off", not False;
- a key given twice in one mapping is an error instead of the last one silently winning.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

from devicetrust.errors import ValidationError
from devicetrust.types._validation import describe

#: Larger inputs are refused before parsing; a resource file is a few kilobytes.
MAX_YAML_TEXT_CHARS = 4 * 1024 * 1024

_BOOL_TAG = "tag:yaml.org,2002:bool"


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f'duplicate key "{key}"',
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _iter_documents(text: str) -> Iterator[Any]:
    loader = _StrictLoader(text)
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            yield loader.get_data()
    finally:
        loader.dispose()


def load_yaml_documents(text: str, source: str = "<input>") -> list[dict[str, Any]]:
    """The non-empty documents in ``text``. ValidationError ``"<source>: line N: <problem>"`` on bad YAML."""
    if len(text) > MAX_YAML_TEXT_CHARS:
        raise ValidationError(f"{source}: too large ({len(text)} characters, the limit is {MAX_YAML_TEXT_CHARS})")
    documents: list[dict[str, Any]] = []
    try:
        for number, document in enumerate(_iter_documents(text), start=1):
            if document is None:
                continue
            if not isinstance(document, dict):
                raise ValidationError(f"{source}: document {number}: expected a mapping, got {describe(document)}")
            documents.append(document)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ValidationError(f"{source}: {where}{err.problem or err.context or 'invalid YAML'}") from err
    except yaml.YAMLError as err:
        raise ValidationError(f"{source}: invalid YAML: {err}") from err
    return documents


class _BlockDumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Indent list items under their key, as the seed writes them.
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line strings (PEM certificates) as literal blocks instead of escaped one-liners.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _represent_str)


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def dump_yaml(docs: Sequence[Mapping[str, Any]]) -> str:
    """Block-style YAML, keys in their given order, documents separated by ``---``."""
    return yaml.dump_all(
        [_plain(doc) for doc in docs],
        Dumper=_BlockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1_000_000,  # never fold long values (templates, regexes) across lines
    )
