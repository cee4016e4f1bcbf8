"""The RSQL subset the fake Jamf evaluates (the sync's filters and its date/id narrowing)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.jamf import rsql

RECORD: dict[str, Any] = {
    "id": 42,
    "general": {
        "name": "Alice's MacBook Pro",
        "platform": "Mac",
        "reportDate": "2026-11-25T08:14:02Z",
        "remoteManagement": {"managed": True},
    },
    "hardware": {"serialNumber": "C02XJ0ABHX87", "coreCount": 10},
}


def _resolve(selector: str) -> Any:
    value: Any = RECORD
    for part in selector.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("general.remoteManagement.managed==true", True),
        ("general.remoteManagement.managed==false", False),
        ("general.remoteManagement.managed!=false", True),
        ('general.name=="alice\'s macbook pro"', True),
        ('general.name=="Alice*"', True),
        ('general.name=="*iMac*"', False),
        ("id==42", True),
        ('id=="41"', False),
        ('general.reportDate=gt="2026-11-25T08:00:00Z"', True),
        ('general.reportDate=lt="2026-11-25T08:00:00Z"', False),
        ('general.reportDate=ge="2026-11-25T08:14:02Z"', True),
        ('general.reportDate>"2026-11-25T09:00:00+01:00"', True),
        ("hardware.coreCount=gt=8", True),
        ("hardware.coreCount<=8", False),
        ("general.platform=in=(Mac,Windows)", True),
        ("general.platform=out=(Mac,Windows)", False),
        ("general.platform==Mac;hardware.serialNumber==C02XJ0ABHX87", True),
        ("general.platform==Windows,hardware.serialNumber==C02XJ0ABHX87", True),
        ('id=="42";((general.remoteManagement.managed==true),(general.platform==Windows))', True),
        ('id=="42";((general.remoteManagement.managed==false),(general.platform==Windows))', False),
        ("general.barcode1==null", True),
    ],
)
def test_evaluate(text: str, expected: bool) -> None:
    assert rsql.evaluate(rsql.parse(text), _resolve) is expected


def test_selectors() -> None:
    node = rsql.parse('id=="1";(general.name==x,hardware.model==y)')
    assert rsql.selectors(node) == {"id", "general.name", "hardware.model"}
    assert rsql.selectors(None) == set()


@pytest.mark.parametrize(
    "text",
    [
        "general.name",
        "general.name==",
        "==x",
        "general.name==x;",
        "(general.name==x",
        'general.name=="open',
        "a=b=c",
        "a=~b",
    ],
)
def test_syntax_errors(text: str) -> None:
    with pytest.raises(rsql.RSQLError):
        rsql.parse(text)


def test_limits() -> None:
    with pytest.raises(rsql.RSQLError, match="longer than"):
        rsql.parse("a==b;" * 2000 + "a==b")
    with pytest.raises(rsql.RSQLError, match="nested too deeply"):
        rsql.parse("(" * 40 + "a==b" + ")" * 40)
