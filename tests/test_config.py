"""Settings: defaults < config file < CATALOG_* environment < explicit arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from catalog.config import Settings, load_settings, parse_networks
from catalog.errors import ConfigurationError

DEFAULTS = {
    "db": "sqlite:///catalog.db",
    "archive_root": "archive",
    "s3_endpoint_url": "",
    "archive_system": "local",
    "namespace": "catalog.local",
    "secret_file": ".catalog/secret.json",
    "base_url": "http://127.0.0.1:8000",
    "sqlite_synchronous": "FULL",
    "busy_timeout_ms": 30000,
    "max_body_bytes": 1048576,
    "mappings_dir": "",
    "event_retries": 64,
    "openlineage_key": "",
    "product_roots": "",
    "sweep_interval": 15.0,
    "fixity_interval": "0",
    "fixity_batch": 1000,
    "chime_anonymous_writes": False,
    "swarm_networks": "",
    "refusal_flush_s": 10.0,
    "refusal_max_keys": 1000,
    "refusal_rate": 5.0,
    "refusal_burst": 50,
    "rate_limit_delay_s": 1.0,
    "http_timeout_keep_alive_s": 5,
    "http_request_timeout_s": 10.0,
}
REPO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "catalog.toml"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no CATALOG_* variables."""
    for name in list(os.environ):
        if name.startswith("CATALOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    assert load_settings().model_dump() == DEFAULTS
    assert Settings().model_dump() == DEFAULTS
    assert set(Settings.model_fields) == set(DEFAULTS)


def test_every_setting_is_described() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert Settings.env_name(name) == "CATALOG_" + name.upper()


def test_shipped_config_file_shows_the_defaults() -> None:
    assert load_settings(REPO_CONFIG).model_dump() == DEFAULTS


def test_config_file_in_working_directory_overrides_defaults(tmp_path: Path) -> None:
    write(tmp_path / "catalog.toml", '[catalog]\ndb = "sqlite:///file.db"\nbusy_timeout_ms = 10\n')
    assert load_settings().model_dump() == {
        **DEFAULTS, "db": "sqlite:///file.db", "busy_timeout_ms": 10,
    }


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "catalog.toml",
          '[catalog]\ndb = "sqlite:///file.db"\nbusy_timeout_ms = 10\nnamespace = "from.file"\n')
    monkeypatch.setenv("CATALOG_DB", "mongomock://from-env")
    monkeypatch.setenv("CATALOG_BUSY_TIMEOUT_MS", "20")
    monkeypatch.setenv("CATALOG_EVENT_RETRIES", "3")
    assert load_settings().model_dump() == {
        **DEFAULTS, "db": "mongomock://from-env", "busy_timeout_ms": 20, "event_retries": 3,
        "namespace": "from.file",
    }


def test_arguments_override_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "catalog.toml", '[catalog]\ndb = "sqlite:///file.db"\nevent_retries = 5\n')
    monkeypatch.setenv("CATALOG_DB", "mongomock://from-env")
    monkeypatch.setenv("CATALOG_BUSY_TIMEOUT_MS", "20")
    settings = load_settings(db="sqlite:///arg.db", busy_timeout_ms=0)
    assert settings.model_dump() == {
        **DEFAULTS, "db": "sqlite:///arg.db", "busy_timeout_ms": 0, "event_retries": 5,
    }


