"""Settings, listed once: defaults < config file < ``CATALOG_*`` environment < arguments.

Nothing is read at import time; ``load_settings()`` reads the file and the environment when
called. The config file is ``catalog.toml`` in the working directory, or ``CATALOG_CONFIG``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from catalog.errors import ConfigurationError, InvalidInput

CONFIG_ENV = "CATALOG_CONFIG"
DEFAULT_CONFIG_FILE = "catalog.toml"


class Settings(BaseModel):
    """Every setting of the catalog, with its default and meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db: str = Field(
        "sqlite:///catalog.db",
        description="Catalog location: sqlite:///path, mongodb://..., or mongomock://name.",
    )
    archive_root: str = Field(
        "archive",
        description="Where archive paths resolve: a local directory or s3://bucket/prefix.",
    )
    s3_endpoint_url: str = Field(
        "", description="Endpoint of an S3-compatible store (empty: AWS itself)."
    )
    archive_system: str = Field("local", description="Name of the storage system jobs archive to.")
    namespace: str = Field(
        "catalog.local", description="Namespace every typed UUID is derived in (never change it)."
    )
    secret_file: str = Field(
        ".catalog/secret.json",
        description="Where 'catalog init' keeps the job secret and admin key (mode 0600).",
    )
    base_url: str = Field(
        "http://127.0.0.1:8000", description="Public URL of the service, used in webhook URLs."
    )
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA", "OFF"] = Field(
        "FULL", description="SQLite synchronous pragma: FULL (durable, default) or NORMAL."
    )
    busy_timeout_ms: int = Field(
        30000, ge=0, description="How long SQLite waits for a lock held by another writer."
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest HTTP request body accepted (413 beyond)."
    )
    mappings_dir: str = Field(
        "", description="Directory of status-mapping TOML files (empty: config/mappings)."
    )
    event_retries: int = Field(
        64, ge=1, description="Compare-and-set attempts before an event reports a conflict."
    )
    refusal_flush_s: float = Field(
        10.0, gt=0, description="Refusals of requests without a valid token are counted per "
        "address and reason, and written to the audit log this often (seconds).",
    )
    refusal_max_keys: int = Field(
        1000, ge=1, description="Most (address, source, reason) counts held between two "
        "writes; further addresses are counted together as 'other'.",
    )
    refusal_rate: float = Field(
        5.0, gt=0, description="Refusals per second an address may earn without a valid token "
        "before it is answered 429 (after a burst of refusal_burst).",
    )
    refusal_burst: int = Field(
        50, ge=1, description="Refusals an address may earn at once before refusal_rate applies.",
    )
    rate_limit_delay_s: float = Field(
        1.0, ge=0, description="How long a 429 answer is held back (at most its Retry-After): "
        "a client that ignores Retry-After is slowed, not served faster (0: answer at once).",
    )
    http_timeout_keep_alive_s: int = Field(
        5, ge=1, description="An idle connection between requests is closed after this long.",
    )
    http_request_timeout_s: float = Field(
        10.0, gt=0, description="A request's headers and body must arrive within this long of "
        "its first byte (or of the connection), else the connection is closed: slow clients "
        "cannot hold connections.",
    )
    openlineage_key: str = Field(
        "", repr=False,
        description="Bearer key OpenLineage emitters send to POST /api/v1/lineage, besides the "
        "admin token (empty: only the admin token; else at least 16 characters).",
    )

    product_roots: str = Field(
        "", description="Directories outside the archive root (separated by ':') that a "
        "worker's products may be copied in from (empty: the system's temporary directory).",
    )
    sweep_interval: float = Field(
        15.0, ge=0, description="Seconds between the server's sweeps of expired leases (0: "
        "none; workers sweep too).",
    )
    fixity_interval: str = Field(
        "0", description="How often 'catalog serve' re-reads the files whose last fixity check "
        "is oldest (90s, 15m, 12h, 7d, 1d12h; 0: never).",
    )
    fixity_batch: int = Field(
        1000, ge=1, description="How many files each scheduled fixity run re-reads.",
    )
    swarm_networks: str = Field(
        "", description="Docker networks a Swarm spawn's swarm_network may name, as "
        "name=network pairs separated by ',' (e.g. 'default=frb-net,archiver=arch-net'): a "
        "name maps to the docker network its container joins, true to the one named 'default' "
        "(none configured, or false: docker's own default); an unknown name is refused.",
    )
    chime_anonymous_writes: bool = Field(
        False, description="Let the CHIME/FRB Buckets and Results surfaces take writes without "
        "a token, as chime-frb-api 3.4 sends none (only on a trusted network).",
    )

    @field_validator("fixity_interval")
    @classmethod
    def _a_duration(cls, value: str) -> str:
        from catalog.fixity_schedule import parse_duration

        try:
            parse_duration(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("swarm_networks")
    @classmethod
    def _network_pairs(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("openlineage_key")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("an ingestion key must be empty or at least 16 characters long")
        return value

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"CATALOG_{field.upper()}"


_NETWORK_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}"


def parse_networks(value: str) -> dict[str, str]:
    """The ``swarm_networks`` setting as {name: docker network} (ValueError when malformed)."""
    found: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in value.split(","))):
        name, equals, network = (side.strip() for side in pair.partition("="))
        if not equals or not re.fullmatch(_NETWORK_NAME, name) or not re.fullmatch(
                _NETWORK_NAME, network):
            raise ValueError(f"swarm_networks: {pair!r} is not name=network (letters, digits, "
                             "'_', '.', '-')")
        if name in found:
            raise ValueError(f"swarm_networks: {name!r} is named twice")
        found[name] = network
    return found


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
    section = raw.get("catalog", raw)
    if not isinstance(section, dict):
        raise ConfigurationError(f"config file {path}: [catalog] must be a table")
    return section


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings with the documented precedence; ``None`` overrides are ignored."""
    values: dict[str, Any] = {}
    if config_file is None:
        config_file = os.environ.get(CONFIG_ENV)
        if config_file is None and Path(DEFAULT_CONFIG_FILE).is_file():
            config_file = DEFAULT_CONFIG_FILE
    if config_file is not None:
        values.update(_read_config_file(Path(config_file)))
    for name in Settings.model_fields:
        env_value = os.environ.get(Settings.env_name(name))
        if env_value is not None:
            values[name] = env_value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None
