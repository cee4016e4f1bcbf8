"""The request guard's JSON check (edge.check_json_body): numbers are checked as they are parsed, strings and
depth only when the body could hold a bad one. Every refusal holds on both paths."""

from __future__ import annotations

import json

import pytest

from devicetrust.auth.edge import MAX_JSON_DEPTH, _Refused, check_json_body

#: enough brackets to make the check walk the document
MANY_BRACKETS = ', "pad": ' + "[" * 40 + "]" * 40 + ', "more": ' + "[" * 40 + "]" * 40


@pytest.mark.parametrize("padding", ["", MANY_BRACKETS], ids=["few-brackets", "walked"])
@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ('"a": "x\\u0000y"', "NUL characters"),
        ('"a\\u0000": 1', "NUL characters"),
        ('"a": "\\ud800"', "lone surrogates"),
        ('"a": [1, {"b": "\\udfff"}]', "lone surrogates"),
        (f'"a": {2**63}', "64 bits"),
        (f'"a": [{-(2**63) - 1}]', "64 bits"),
        ('"a": 1e999', "finite"),
        ('"a": -1E400', "finite"),
        ('"a": Infinity', "Infinity"),
    ],
)
def test_what_the_backends_cannot_store_is_refused(member: str, expected: str, padding: str) -> None:
    with pytest.raises(_Refused, match=expected):
        check_json_body(f"{{{member}{padding}}}".encode())


@pytest.mark.parametrize(
    "member",
    [
        '"a": "\\u0041\\u00e9\\ud83d\\ude00"',  # escapes, a surrogate pair among them
        '"a": "\\\\u0000"',  # an escaped backslash, then six ordinary characters
        f'"a": {2**63 - 1}, "b": {-(2**63)}',
        '"a": 1.5e300, "b": 0.1',
        '"a": "ünïcödé ✓"',
    ],
)
def test_what_they_can_store_passes_as_parsed(member: str) -> None:
    for padding in ("", MANY_BRACKETS):
        text = f"{{{member}{padding}}}"
        assert check_json_body(text.encode()) == json.loads(text)


def test_depth_is_refused_only_past_the_limit() -> None:
    assert check_json_body(("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode()) is not None
    with pytest.raises(_Refused, match="nested"):
        check_json_body(("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)).encode())
    # brackets inside strings do not count as nesting
    assert check_json_body(json.dumps({"a": "[" * 100}).encode()) == {"a": "[" * 100}


@pytest.mark.parametrize("number", ["1.7976931348623157e308", "123456789012345678", "9" * 18 + ".5e99", "-1e-400"])
def test_numbers_that_fit_pass_whichever_path_checks_them(number: str) -> None:
    assert check_json_body(f'{{"a": {number}}}'.encode()) == {"a": json.loads(number)}


@pytest.mark.parametrize("number", ["2e308", "-" + "9" * 19, "1" + "0" * 400, "1E+309"])
def test_numbers_that_do_not_fit_are_refused_without_padding(number: str) -> None:
    with pytest.raises(_Refused):
        check_json_body(f'{{"a": {number}}}'.encode())
