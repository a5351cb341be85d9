"""The end of an attempt: a worker's products, plots and logs enter the job's archive path, are
indexed with fixity as files ``generated_by`` the job, and the job finishes or fails.

A reported path is one of:
- relative: a file already under the job's archive path (the work wrote it there);
- absolute, inside the archive root (local storage): left where it is when it is under the
  job's archive path, else copied in;
- absolute, outside the archive root: copied in (or moved, as the job's queue says) from one of
  the ``product_roots``, never referenced where it lies.
Anything naming ``..``, a missing file, or a file outside every allowed place fails the
attempt, naming each.
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.catalog import Catalog, parse_document
from catalog.errors import BodyTooLarge, CatalogError, InvalidInput, UnsafePath
from catalog.identifiers import canonical_json
from catalog.models import ArchiveMode, Job, QueueInfo
from catalog.queue.core import end_attempt, heartbeat, held_queue
from catalog.queue.models import MAX_RESULTS_BYTES, Completion
from catalog.storage import LocalStorage, check_storage_path, relative_to
from catalog.store.values import Doc

# Where each kind of reported file goes under the job's archive path.
FOLDERS = {"products": "products", "plots": "plots", "logs": "logs"}


@dataclass
class _Brought:
    paths: dict[str, list[str]] = field(default_factory=dict)  # kind -> storage paths
    problems: list[str] = field(default_factory=list)
    moved: list[Path] = field(default_factory=list)


def product_roots(catalog: Catalog) -> list[str]:
    """Directories outside the archive root that reported files may be copied in from."""
    configured = [p for p in catalog.settings.product_roots.split(":") if p]
    return [os.path.realpath(p) for p in (configured or [tempfile.gettempdir()])]


def complete(catalog: Catalog, uuid: str, completion: Completion | dict[str, Any],
             source: str = "python") -> str:
    """End ``completion.worker``'s attempt on ``uuid``: archive its logs; then, without an
    error, its products and plots, index the files with fixity while the attempt still holds
    its lease, and ``finish`` with its results and what the index found (so that whoever sees
    the job FINISHED also finds its outputs); with an error (or a reported file that cannot be
    archived or indexed), ``fail``, retried while attempts remain. Returns the job's state
    after it."""
    if not isinstance(completion, Completion):
        completion = parse_document(Completion, completion, "completion")
    size = len(canonical_json(completion.results).encode())
    if size > MAX_RESULTS_BYTES:
        raise BodyTooLarge(f"results are {size} bytes of JSON; at most {MAX_RESULTS_BYTES}")
    head, queue = held_queue(catalog, uuid, completion.worker)  # before anything is written
    job = Job.model_validate(head)
    brought = _Brought()
    # An empty log says nothing a record of it would keep; it is left out.
    logs = [path for path in completion.logs if not _empty(path)]
    _bring(catalog, job, queue, "logs", logs, "copy", brought)
    error = completion.error
    if error is None:
        _bring(catalog, job, queue, "products", completion.products, queue.products, brought)
        _bring(catalog, job, queue, "plots", completion.plots, queue.plots, brought)
        if brought.problems:
            error = "reported files could not be archived: " + "; ".join(brought.problems)
    told: dict[str, Any] | None = None
    if error is None and (brought.paths or job.archive_patterns or job.product_patterns):
        # Indexing is part of the attempt: its lease must outlast it.
        heartbeat(catalog, job.uuid, completion.worker)
        try:
            told = {"files": _index_outputs(catalog, job, brought, source)}
        except (CatalogError, OSError) as exc:
            why = exc.message if isinstance(exc, CatalogError) else f"{type(exc).__name__}: {exc}"
            error = f"the attempt's outputs could not be indexed: {why}"[:2000]
    if error is not None:
        state = end_attempt(catalog, job.uuid, completion.worker, error, source=source)
        if brought.paths:
            _index_quietly(catalog, job, ["^logs/"])
        return state
    state = end_attempt(catalog, job.uuid, completion.worker, None, completion.results, source,
                        told)
    for moved in brought.moved:  # only once the job has them
        moved.unlink(missing_ok=True)
    return state


def _empty(path: str) -> bool:
    try:
        return os.path.isabs(path) and os.path.getsize(path) == 0
    except OSError:
        return False  # missing or unreadable: _bring names it


def _bring(catalog: Catalog, job: Job, queue: QueueInfo, kind: str, paths: list[str],
           mode: ArchiveMode, brought: _Brought) -> None:
    folder = f"{job.archive_path}/{FOLDERS[kind]}"
    if kind == "logs":
        folder += f"/attempt-{queue.attempt}"
    taken: dict[str, str] = {}
    for reported in paths:
        try:
            stored = _bring_one(catalog, job, reported, folder, mode, brought)
        except (CatalogError, OSError) as exc:
            why = exc.message if isinstance(exc, CatalogError) else exc.strerror or str(exc)
            brought.problems.append(f"{kind[:-1]} {reported!r}: {why}")
            continue
        if stored in taken:
            brought.problems.append(
                f"{kind[:-1]} {reported!r}: same archive name as {taken[stored]!r}")
            continue
        taken[stored] = reported
        brought.paths.setdefault(kind, []).append(stored)


def _bring_one(catalog: Catalog, job: Job, reported: str, folder: str, mode: ArchiveMode,
               brought: _Brought) -> str:
    if "\x00" in reported or ".." in reported.replace("\\", "/").split("/"):
        raise UnsafePath("names '..' (or a NUL): refused")
    storage = catalog.storage
    if not reported.startswith("/"):  # written under the job's archive path by the work
        stored = check_storage_path(f"{job.archive_path}/{reported}")
        storage.stat(stored)  # FileNotFoundError: missing
        return stored
    real = os.path.realpath(reported)
    if isinstance(storage, LocalStorage) and (real == storage.root or
                                              real.startswith(storage.root + os.sep)):
        stored = "/" + os.path.relpath(real, storage.root).replace(os.sep, "/")
        if stored.startswith(job.archive_path.rstrip("/") + "/"):
            storage.stat(stored)
            return stored
        with storage.open(stored) as source:  # another job's file: a copy, never a move
            target = f"{folder}/{posixpath.basename(stored)}"
            storage.write(target, source)
        return target
    if not any(real == root or real.startswith(root + os.sep)
               for root in product_roots(catalog)):
        raise UnsafePath("is outside the archive root and every product root "
                         "(setting product_roots)")
    if not os.path.isfile(real):
        raise InvalidInput("no such file")
    target = check_storage_path(f"{folder}/{os.path.basename(real)}")
    with open(real, "rb") as source:
        storage.write(target, source)
    if mode == "move":
        brought.moved.append(Path(real))
    return target


def _requests(job: Job, brought: _Brought) -> list[dict[str, Any]]:
    """What a finished attempt indexes: its logs as archive files, the products and plots it
    reported (plots are told by their media type), then the job's own requests."""
    reported = [relative_to(path, job.archive_path) for kind in ("products", "plots")
                for path in brought.paths.get(kind, [])]
    requests: list[dict[str, Any]] = [
        {"patterns": ["^logs/"], "level": "Unknown", "note": "captured output"}]
    if reported:
        requests.append({"patterns": [f"^{re.escape(path)}$" for path in reported],
                         "derived_from": []})
    return [*requests, *(r.model_dump(mode="json") for r in job.archive_patterns),
            *(r.model_dump(mode="json") for r in job.product_patterns)]


