"""devicetrust.yaml is read strictly (duplicate and unknown keys refused, YAML 1.2 booleans), and the
DEVICETRUST_* variables sit between the flags and the file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from devicetrust.config import (
    ENVIRONMENT,
    Config,
    Overrides,
    environment_settings,
    load_config,
    read_config_file,
)
from devicetrust.errors import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src" / "devicetrust"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devicetrust.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        read_config_file(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "auth_service:\n  listen_addr: 127.0.0.1:3080\n  listen_addr: 0.0.0.0:3080\n")
    assert error_of(path) == f'{path}: line 3: duplicate key "listen_addr"'


def test_a_section_given_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "ssh_service:\n  enabled: false\nauth_service: {}\nssh_service:\n  enabled: true\n")
    assert error_of(path) == f'{path}: line 4: duplicate key "ssh_service"'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "auth_service:\n  listen_adr: 127.0.0.1:3080\n",
            "auth_service.listen_adr: unknown key (did you mean listen_addr?)",
        ),
        ("auth_servce:\n  enabled: true\n", "auth_servce: unknown key (did you mean auth_service?)"),
        (
            "devicetrust:\n  storage:\n    conn_strng: x\n",
            "devicetrust.storage.conn_strng: unknown key (did you mean conn_string?)",
        ),
        ("ssh_service:\n  lables: {env: dev}\n", "ssh_service.lables: unknown key (did you mean labels?)"),
        (
            "jamf_service:\n  enabled: true\n  inventory:\n    - filter: x\n",
            "jamf_service.inventory[0].filter: unknown key (did you mean filter_rsql?)",
        ),
        (
            "jamf_service:\n  client_secret: x\n",
            "jamf_service.client_secret: unknown key (did you mean client_secret_file?)",
        ),
        (
            "devicetrust:\n  log:\n    zzz: 1\n",
            "devicetrust.log.zzz: unknown key (known: severity)",
        ),
        ("app_service:\n  enabled: true\n", "app_service: unknown key"),
        (
            "db_service:\n  databases:\n    - name: pg\n      uri: postgres://h:5432\n      labls: {}\n",
            "db_service.databases[0].labls: unknown key (did you mean labels?)",
        ),
    ],
)
def test_an_unknown_key_is_refused_with_its_path_and_the_closest_known_one(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    assert error_of(path).startswith(f"{path}: {expected}")


def test_a_disabled_jamf_section_is_checked_too(tmp_path: Path) -> None:
    # The jamf parser stops at enabled: false; the file's keys are still checked when it is read.
    path = write(tmp_path, "jamf_service:\n  enabled: false\n  sync_dely: 30s\n")
    assert "jamf_service.sync_dely: unknown key (did you mean sync_delay?)" in error_of(path)


def test_off_on_yes_no_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "auth_service:\n  cluster_name: yes\nssh_service:\n  labels:\n    mode: off\n    backup: on\n    gpu: no\n",
    )
    config = read_config_file(path)
    assert config.auth_service.cluster_name == "yes"
    assert config.ssh_service.labels == {"mode": "off", "backup": "on", "gpu": "no"}


def test_booleans_take_yaml_1_1_words_and_nothing_else(tmp_path: Path) -> None:
    path = write(tmp_path, "auth_service:\n  enabled: yes\nssh_service:\n  enabled: off\n")
    loaded = load_config(path)
    assert loaded.auth_service.enabled and not loaded.ssh_service.enabled
    path = write(tmp_path, "auth_service:\n  enabled: maybe\n")
    assert error_of(path) == f"{path}: auth_service.enabled: expected true or false, got 'maybe'"


def test_more_than_one_document_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "version: v1\n---\nversion: v1\n")
    assert error_of(path) == f"{path}: expected one YAML document, found 2"


# -- precedence: flags > environment > file > defaults ---------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        f"devicetrust:\n  data_dir: {tmp_path / 'from-file'}\n"
        "auth_service:\n  listen_addr: 127.0.0.1:4001\n  cluster_name: file.example\n",
    )


def test_the_file_beats_the_defaults(config_file: Path, tmp_path: Path) -> None:
    config = load_config(config_file, environ={})
    assert config.data_dir == tmp_path / "from-file"
    assert config.auth_service.listen_addr == "127.0.0.1:4001"
    assert config.auth_service.cluster_name == "file.example"
    assert load_config(None, environ={}) == Config()


def test_the_environment_beats_the_file(config_file: Path, tmp_path: Path) -> None:
    environ = {
        "DEVICETRUST_CONFIG": str(config_file),
        "DEVICETRUST_DATA_DIR": str(tmp_path / "from-env"),
        "DEVICETRUST_LISTEN_ADDR": "127.0.0.1:4002",
        "DEVICETRUST_CLUSTER_NAME": "env.example",
    }
    config = load_config(None, environ=environ)
    assert config.source == config_file
    assert config.data_dir == tmp_path / "from-env"
    assert config.auth_service.listen_addr == "127.0.0.1:4002"
    assert config.auth_service.cluster_name == "env.example"


def test_flags_beat_the_environment(config_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("auth_service:\n  listen_addr: 127.0.0.1:4009\n")
    environ = {
        "DEVICETRUST_CONFIG": str(other),
        "DEVICETRUST_DATA_DIR": str(tmp_path / "from-env"),
        "DEVICETRUST_LISTEN_ADDR": "127.0.0.1:4002",
    }
    flags = Overrides(data_dir=tmp_path / "from-flag", listen_addr="127.0.0.1:4003", cluster_name="flag.example")
    config = load_config(config_file, flags=flags, environ=environ)
    assert config.source == config_file
    assert config.data_dir == tmp_path / "from-flag"
    assert config.auth_service.listen_addr == "127.0.0.1:4003"
    assert config.auth_service.cluster_name == "flag.example"


def test_an_empty_variable_is_not_set(config_file: Path, tmp_path: Path) -> None:
    config = load_config(config_file, environ={"DEVICETRUST_DATA_DIR": "", "DEVICETRUST_LISTEN_ADDR": " "})
    assert config.data_dir == tmp_path / "from-file"
    assert environment_settings({}) == Overrides()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DEVICETRUST_LISTEN_ADDR": "nowhere"}, "DEVICETRUST_LISTEN_ADDR: expected HOST:PORT, got 'nowhere'"),
        ({"DEVICETRUST_CLUSTER_NAME": "bad name"}, "DEVICETRUST_CLUSTER_NAME: invalid name 'bad name'"),
    ],
)
def test_a_bad_variable_is_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ=environ)
    assert str(caught.value) == message


def test_every_devicetrust_variable_is_in_the_table_and_the_docs() -> None:
    used = {name for path in SRC.rglob("*.py") for name in re.findall(r"\bDEVICETRUST_[A-Z_]+\b", path.read_text())}
    listed = {variable.name for variable in ENVIRONMENT}
    assert used <= listed
    documented = (DOCS / "architecture.md").read_text()
    assert [name for name in sorted(listed) if f"`{name}`" not in documented] == []


def test_auth_workers_default_to_one_per_cpu(tmp_path: Path) -> None:
    config = read_config_file(write(tmp_path, "auth_service:\n  enabled: true\n"))
    assert config.auth_service.workers == max(1, len(os.sched_getaffinity(0)))


@pytest.mark.parametrize("workers", [1, 4, 64])
def test_auth_workers_are_read(tmp_path: Path, workers: int) -> None:
    config = read_config_file(write(tmp_path, f"auth_service:\n  workers: {workers}\n"))
    assert config.auth_service.workers == workers


@pytest.mark.parametrize("workers", ["0", "65", "-1", "two", "1.5", "true", "'2'", "[2]"])
def test_bad_auth_workers_are_refused(tmp_path: Path, workers: str) -> None:
    path = write(tmp_path, f"auth_service:\n  workers: {workers}\n")
    assert error_of(path) == f"{path}: auth_service.workers: expected a whole number from 1 to 64"
