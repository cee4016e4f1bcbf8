"""What ships: the devicetrust wheel holds the product only, and imports nothing it does not declare."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "devicetrust"
#: what the tests, demos and benchmarks bring with them; none of it is the product
TEST_DOUBLE_NAMES = re.compile(r"fake|rsql|test", re.IGNORECASE)
TEST_DOUBLE_MARKERS = ("FakeJamf", "make_test_pki", "TestPKI", "Test CA")
#: import names of declared distributions that are not installed here (platform-only), by distribution
NOT_INSTALLED_HERE = {"Security": "pyobjc-framework-Security"}
#: extras a platform needs to run the product (not dev tools)
PRODUCT_EXTRAS = ("macos",)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    # a copy, so setuptools' build/ and egg-info never touch the checkout
    source = tmp_path_factory.mktemp("source")
    shutil.copy2(ROOT / "pyproject.toml", source)
    shutil.copy2(ROOT / "README.md", source)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, source],
        check=True,
        cwd=source,
    )
    (built,) = out.glob("devicetrust-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_the_wheel_holds_the_devicetrust_package_only(wheel: zipfile.ZipFile) -> None:
    top_levels = {name.split("/")[0] for name in wheel.namelist()}
    assert {top for top in top_levels if not top.endswith(".dist-info")} == {"devicetrust"}
    assert "devicetrust/auth/app.py" in wheel.namelist()


def test_no_test_double_ships(wheel: zipfile.ZipFile) -> None:
    modules = [name for name in wheel.namelist() if name.endswith(".py")]
    assert not [name for name in modules if TEST_DOUBLE_NAMES.search(Path(name).stem)]
    assert not [
        (name, marker) for name in modules for marker in TEST_DOUBLE_MARKERS if marker in wheel.read(name).decode()
    ]


def _third_party_imports() -> dict[str, Path]:
    """Top-level module -> a file of src/devicetrust importing it (stdlib and the package itself left out)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                # _typeshed exists only for type checkers (imported under TYPE_CHECKING)
                if top not in sys.stdlib_module_names and top not in ("__future__", "_typeshed", "devicetrust"):
                    found.setdefault(top, path.relative_to(ROOT))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in PRODUCT_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    installed = packages_distributions()
    declared = _declared()
    undeclared = {}
    for module, where in _third_party_imports().items():
        distributions = installed.get(module) or [NOT_INSTALLED_HERE.get(module, module)]
        if not {canonicalize_name(name) for name in distributions} & declared:
            undeclared[module] = f"{where} (from {', '.join(distributions)})"
    assert undeclared == {}


def test_the_import_scan_sees_renamed_distributions() -> None:
    # the mapping the check relies on: import names that differ from their distribution's
    imports = _third_party_imports()
    installed = packages_distributions()
    assert {"yaml", "argon2", "cryptography", "fastapi"} <= imports.keys()
    assert canonicalize_name(installed["yaml"][0]) == "pyyaml"
    assert canonicalize_name(installed["argon2"][0]) == "argon2-cffi"