def _index_outputs(catalog: Catalog, job: Job, brought: _Brought, source: str) -> Doc:
    """Index a succeeding attempt's files (no events: the job is RUNNING; its ``finish`` says
    what was found). Content that differs from what an earlier attempt of the same job
    recorded is that job's new output: accepted as its record's next version, the files named
    in an ``update`` of the job's history, never silently. On a job's first attempt nothing is
    accepted: a changed file stays ``changed``."""
    from catalog.indexer import index_files

    accept = None
    if _ran_before(catalog, job.uuid):
        token = catalog.job_token(job.uuid)

        def accept(files: list[Doc]) -> None:
            catalog.handle_event(job.uuid, {"name": "update", "data": {
                "accepted_changes": files,
                "reason": "a new attempt replaced an earlier attempt's outputs"}},
                token, source)

    result = index_files(catalog, job, _requests(job, brought), accept=accept)
    return {"indexed": result.indexed, "hashed": result.hashed, "unchanged": result.unchanged,
            "changed": result.changed, "accepted": result.accepted}


def _ran_before(catalog: Catalog, uuid: str) -> bool:
    """Whether the job has an attempt before its running one (more than one ``run``)."""
    history = catalog.store.get_job(uuid, history=True) or {}
    return sum(1 for entry in history.get("history") or () if entry.get("name") == "run") > 1


def _index_quietly(catalog: Catalog, job: Job, patterns: list[str]) -> None:
    """Index a failed attempt's logs (no events: a failed job takes no ``index``)."""
    from catalog.indexer import index_files

    try:
        index_files(catalog, job, [{"patterns": patterns, "level": "Unknown",
                                    "note": "captured output"}])
    except CatalogError:
        pass  # the failure is what matters; its logs are archived, listed by verify
