"""The public surface of devicetrust.attestation is what __all__ says, and nothing in it does I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import devicetrust.attestation as attestation


def test_all_names_exist() -> None:
    missing = [name for name in attestation.__all__ if not hasattr(attestation, name)]
    assert missing == []
    assert sorted(attestation.__all__) == sorted(set(attestation.__all__))


def test_pure_modules_import_only_stdlib_cryptography_and_devicetrust() -> None:
    allowed_roots = {"__future__", "collections", "dataclasses", "datetime", "enum", "hashlib", "hmac", "secrets"}
    allowed_roots |= {"typing", "cryptography", "devicetrust"}
    package = Path(attestation.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed_roots, f"{path.name} imports {roots - allowed_roots}"
