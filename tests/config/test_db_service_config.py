"""db_service in devicetrust.yaml: the databases, the join settings it shares with ssh_service, and mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicetrust.config import Config, DatabaseEntry, read_config_file
from devicetrust.errors import ConfigError

SECTION = """\
db_service:
  listen_addr: 127.0.0.1:15433
  hostname: db-1
  join_token: abc
  databases:
    - name: pg-prod
      protocol: postgres
      uri: postgres://db.example.com:5432
      labels:
        env: prod
      ca_file: /etc/ssl/db-ca.pem
    - name: pg-dev
      uri: 10.0.0.5:6432
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "devicetrust.yaml"
    path.write_text(text)
    return read_config_file(path)


def test_the_section_is_read(tmp_path: Path) -> None:
    db = load(tmp_path, SECTION).db_service
    assert db.enabled and db.listen_addr == "127.0.0.1:15433" and db.effective_hostname() == "db-1"
    assert db.read_join_token() == "abc"
    assert db.databases == (
        DatabaseEntry(
            "pg-prod", "postgres://db.example.com:5432", "postgres", {"env": "prod"}, Path("/etc/ssl/db-ca.pem")
        ),
        DatabaseEntry("pg-dev", "10.0.0.5:6432"),
    )


def test_disabled_without_the_section(tmp_path: Path) -> None:
    assert not load(tmp_path, "version: v1\n").db_service.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db_service:\n  enabled: true\n", "db_service.databases: list at least one database"),
        (
            "db_service:\n  databases:\n    - name: pg\n      protocol: mysql\n      uri: h:1\n",
            "db_service.databases[0].protocol: expected one of postgres, got 'mysql'",
        ),
        (
            "db_service:\n  databases:\n    - name: pg\n      uri: mysql://h:1\n",
            "db_service.databases[0].uri: expected postgres://HOST:PORT",
        ),
        (
            "db_service:\n  databases:\n    - name: pg\n      uri: postgres://bob:pw@h:1\n",
            "db_service.databases[0].uri: no user or password in the URI",
        ),
        (
            "db_service:\n  databases:\n    - {name: pg, uri: 'h:1'}\n    - {name: pg, uri: 'h:2'}\n",
            "db_service.databases[1].name: 'pg' is already configured",
        ),
        ("db_service:\n  databases:\n    - {name: 'a b', uri: 'h:1'}\n", "db_service.databases[0].name: invalid name"),
        ("db_service:\n  databases:\n    - {name: pg}\n", "db_service.databases[0].uri: expected a non-empty string"),
        (
            "db_service:\n  join_token: x\n  token_file: /t\n  databases:\n    - {name: pg, uri: 'h:1'}\n",
            "db_service: give join_token or token_file, not both",
        ),
        (
            "db_service:\n  listen_addr: nowhere\n  databases:\n    - {name: pg, uri: 'h:1'}\n",
            "db_service.listen_addr: expected HOST:PORT",
        ),
    ],
)
def test_mistakes_name_their_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, text)
    assert message in str(refused.value)