@pytest.mark.parametrize("layer", ["default", "file", "env"])
def test_none_arguments_are_ignored(
    layer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = DEFAULTS["db"]
    if layer in ("file", "env"):
        write(tmp_path / "catalog.toml", '[catalog]\ndb = "sqlite:///file.db"\n')
        expected = "sqlite:///file.db"
    if layer == "env":
        monkeypatch.setenv("CATALOG_DB", "sqlite:///env.db")
        expected = "sqlite:///env.db"
    settings = load_settings(db=None, namespace=None, busy_timeout_ms=None)
    assert settings.db == expected
    assert settings.namespace == DEFAULTS["namespace"]
    assert settings.busy_timeout_ms == DEFAULTS["busy_timeout_ms"]


def test_catalog_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The working directory's file is not read when CATALOG_CONFIG names another one.
    write(tmp_path / "catalog.toml", '[catalog]\ndb = "sqlite:///cwd.db"\narchive_root = "cwd"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    named = write(elsewhere / "settings.toml", '[catalog]\ndb = "sqlite:///named.db"\n')
    monkeypatch.setenv("CATALOG_CONFIG", str(named))
    assert load_settings().model_dump() == {**DEFAULTS, "db": "sqlite:///named.db"}


def test_explicit_config_file_wins_over_catalog_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    via_env = write(tmp_path / "env.toml", '[catalog]\ndb = "sqlite:///env-file.db"\n')
    explicit = write(tmp_path / "explicit.toml", '[catalog]\ndb = "sqlite:///explicit.db"\n')
    monkeypatch.setenv("CATALOG_CONFIG", str(via_env))
    assert load_settings(explicit).db == "sqlite:///explicit.db"
    assert load_settings(str(explicit)).db == "sqlite:///explicit.db"
    assert load_settings().db == "sqlite:///env-file.db"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.db = "sqlite:///other.db"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "env", "mentions"),
    [
        pytest.param({"busy_timeout_ms": -1}, {}, "busy_timeout_ms", id="negative-timeout-arg"),
        pytest.param({}, {"CATALOG_BUSY_TIMEOUT_MS": "-1"}, "busy_timeout_ms",
                     id="negative-timeout-env"),
        pytest.param({}, {"CATALOG_BUSY_TIMEOUT_MS": "soon"}, "busy_timeout_ms",
                     id="non-integer-env"),
        pytest.param({"event_retries": 0}, {}, "event_retries", id="zero-retries"),
        pytest.param({"bogus": 1}, {}, "bogus", id="unknown-argument"),
        pytest.param({"db": 42}, {}, "db", id="db-not-a-string"),
    ],
)
def test_invalid_values(overrides: dict[str, Any], env: dict[str, str], mentions: str,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(**overrides)
    message = caught.value.message
    assert message.startswith("invalid settings: ")
    assert mentions in message


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        pytest.param('[catalog]\nbogus_key = 1\n', "bogus_key", id="unknown-key"),
        pytest.param('[catalog]\nbusy_timeout_ms = -1\n', "busy_timeout_ms", id="negative"),
        pytest.param('[catalog]\nevent_retries = "many"\n', "event_retries", id="wrong-type"),
        pytest.param('[catalog]\ndb = "x"\ndb = "y"\n', "not valid TOML", id="duplicate-key"),
        pytest.param('[catalog\ndb = "x"\n', "not valid TOML", id="bad-toml"),
        pytest.param('db = \n', "not valid TOML", id="missing-value"),
        pytest.param('catalog = 1\n', "[catalog] must be a table", id="catalog-not-a-table"),
    ],
)
def test_invalid_config_files(text: str, mentions: str, tmp_path: Path) -> None:
    path = write(tmp_path / "catalog.toml", text)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()  # found in the working directory
    assert mentions in caught.value.message
    with pytest.raises(ConfigurationError) as explicit:
        load_settings(path)
    assert mentions in explicit.value.message


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigurationError) as caught:
        load_settings(missing)
    assert caught.value.message == f"config file {missing} does not exist"


def test_missing_file_named_by_catalog_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("CATALOG_CONFIG", str(missing))
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert caught.value.message == f"config file {missing} does not exist"


def test_nothing_is_read_at_import_time(tmp_path: Path) -> None:
    write(tmp_path / "catalog.toml", "this is [not toml\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")},
        "CATALOG_CONFIG": str(tmp_path / "missing.toml"),
        "CATALOG_BUSY_TIMEOUT_MS": "not-a-number",
        "CATALOG_DB": "nonsense://",
        "CATALOG_SECRET": "",
    }
    code = "import catalog.config, catalog, catalog.tokens, catalog.store; print('imported')"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "imported\n", "")
    # ... and the same environment is refused when settings are actually loaded.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("CATALOG_"):
                patch.setenv(name, value)
        with pytest.raises(ConfigurationError):
            load_settings()


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///file::memory:?cache=shared"])
def test_an_in_memory_sqlite_database_is_refused(url: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each thread's connection would open its own empty database: refused, not half-working."""
    from catalog.store import open_store

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="is not a file"):
        open_store(url)
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize(("value", "says"), [
    ("cluster", "'cluster' is not name=network"),
    ("a=net,a=other", "'a' is named twice"),
    ("a=bad net", "is not name=network"),
])
def test_swarm_networks_are_name_network_pairs(value: str, says: str) -> None:
    assert parse_networks(" default = frb-net ,arch=arch.net,") == {
        "default": "frb-net", "arch": "arch.net"}
    with pytest.raises(ConfigurationError, match=says):
        load_settings(swarm_networks=value)
