"""References: strings that name files and reference records, resolved to typed UUIDs.

One resolver serves the indexer (``derived_from`` / ``derived_using`` of product requests) and
job creation (inputs and parameters, DESIGN §5). A string may be

- a typed UUID of a file (105), reference (109) or product (110) the catalog holds;
- a path in the archive: absolute as file records show it (``/products/...``), or ``./x``
  relative to the job's archive path; it must name a catalogued file;
- a URI (``scheme://...``). Inside this catalog's archive (``file://`` under a local root,
  ``s3://`` in its bucket and prefix) it must name a catalogued file, like a path. Anywhere
  else it names a reference: a record of its own (type 109, its UUID derived from the URI),
  created when the job that uses it is stored, so a genome on shared disk or a table behind
  https gets one node in the lineage graph however many jobs read it.

What cannot be resolved is refused with the string in the message; nothing is written.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import unquote, urlsplit

from catalog.catalog import Catalog
from catalog.errors import InvalidInput, UnsafePath
from catalog.identifiers import UUIDType, looks_like_uuid, parse_uuid, uuid_type
from catalog.models import Entity, utc_now
from catalog.storage import LocalStorage, S3Storage, check_storage_path

# scheme://rest, with the scheme as RFC 3986 spells it.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_MAX_URI = 2048
_LINKABLE = (UUIDType.file, UUIDType.reference, UUIDType.product)


def file_uuid(catalog: Catalog, storage_system: str, path: str) -> str:
    """A file record's UUID: from the storage system and the path inside it."""
    return catalog.typed_uuid(UUIDType.file, f"{storage_system}:{path}")


def is_uri(value: str) -> bool:
    return _URI.match(value) is not None


@dataclass
class Resolver:
    """Resolves reference strings for one job, remembering the reference records it made."""

    catalog: Catalog
    archive_system: str
    archive_path: str | None = None
    # storage path -> file uuid of records being written with the references (indexing)
    pending: Mapping[str, str] = field(default_factory=dict)
    new_references: dict[str, Entity] = field(default_factory=dict)

    def resolve(self, reference: Any, allow_references: bool = True) -> str:
        """The typed UUID ``reference`` names; InvalidInput (naming it) when there is none.

        With ``allow_references`` false only catalogued files and known records resolve; a
        URI outside the archive is then refused rather than made a reference record.
        """
        if not isinstance(reference, str) or not reference:
            raise InvalidInput(f"reference {reference!r} must be a non-empty string")
        if looks_like_uuid(reference):
            return self._known(reference)
        if reference.startswith("./"):
            if self.archive_path is None:
                raise InvalidInput(f"reference {reference!r} is relative, but to no archive path")
            relative = posixpath.normpath(reference[2:])
            if relative == ".." or relative.startswith(("../", "/")):
                raise UnsafePath(f"reference {reference!r} leaves the job's archive path")
            return self._catalogued(f"{self.archive_path}/{relative}", reference)
        if reference.startswith("/"):
            return self._catalogued(check_storage_path(reference), reference)
        if is_uri(reference):
            path = self._archive_path_of_uri(reference)
            if path is not None:
                return self._catalogued(check_storage_path(path), reference)
            if not allow_references:
                raise InvalidInput(f"reference {reference!r} is not in this catalog's archive")
            return self._reference_record(reference)
        raise InvalidInput(
            f"reference {reference!r} is not a typed UUID, ./relative path, absolute archive "
            "path or URI (file://, s3://, https://, ...)"
        )

    @cached_property
    def _pending_uuids(self) -> frozenset[str]:
        return frozenset(self.pending.values())

    def _known(self, reference: str) -> str:
        uuid = parse_uuid(reference, *_LINKABLE)
        store = self.catalog.store
        if uuid in self._pending_uuids or uuid in self.new_references:
            return uuid
        known = store.get_file(uuid) if uuid.startswith(UUIDType.file.prefix) \
            else store.get_entity(uuid)
        if known is None:
            raise InvalidInput(f"reference {reference} is not catalogued")
        return uuid

    def _catalogued(self, path: str, reference: str) -> str:
        uuid = self.pending.get(path)
        if uuid is not None:
            return uuid
        uuid = file_uuid(self.catalog, self.archive_system, path)
        if self.catalog.store.get_file(uuid) is None:
            raise InvalidInput(f"reference {reference!r} names {path}, which is not catalogued")
        return uuid

    def _archive_path_of_uri(self, reference: str) -> str | None:
        """The storage path of a URI into this catalog's own archive, else None."""
        storage = self.catalog.storage
        parts = urlsplit(reference)
        scheme = parts.scheme.lower()
        if scheme == "file" and isinstance(storage, LocalStorage) and \
                parts.netloc in ("", "localhost"):
            real = unquote(parts.path)
            if real == storage.root or real.startswith(storage.root.rstrip("/") + "/"):
                return "/" + real[len(storage.root):].lstrip("/")
        if scheme == "s3" and isinstance(storage, S3Storage) and parts.netloc == storage.bucket:
            key = unquote(parts.path).lstrip("/")
            prefix = f"{storage.prefix}/" if storage.prefix else ""
            if key.startswith(prefix):
                return "/" + key[len(prefix):]
        return None

    def _reference_record(self, uri: str) -> str:
        if len(uri) > _MAX_URI:
            raise InvalidInput(f"reference URI is longer than {_MAX_URI} characters")
        parts = urlsplit(uri)
        if not parts.netloc and not parts.path.strip("/"):
            raise InvalidInput(f"reference {uri!r} names no location")
        uuid = self.catalog.typed_uuid(UUIDType.reference, uri)
        if uuid not in self.new_references:
            name = posixpath.basename(parts.path.rstrip("/")) or parts.netloc
            self.new_references[uuid] = Entity(
                uuid=uuid, kind="reference", name=unquote(name)[:1024] or uri[:1024],
                namespace=f"{parts.scheme}://{parts.netloc}"[:1024], uri=uri,
                created=utc_now(),
            )
        return uuid


