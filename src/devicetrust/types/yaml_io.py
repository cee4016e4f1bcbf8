"""YAML text <-> plain documents. Pure string transforms: callers read and write the files.

Reading differs from ``yaml.safe_load_all`` in two ways that matter for policy files:
- only ``true``/``false`` are booleans (YAML 1.2), so ``mode: off`` is the string "off", not False;
- a key given twice in one mapping is an error instead of the last one silently winning.

It also refuses what no resource file needs and what would let a few bytes cost gigabytes: input that is not
UTF-8, nesting deeper than MAX_YAML_DEPTH, aliases that refer to their own ancestor, and documents whose values,
aliases expanded, number more than MAX_YAML_NODES (an alias "bomb" of a few hundred bytes expands to billions).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node

from devicetrust.errors import ValidationError
from devicetrust.types._validation import describe

#: Larger inputs are refused before parsing; a resource file is a few kilobytes.
MAX_YAML_TEXT_CHARS = 4 * 1024 * 1024
#: Values in one input with every alias expanded: far more than resource files hold (a role has about a hundred),
#: far fewer than an alias bomb expands to.
MAX_YAML_NODES = 500_000
#: Nesting of mappings and sequences; resources nest a handful of levels.
MAX_YAML_DEPTH = 64

_BOOL_TAG = "tag:yaml.org,2002:bool"


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded_nodes = 0
        # Expanded size of each finished node by id(); an alias costs what its anchored node costs.
        self._expanded_sizes: dict[int, int] = {}

    @staticmethod
    def _refuse(problem: str, mark: Any) -> NoReturn:
        raise ComposerError(None, None, problem, mark)

    def _charge(self, nodes: int, mark: Any) -> None:
        self._expanded_nodes += nodes
        if self._expanded_nodes > MAX_YAML_NODES:
            self._refuse(f"more than {MAX_YAML_NODES} values once aliases are expanded (an alias bomb?)", mark)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            anchored = self.anchors.get(event.anchor)
            if anchored is not None:
                size = self._expanded_sizes.get(id(anchored))
                if size is None:
                    self._refuse(f'alias "*{event.anchor}" is inside its own anchor', event.start_mark)
                self._charge(size, event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_YAML_DEPTH:
            self._refuse(f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        before = self._expanded_nodes
        self._charge(1, event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._expanded_sizes[id(node)] = self._expanded_nodes - before
        return node

    def compose_document(self) -> Node | None:
        try:
            return super().compose_document()
        finally:
            self._expanded_sizes.clear()  # the nodes may be freed and their ids reused

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


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValidationError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None


def _iter_documents(text: str, loader_class: type[_StrictLoader] = _StrictLoader) -> Iterator[object]:
    loader = loader_class(text)
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            yield loader.get_data()
    finally:
        loader.dispose()


def load_yaml_documents(text: str | bytes, source: str = "<input>") -> list[dict[str, object]]:
    """The non-empty documents in ``text`` (bytes must be UTF-8). ValidationError ``"<source>: line N: <problem>"``
    on bad YAML."""
    documents: list[dict[str, object]] = []
    for number, document in enumerate(_load(text, source, _StrictLoader), start=1):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ValidationError(f"{source}: document {number}: expected a mapping, got {describe(document)}")
        documents.append(document)
    return documents


def _load(text: str | bytes, source: str, loader_class: type[_StrictLoader]) -> list[object]:
    if len(text) > MAX_YAML_TEXT_CHARS:
        raise ValidationError(f"{source}: too large ({len(text)} characters, the limit is {MAX_YAML_TEXT_CHARS})")
    if isinstance(text, bytes):
        text = _decode(text, source)
    try:
        return list(_iter_documents(text, loader_class))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ValidationError(f"{source}: {where}{err.problem or err.context or 'invalid YAML'}") from err
    except yaml.YAMLError as err:
        raise ValidationError(f"{source}: invalid YAML: {err}") from err


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


def dump_yaml(docs: Sequence[Mapping[str, object]]) -> str:
    """Block-style YAML, keys in their given order, documents separated by ``---``."""
    return yaml.dump_all(
        [_plain(doc) for doc in docs],
        Dumper=_BlockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1_000_000,  # never fold long values (templates, regexes) across lines
    )
