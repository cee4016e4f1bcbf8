from __future__ import annotations

from types import MappingProxyType

import pytest

from devicetrust.errors import ValidationError
from devicetrust.types import MAX_YAML_TEXT_CHARS, dump_yaml, load_resources, load_yaml_documents
from devicetrust.types.yaml_io import MAX_YAML_DEPTH, MAX_YAML_NODES


def load_error(text: str, source: str = "f.yaml") -> str:
    with pytest.raises(ValidationError) as info:
        load_yaml_documents(text, source)
    return str(info.value)


def test_documents_are_loaded_in_order_and_empty_ones_skipped() -> None:
    text = "---\na: 1\n---\n---\n# only a comment\n---\nb: [x, y]\n...\n"

    assert load_yaml_documents(text) == [{"a": 1}, {"b": ["x", "y"]}]


@pytest.mark.parametrize("text", ["", "\n", "# nothing\n", "---\n", "---\n---\n"])
def test_empty_input_has_no_documents(text: str) -> None:
    assert load_yaml_documents(text) == []


def test_syntax_error_names_source_and_line() -> None:
    text = "kind: role\nversion: v7\nmetadata:\n  name: r\nspec:\n  allow:\n    logins: a: b\n"

    assert load_error(text, "require-trusted-device.yaml") == (
        "require-trusted-device.yaml: line 7: mapping values are not allowed here"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1, 2\n", "f.yaml: line 2: "),
        ("a: 'unterminated\n", "f.yaml: line 2: found unexpected end of stream"),
        ("a:\n\tb: 1\n", "f.yaml: line 2: found character '\\t' that cannot start any token"),
        ("a: *nope\n", "f.yaml: line 1: found undefined alias 'nope'"),
        ("a: !!python/object:os.system x\n", "f.yaml: line 1: could not determine a constructor for the tag"),
    ],
)
def test_yaml_errors(text: str, message: str) -> None:
    assert load_error(text).startswith(message)


def test_duplicate_key_is_an_error() -> None:
    text = "kind: role\nmetadata:\n  name: a\n  name: b\n"

    assert load_error(text) == 'f.yaml: line 4: duplicate key "name"'


def test_merge_keys_may_override() -> None:
    text = "base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  y: 3\n"

    assert load_yaml_documents(text)[0]["child"] == {"x": 1, "y": 3}


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("- a\n- b\n", "a list"),
        ("just text\n", "a string"),
        ("42\n", "an integer"),
        ("a: 1\n---\n- x\n", "a list"),
    ],
)
def test_non_mapping_document_is_an_error(text: str, kind: str) -> None:
    number = text.count("---") + 1

    assert load_error(text) == f"f.yaml: document {number}: expected a mapping, got {kind}"


@pytest.mark.parametrize("word", ["off", "on", "yes", "no", "y", "n", "Off", "NO"])
def test_yaml_1_1_boolean_words_stay_strings(word: str) -> None:
    # `mode: off` must be the mode "off", not False.
    assert load_yaml_documents(f"mode: {word}\n") == [{"mode": word}]


