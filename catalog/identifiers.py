"""Typed UUIDs, canonical JSON, digests, archive paths and instanced directory names.

A typed UUID is a UUID5 in the catalog's namespace whose first three hex digits are replaced by
a type prefix, so the kind of any identifier is visible at a glance (DESIGN §3).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid as _uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum
from functools import lru_cache
from typing import Any

import coolname
import xxhash

from catalog.errors import InvalidData, InvalidInput, MalformedIdentifier, WrongIdentifierType

DEFAULT_NAMESPACE = "catalog.local"
ARCHIVE_PREFIX = "/products/v2"


class UUIDType(Enum):
    """Record kinds and their three-digit prefixes."""

    generic = "100"
    experiment = "102"
    sample = "103"
    measurement = "104"
    file = "105"
    pipeline = "106"
    pipelinejob = "107"
    pipelinejob_event = "108"
    reference = "109"
    product = "110"
    fixity = "116"
    process = "117"
    observation = "126"

    @property
    def prefix(self) -> str:
        return self.value


_BY_PREFIX = {member.value: member for member in UUIDType}
UPSTREAM_TYPES = (
    UUIDType.experiment,
    UUIDType.sample,
    UUIDType.measurement,
    UUIDType.observation,
)
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@lru_cache(maxsize=16)
def namespace_uuid(namespace: str = DEFAULT_NAMESPACE) -> _uuid.UUID:
    """The UUID5 namespace every typed UUID of this catalog is derived in."""
    return _uuid.uuid5(_uuid.NAMESPACE_DNS, namespace)


def typed_uuid(kind: UUIDType, name: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The typed UUID5 of ``name`` for a record of ``kind``."""
    # uuid.uuid5 spelled out (SHA-1 of namespace + name, version and variant bits set): the
    # same value without building UUID objects, as indexing derives one per file.
    return _version_5(kind, hashlib.sha1(namespace_uuid(namespace).bytes + name.encode("utf-8"),
                                         usedforsecurity=False).digest())


def _version_5(kind: UUIDType, digest: bytes) -> str:
    """The typed UUID of 16 bytes of ``digest``: version 5, RFC 4122 variant, type prefix."""
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = kind.prefix + raw.hex()[3:]
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def random_typed_uuid(kind: UUIDType, namespace: str = DEFAULT_NAMESPACE) -> str:
    """A typed UUID5 of a random name, for records with no natural identity."""
    # What typed_uuid would give for a random name (SHA-1 output is as good as random): random
    # bits with the type prefix, version 5 and the variant set, in a third of the time.
    # (a random name's UUID carries nothing of ``namespace``, kept for the callers' sake)
    return _version_5(kind, os.urandom(16))


def random_typed_uuids(kind: UUIDType, count: int) -> list[str]:
    """``count`` of ``random_typed_uuid``'s, the bits set on all of them at once: a sweep
    dates and names 20,000 entries, and one call each cost a tenth of its time."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes((byte & 0x0F) | 0x50 for byte in raw[6::16])
    raw[8::16] = bytes((byte & 0x3F) | 0x80 for byte in raw[8::16])
    digits, prefix = raw.hex(), kind.prefix
    return [f"{prefix}{digits[i + 3:i + 8]}-{digits[i + 8:i + 12]}-{digits[i + 12:i + 16]}-"
            f"{digits[i + 16:i + 20]}-{digits[i + 20:i + 32]}" for i in range(0, 32 * count, 32)]


def uuid_type(value: str) -> UUIDType:
    """The type of a typed UUID; raises MalformedIdentifier when it is not one."""
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        raise MalformedIdentifier(f"{value!r} is not a UUID")
    kind = _BY_PREFIX.get(value[:3].lower())
    if kind is None or value[14] != "5":
        raise MalformedIdentifier(f"{value} is not a catalog UUID (unknown type prefix or version)")
    return kind


def parse_uuid(value: Any, *expected: UUIDType) -> str:
    """Normalise a typed UUID (lower case), checking its type against ``expected`` if given."""
    if isinstance(value, _uuid.UUID):
        value = str(value)
    kind = uuid_type(value)
    if expected and kind not in expected:
        raise WrongIdentifierType(value, [e.name for e in expected], kind.name)
    return str(value).lower()


def looks_like_uuid(value: str) -> bool:
    return bool(_UUID_RE.fullmatch(value))


def upstream_uuids(
    kind: UUIDType, values: str | _uuid.UUID | Iterable[str | _uuid.UUID] | None,
    namespace: str = DEFAULT_NAMESPACE,
) -> list[str]:
    """Resolve upstream ids (``measurement.lab.42`` or typed UUIDs, one or many) to UUIDs."""
    if values is None:
        return []
    if isinstance(values, str | _uuid.UUID):
        values = [values]
    elif not isinstance(values, list | tuple | set | frozenset):
        raise InvalidInput(f"{kind.name} ids must be a string, a UUID or a list of them")
    resolved = []
    for value in values:
        if isinstance(value, _uuid.UUID) or (isinstance(value, str) and looks_like_uuid(value)):
            resolved.append(parse_uuid(value, kind))
            continue
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise InvalidInput(f"{kind.name} id {value!r} must be a non-empty string or UUID")
        if len(value) > 256:
            raise InvalidInput(f"{kind.name} id is longer than 256 characters")
        head = value.split(".", 1)[0]
        other = next((t for t in UPSTREAM_TYPES if t.name == head and t is not kind), None)
        if other is not None:
            raise WrongIdentifierType(value, [kind.name], other.name)
        resolved.append(typed_uuid(kind, value, namespace))
    return resolved


# -- canonical JSON -------------------------------------------------------------------------


MAX_JSON_DEPTH = 100  # deeper documents are refused, not left to exhaust the stack
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class _NotJSON(Exception):
    """What ``_walk`` found wrong, and the path to it (built while unwinding, innermost
    first): no path text is made for the nodes that are fine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _check_json(value: Any, where: str) -> None:
    try:
        _walk(value, 0)
    except _NotJSON as found:
        raise InvalidData(f"{where}{''.join(reversed(found.path))}: {found.reason}") from None


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise _NotJSON(f"key {key!r} is not a string")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise _NotJSON(f"key {key!r} is not valid UTF-8") from None
    if "\x00" in key:  # MongoDB's keys end at a NUL; every store refuses them alike
        raise _NotJSON(f"key {key!r} contains a NUL character")


