"""The layers in CONTRIBUTING.md hold: the import contracts in pyproject.toml are kept (``make check`` runs them
too), and the modules that moved to keep them work where they are now."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from devicetrust.logs import JSONFormatter, request_id_var

ROOT = Path(__file__).resolve().parents[2]


def test_every_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_log_lines_carry_the_request_id_the_http_layer_set() -> None:
    record = logging.LogRecord("devicetrust.test", logging.INFO, __file__, 1, "served", None, None)
    token = request_id_var.set("req-42")
    try:
        entry = json.loads(JSONFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert entry["request_id"] == "req-42"
    assert "request_id" not in json.loads(JSONFormatter().format(record))


def test_json_logs_load_nothing_of_the_auth_service() -> None:
    script = (
        "import logging, sys\n"
        "from devicetrust.logs import JSONFormatter\n"
        "JSONFormatter().format(logging.LogRecord('x', logging.INFO, 'x', 1, 'm', None, None))\n"
        "print(sorted(m for m in sys.modules if m.startswith('devicetrust.auth')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
