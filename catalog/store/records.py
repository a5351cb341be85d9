"""What a record is made of, as every store keeps it: its link lists and where a link may
start, the checksum algorithms it is found by, and how a file record's upserts merge."""

from __future__ import annotations

import re

from catalog.errors import EntityNotFound, FileNotFound, InvalidInput, JobNotFound, NotFound
from catalog.identifiers import UUIDType
from catalog.store.paging import unique
from catalog.store.values import Doc, LinkSource

# Relations kept as edges so both directions can be queried (DESIGN §5); each is also a list
# field of the document it starts from.
JOB_LINK_FIELDS = ("child_of", "generated_by", "acted_on", "acted_using")
ENTITY_LINK_FIELDS = ("child_of", "generated_by", "derived_from", "derived_using")
# Links from a file to the job that wrote it; unlink_job_files removes these.
FILE_JOB_LINK_FIELDS = ("child_of", "generated_by")
# Checksum algorithms a file can be looked up by through an index (others work, by a scan).
INDEXED_CHECKSUMS = ("xxh3_128", "sha256", "md5")
_ALGORITHM = re.compile(r"[a-z0-9_]{1,32}")

def check_new_job(doc: Doc) -> None:
    if doc["version"] != len(doc.get("history", [])):
        raise ValueError("a job's version must equal the number of its history entries")


def is_job(uuid: str) -> bool:
    """Whether a link's source is a job, told by its typed-UUID prefix."""
    return uuid[:3] == UUIDType.pipelinejob.prefix


def link_source(uuid: str) -> LinkSource:
    """What kind of record a link starts from, told by its typed-UUID prefix."""
    if is_job(uuid):
        return "job"
    return "file" if uuid[:3] == UUIDType.file.prefix else "entity"


def check_link(src: str, relation: str) -> LinkSource:
    """Check ``relation`` can start from ``src``; return the kind of record ``src`` is."""
    kind = link_source(src)
    fields = JOB_LINK_FIELDS if kind == "job" else ENTITY_LINK_FIELDS
    if relation not in fields:
        article = "an" if kind == "entity" else "a"
        raise InvalidInput(
            f"{article} {kind} has no {relation!r} links; relations: {', '.join(fields)}"
        )
    return kind


def link_source_not_found(src: str) -> NotFound:
    kind = link_source(src)
    if kind == "job":
        return JobNotFound(src)
    return FileNotFound(src) if kind == "file" else EntityNotFound(src)


def check_algorithm(algorithm: str) -> str:
    """Refuse checksum algorithm names that could not be a plain field or column value."""
    if not _ALGORITHM.fullmatch(algorithm):
        raise InvalidInput(
            f"checksum algorithm {algorithm!r} is not a name of 1 to 32 characters a-z, 0-9, _"
        )
    return algorithm


def latest_files(docs: list[Doc]) -> dict[str, Doc]:
    """One doc per uuid (the last of each), checksum names checked, link lists without repeats.

    A doc with a repeat in a link list is returned as a new dict; the others are the docs
    given, not copies (a store that keeps or changes them copies them itself).
    """
    latest: dict[str, Doc] = {}
    checked: set[str] = set()
    for doc in docs:
        for algorithm in doc.get("checksums", {}):
            if algorithm not in checked:
                checked.add(check_algorithm(algorithm))
        # Only lists with a repeat are rebuilt: indexing upserts many thousands of docs whose
        # lists hold one uuid or none.
        repeats = {field: unique(doc[field]) for field in ENTITY_LINK_FIELDS
                   if len(doc.get(field) or ()) > 1 and len(set(doc[field])) < len(doc[field])}
        latest[doc["uuid"]] = {**doc, **repeats} if repeats else doc
    return latest


# (file uuid, FixityCheck dump, status): one check for ``Store.record_fixity``.
FixityUpdate = tuple[str, Doc, str]


def last_check(stored: list[Doc], given: list[Doc]) -> list[Doc]:
    """What a record keeps of its fixity after an upsert: its last check (the latest ``date``
    of those stored and ``given``; on a tie, the later one in that order), or nothing.

    The whole log is in the store's fixity history (``fixity_checks``), one row or document a
    check, so a record verified nightly stays the same size. An indexer builds its record from
    a reading taken before it hashed, so a check recorded meanwhile (``record_fixity`` from a
    verify) may be newer than the doc's: it stays the last."""
    best: Doc | None = None
    for check in (*stored[-1:], *given):
        if best is None or str(check["date"]) >= str(best["date"]):
            best = check
    return [] if best is None else [best]


def check_identity(check: Doc) -> tuple[str, str]:
    """A check's key in a record's history: (date, outcome). The same check given again (an
    indexer's doc repeating the record's last check) is stored once."""
    return str(check["date"]), str(check["outcome"])


def without_link_fields(docs: list[Doc]) -> list[Doc]:
    """``docs`` with their link lists dropped, in place (``find_files(links=False)``): they are
    records just read for this answer, so no copy is needed; returns ``docs``."""
    for doc in docs:
        for field in ENTITY_LINK_FIELDS:
            doc.pop(field, None)
    return docs