@dataclass
class _Probe(Resolver):
    """What references name (archive paths, typed UUIDs), none of it looked up."""

    paths: set[str] = field(default_factory=set)
    uuids: set[str] = field(default_factory=set)

    def _known(self, reference: str) -> str:
        uuid = parse_uuid(reference, *_LINKABLE)
        self.uuids.add(uuid)
        return uuid

    def _catalogued(self, path: str, reference: str) -> str:
        self.paths.add(path)
        return path


def named_by(catalog: Catalog, archive_system: str, archive_path: str,
             references: list[Any]) -> tuple[set[str], set[str]]:
    """The archive paths and the typed UUIDs that ``references`` name, without looking them
    up (one that is malformed is left out: resolving it says why). An index run sees which of
    its own files they are as it lists them, rather than holding every path it lists."""
    probe = _Probe(catalog, archive_system, archive_path)
    for reference in references:
        try:
            probe.resolve(reference)
        except (InvalidInput, UnsafePath):
            continue
    return probe.paths, probe.uuids


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (lists and objects walked), with where it was."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")


@dataclass
class Inputs:
    """What a job's data names: inputs it acts on, parameters it acts using."""

    acted_on: list[str]
    acted_using: list[str]
    references: list[Entity]


def discover_inputs(catalog: Catalog, data: Mapping[str, Any], archive_system: str,
                    archive_path: str | None) -> Inputs:
    """Resolve what ``data.inputs`` and ``data.parameters`` name to typed UUIDs.

    Every string in ``inputs`` must resolve. ``parameters`` also carry ordinary values, so
    there only typed UUIDs of files, references and products and URIs must resolve; paths
    count when they name a catalogued file (``/tmp`` or ``./config.yaml`` may be anything);
    everything else, strings or not, is left alone.
    """
    resolver = Resolver(catalog, archive_system, archive_path)
    acted_on: list[str] = []
    acted_using: list[str] = []
    for where, value in _strings(data.get("inputs"), "data.inputs"):
        acted_on.append(_resolve_at(resolver, value, where))
    for where, value in _strings(data.get("parameters"), "data.parameters"):
        if looks_like_uuid(value):
            try:
                linkable = uuid_type(value) in _LINKABLE
            except InvalidInput:
                linkable = False
            if linkable:
                acted_using.append(_resolve_at(resolver, value, where))
        elif is_uri(value):
            acted_using.append(_resolve_at(resolver, value, where))
        elif value.startswith(("/", "./")):
            try:
                acted_using.append(resolver.resolve(value))
            except InvalidInput:
                pass  # an ordinary path, not one in the catalog
    return Inputs(list(dict.fromkeys(acted_on)), list(dict.fromkeys(acted_using)),
                  list(resolver.new_references.values()))


def _resolve_at(resolver: Resolver, value: str, where: str) -> str:
    """Resolve, naming where in the data the value was when it cannot be."""
    try:
        return resolver.resolve(value)
    except InvalidInput as exc:
        exc.message = f"{where}: {exc.message}"
        exc.args = (exc.message,)
        raise