def _walk(value: Any, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _NotJSON(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        # isascii is a flag CPython keeps: most text needs no encoding to be known UTF-8.
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _NotJSON("string is not valid UTF-8 (lone surrogate)") from None
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_key(key)
            try:
                _walk(item, depth + 1)
            except _NotJSON as found:
                found.path.append(f".{key}")
                raise
        return
    if isinstance(value, list):  # the dict's loop again, kept apart: one loop for both, with a
        # branch per child, checked a 4-dataset OpenLineage event in 8.5 µs against 7.0
        for index, item in enumerate(value):
            try:
                _walk(item, depth + 1)
            except _NotJSON as found:
                found.path.append(f"[{index}]")
                raise
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        # MongoDB keeps integers in 64 bits and refuses others; so do all stores, alike.
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _NotJSON("integer out of the 64-bit range "
                           "(-9223372036854775808 to 9223372036854775807)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJSON(f"{value} is not allowed in JSON (NaN/Infinity)")
        return
    raise _NotJSON(f"{type(value).__name__} is not a JSON type")


def check_json(value: Any, name: str = "data") -> None:
    """Raise InvalidData naming the offending key when ``value`` is not plain JSON."""
    _check_json(value, name)


def canonical_json(value: Any, name: str = "data") -> str:
    """Sorted keys, no insignificant whitespace, UTF-8 text; equal data gives equal bytes."""
    _check_json(value, name)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


class _Refused(ValueError):
    """A JSON token refused while decoding (named by ``loads_json``)."""


def _refuse_constant(token: str) -> Any:
    raise _Refused(f"{token} is not allowed in JSON")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _Refused(f"{token} overflows to infinity")
    return value


# One decoder for every call: json.loads builds a new one whenever hooks are passed.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def loads_json(text: str | bytes, name: str = "data") -> Any:
    """Parse JSON text, refusing NaN/Infinity and duplicate-free but non-JSON constants."""
    try:
        if isinstance(text, bytes | bytearray):  # as json.loads reads bytes
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        elif text.startswith("\ufeff"):
            raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
        return _DECODER.decode(text)
    except _Refused as exc:
        raise InvalidData(f"{name}: {exc}") from None
    except RecursionError:
        raise InvalidData(f"{name}: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidData(f"{name}: not valid JSON ({exc})") from None


def digest(value: Any, name: str = "data") -> str:
    """A short stable digest (xxh3-64, hex) of the canonical JSON of ``value``."""
    return xxhash.xxh3_64_hexdigest(canonical_json(value, name).encode("utf-8"))


# -- derived identities ----------------------------------------------------------------------


def pipeline_uuid(
    name: str, version: str | None = None, components: list[Any] | None = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> str:
    identity = {"name": name, "version": version, "components": components or []}
    return typed_uuid(UUIDType.pipeline, canonical_json(identity, "pipeline"), namespace)


def job_identity(pipeline: str, child_of: Iterable[str], data: Mapping[str, Any]) -> str:
    """The canonical text a job's UUID is derived from."""
    return canonical_json(
        {"pipeline": pipeline, "child_of": sorted(set(child_of)), "data": data}, "data"
    )


def job_uuid(
    pipeline: str, child_of: Iterable[str], data: Mapping[str, Any],
    namespace: str = DEFAULT_NAMESPACE,
) -> str:
    return typed_uuid(UUIDType.pipelinejob, job_identity(pipeline, child_of, data), namespace)


def archive_path(
    pipeline: str, child_of: Iterable[str], data: Mapping[str, Any], instance: str | None = None
) -> str:
    """``/products/v2/<pipeline hex>/<digest of child_of>/<digest of data>[/<instance>]``."""
    parts = [
        ARCHIVE_PREFIX,
        _uuid.UUID(pipeline).hex,
        digest(sorted(set(child_of)), "child_of"),
        digest(data, "data"),
    ]
    if instance is not None:
        parts.append(instance)
    return "/".join(parts)


def check_session(session: str) -> str:
    if not isinstance(session, str) or not _SESSION_RE.fullmatch(session):
        raise InvalidInput(
            f"session {session!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    return session


def timestamp(now: datetime | None = None) -> str:
    """Compact UTC timestamp ``YYYYMMDDTHHMMSSZ``."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def instanced_directory(session: str | None = None, now: datetime | None = None) -> str:
    """``<adjective>-<animal>-<timestamp>`` or ``<session>-<timestamp>``."""
    head = check_session(session) if session is not None else coolname.generate_slug(2)
    return f"{head}-{timestamp(now)}"
