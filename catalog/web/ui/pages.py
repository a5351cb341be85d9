"""What each page shows, read from the library a page at a time (no HTML here)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from catalog.catalog import Catalog
from catalog.errors import CatalogError, InvalidInput, MalformedIdentifier
from catalog.identifiers import UUIDType, parse_uuid, uuid_type
from catalog.queue.core import status
from catalog.states import STATES, allowed_events
from catalog.web.ui.diagrams import lineage_graph, node_href, state_diagram

__all__ = ["dashboard", "file", "job", "jobs", "node_href", "queue", "record", "search"]

PAGE = 50  # rows of a table
RECENT = 15
LINEAGE_DEPTH, LINEAGE_EDGES = 3, 40  # what a page draws; the API walks further
FIXITY_PAGE = 100  # fixity checks shown on a file's page (a link pages on)
JOB_FILTERS = ("state", "pipeline", "child_of", "text", "created_after", "created_before",
               "sort")
_CHECKSUM = re.compile(r"^[a-z0-9-]+:[0-9a-fA-F]{8,}$")


def _query(params: dict[str, str], **changes: Any) -> str:
    merged = {**params, **changes}
    return "?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def dashboard(catalog: Catalog) -> dict[str, Any]:
    counts = status(catalog)
    recent = catalog.find_jobs(limit=RECENT, sort="-created").items
    return {"title": "Dashboard", "states": STATES, "counts": counts, "recent": recent,
            "pipelines": _pipeline_names(catalog)}


def _pipeline_names(catalog: Catalog) -> dict[str, str]:
    return {p["uuid"]: p["name"] for p in catalog.list_pipelines(limit=1000).items}


def jobs(catalog: Catalog, params: dict[str, str]) -> dict[str, Any]:
    filters = {key: params[key] for key in JOB_FILTERS if params.get(key)}
    error = None
    try:
        page = catalog.find_jobs(filters.get("state"), filters.get("pipeline"),
                                 filters.get("child_of"), PAGE, params.get("cursor") or None,
                                 created_after=filters.get("created_after"),
                                 created_before=filters.get("created_before"),
                                 text=filters.get("text"), sort=filters.get("sort", "created"))
        rows, following = page.items, page.next
    except CatalogError as exc:  # shown on the page, with the form to correct it
        rows, following, error = [], None, exc.message
    return {"title": "Jobs", "states": STATES, "filters": filters, "rows": rows, "error": error,
            "pipelines": _pipeline_names(catalog),
            "next": _query(filters, cursor=following) if following else None,
            "first": _query(filters) if params.get("cursor") else None,
            "sort_link": _query(filters, sort="created" if filters.get("sort") == "-created"
                                else "-created")}


def _offset(params: dict[str, str], name: str) -> int:
    value = params.get(name, "0")
    if not value.isdigit():
        raise InvalidInput(f"{name} is a number of entries, not {value!r}")
    return int(value)


def job(catalog: Catalog, uuid: str, params: dict[str, str]) -> dict[str, Any]:
    found = catalog.get_job(uuid, history=False)
    head = catalog.store.get_job(found.uuid, history=False) or {}
    after = _offset(params, "history")
    history = catalog.store.history_page(head, after, PAGE)
    files = catalog.find_files(job=found.uuid, limit=PAGE, cursor=params.get("files") or None)
    pipeline = catalog.store.get_pipeline(found.pipeline_uuid) or {}
    up = catalog.lineage(found.uuid, "up", LINEAGE_DEPTH, LINEAGE_EDGES)
    down = catalog.lineage(found.uuid, "down", LINEAGE_DEPTH, LINEAGE_EDGES)
    return {
        "title": f"Job {found.uuid}", "job": found, "pipeline": pipeline,
        "diagram": state_diagram(found.state), "events": allowed_events(found.state),
        "history": history, "history_from": after + 1,
        "history_next": (_query(params, history=after + PAGE)
                         if after + PAGE < found.version else None),
        "history_previous": (_query(params, history=max(0, after - PAGE))
                             if after else None),
        "files": files.items,
        "files_next": _query(params, files=files.next) if files.next else None,
        "files_first": _query(params, files=None) if params.get("files") else None,
        "dependents": catalog.store.dependents(found.uuid),
        "condition": found.queue.when if found.queue else None,
        "lineage": lineage_graph(found.uuid, up, down),
        "truncated": up["truncated"] or down["truncated"],
    }


def queue(catalog: Catalog) -> dict[str, Any]:
    running = catalog.find_jobs("RUNNING", limit=200).items
    leases = [(job, (job.get("queue") or {}).get("lease")) for job in running]
    return {"title": "Queue", "counts": status(catalog), "leases": leases,
            "pipelines": _pipeline_names(catalog),
            "columns": ("WAITING", "QUEUED", "RUNNING", "FAILED", "FINISHED", "CANCELLED")}


def file(catalog: Catalog, uuid: str, cursor: str | None = None) -> dict[str, Any]:
    """A file record, a page of its fixity history (``cursor``: the page after) and lineage."""
    record = catalog.get_file(uuid)
    down = catalog.lineage(record.uuid, "down", 1, LINEAGE_EDGES)
    up = catalog.lineage(record.uuid, "up", 1, LINEAGE_EDGES)
    used_by = sorted({e["from"] for e in down["edges"]})
    checks = catalog.fixity_checks(record.uuid, FIXITY_PAGE, cursor)
    return {"title": f"File {record.path}", "file": record, "used_by": used_by,
            "checks": checks.items, "checks_next": checks.next,
            "lineage": lineage_graph(record.uuid, up, down)}


def record(catalog: Catalog, uuid: str) -> dict[str, Any]:
    """An upstream record (a dataset, a reference, a product): its links and lineage."""
    entity = None
    try:
        entity = catalog.get_entity(uuid).model_dump(mode="json")
    except CatalogError:
        pass  # another kind of record: its lineage still says what it is linked to
    up = catalog.lineage(uuid, "up", LINEAGE_DEPTH, LINEAGE_EDGES)
    down = catalog.lineage(uuid, "down", LINEAGE_DEPTH, LINEAGE_EDGES)
    if entity is None and not up["edges"] and not down["edges"]:
        from catalog.errors import EntityNotFound

        raise EntityNotFound(uuid)
    return {"title": f"Record {uuid}", "uuid": up["root"], "entity": entity,
            "used_by": sorted({e["from"] for e in down["edges"]}),
            "lineage": lineage_graph(up["root"], up, down)}


def search(catalog: Catalog, text: str) -> dict[str, Any] | str:
    """A page's address for a UUID; else the jobs and files that match (by checksum, path,
    name or text in a job's data)."""
    found: dict[str, Any] = {"title": "Search", "q": text, "jobs": [], "files": [],
                             "pipelines": {}, "error": None}
    if not text:
        return found
    try:
        return node_href(parse_uuid(text))
    except (MalformedIdentifier, CatalogError):
        pass
    try:
        if _CHECKSUM.match(text):
            found["files"] = catalog.find_files(checksum=text, limit=PAGE).items
        elif text.startswith("/"):
            found["files"] = catalog.find_files(path_prefix=text, limit=PAGE).items
        else:
            found["files"] = catalog.find_files(path_glob=f"**/*{_glob_escape(text)}*",
                                                limit=PAGE).items
            found["jobs"] = catalog.find_jobs(text=text, limit=PAGE).items
        pipelines = catalog.list_pipelines(text, limit=PAGE).items
        found["pipelines"] = {p["uuid"]: p["name"] for p in pipelines}
    except CatalogError as exc:
        found["error"] = exc.message
    return found


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]{}\\])", r"[\1]", text)


def kind_of(uuid: str) -> str:
    try:
        return uuid_type(uuid).name
    except MalformedIdentifier:
        return "record"


_ = UUIDType  # the types node_href tells apart
