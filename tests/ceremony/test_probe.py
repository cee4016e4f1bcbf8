from tests.ceremony.conftest import COUNT


def test_probe(which: str) -> None:
    assert COUNT == [1]