@pytest.mark.parametrize(("word", "value"), [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_true_and_false_are_booleans(word: str, value: bool) -> None:
    assert load_yaml_documents(f"x: {word}\n") == [{"x": value}]


def test_unquoted_off_is_accepted_as_a_mode() -> None:
    text = "kind: role\nversion: v7\nmetadata:\n  name: r\nspec:\n  options:\n    device_trust_mode: off\n"

    (role,) = load_resources(text)

    assert role.options.device_trust_mode == "off"  # type: ignore[union-attr]


def test_too_large_input_is_refused_before_parsing() -> None:
    text = "a: " + "x" * MAX_YAML_TEXT_CHARS

    assert load_error(text).startswith("f.yaml: too large")


def alias_bomb(levels: int) -> str:
    """A few hundred bytes that expand to 9**levels values."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "kind: role\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 10])
def test_alias_bomb_is_refused_while_parsing(levels: int) -> None:
    assert len(alias_bomb(levels)) < 500
    assert load_error(alias_bomb(levels)) == (
        f"f.yaml: line 7: more than {MAX_YAML_NODES} values once aliases are expanded (an alias bomb?)"
    )


def test_ordinary_aliases_and_merge_keys_still_work() -> None:
    text = "base: &base {logins: [a, b]}\nrole: {<<: *base, extra: *base}\n---\nagain: &base [1]\n"

    assert load_yaml_documents(text) == [
        {"base": {"logins": ["a", "b"]}, "role": {"logins": ["a", "b"], "extra": {"logins": ["a", "b"]}}},
        {"again": [1]},
    ]


def test_alias_inside_its_own_anchor_is_refused() -> None:
    assert load_error("a: &a [x, *a]\n") == 'f.yaml: line 1: alias "*a" is inside its own anchor'


def test_deep_nesting_is_refused() -> None:
    text = "a: " + "[" * 10_000 + "]" * 10_000 + "\n"

    assert load_error(text) == f"f.yaml: line 1: nested deeper than {MAX_YAML_DEPTH} levels"


def test_bytes_must_be_utf8() -> None:
    assert load_yaml_documents("a: é\n".encode(), "f.yaml") == [{"a": "é"}]
    assert load_yaml_documents(b"\xef\xbb\xbfa: 1\n", "f.yaml") == [{"a": 1}]  # a byte order mark is fine
    assert load_error(b"a: 1\nb: \xff\xfe\n") == "f.yaml: line 2: not UTF-8 text (byte 0xff); save the file as UTF-8"


def test_default_source_name() -> None:
    with pytest.raises(ValidationError, match=r"^<input>: line 1: "):
        load_yaml_documents("a: b: c\n")


def test_dump_is_block_style_in_key_order() -> None:
    text = dump_yaml([{"z": 1, "a": {"list": ["x", "y"], "m": {"k": "v"}}, "empty": []}])

    assert text == "z: 1\na:\n  list:\n    - x\n    - y\n  m:\n    k: v\nempty: []\n"


def test_dump_separates_documents() -> None:
    assert dump_yaml([{"a": 1}, {"b": 2}, {"c": 3}]) == "a: 1\n---\nb: 2\n---\nc: 3\n"


def test_dump_of_nothing_is_empty() -> None:
    assert dump_yaml([]) == ""


def test_dump_accepts_read_only_mappings_and_tuples() -> None:
    doc = MappingProxyType({"t": ("a", "b"), "m": MappingProxyType({"k": ("v",)})})

    assert dump_yaml([doc]) == "t:\n  - a\n  - b\nm:\n  k:\n    - v\n"


@pytest.mark.parametrize(
    "value",
    [
        "off",
        "yes",
        "no",
        "true",
        "null",
        "~",
        "",
        "*",
        "{{internal.logins}}",
        "^prod-[0-9]+$",
        "a: b",
        "- x",
        "# not a comment",
        "123",
        "1:30",
        "0x1F",
        "2024-01-01",
        "trailing space ",
        "multi\nline\n",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "x" * 300,
        "ünïcödé",
    ],
)
def test_dumped_strings_load_back_as_the_same_strings(value: str) -> None:
    text = dump_yaml([{"v": value, "l": [value]}])

    assert load_yaml_documents(text) == [{"v": value, "l": [value]}]


def test_multi_line_strings_are_literal_blocks() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

    assert dump_yaml([{"pem": pem}]) == "pem: |\n  -----BEGIN CERTIFICATE-----\n  MIIB\n  -----END CERTIFICATE-----\n"


def test_long_strings_are_not_folded() -> None:
    value = " ".join(["word"] * 100)

    assert dump_yaml([{"v": value}]) == f"v: {value}\n"


def test_yaml_1_1_words_stay_strings_and_the_limits_hold() -> None:
    # booleans only as true/false: "off" is a device trust mode, not False (config booleans accept yes/no/on/off)
    assert load_yaml_documents(b"a: yes\nb: off\nc: true\n", "c.yaml") == [{"a": "yes", "b": "off", "c": True}]
    assert load_yaml_documents("# nothing\n", "c.yaml") == []
    with pytest.raises(ValidationError, match=r"^c\.yaml: line 7: more than \d+ values once aliases are expanded"):
        load_yaml_documents(alias_bomb(10), "c.yaml")
