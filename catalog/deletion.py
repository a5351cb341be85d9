"""Delete and purge (issue 20 item 6): admin operations, not events (DESIGN §4).

**delete** leaves a tombstone: the job's head moves out of the jobs (``Store.tombstone_job``),
so it leaves every listing, search, queue count and CHIME view; reading it, sending it events
or deleting it again answers ``JobDeleted`` (410 Gone) with when and from where. Its history,
links and file records stay: a lineage walk through it shows the node ``deleted``, and so
does its PROV export. A job still WAITING, QUEUED or RUNNING is refused (``JobActive``, 409):
it must be cancelled first, so that no job keeps running after its deletion. The jobs waiting
on it are decided at once, the deleted job counting as cancelled (``catalog.queue.release``).
The archive files stay.

**purge** (explicit: the confirmation names the job) erases the job, deleting it first if it
was not: its file records are unlinked (they stay, with their fixity history), its history,
links and dependencies go, and with ``files`` its archive directory is emptied (inside the
archive root only) before the records go. Both are written to the audit log (who: the
source; when; what).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from catalog.errors import (
    CatalogError,
    ConfirmationRequired,
    JobActive,
    JobDeleted,
    JobNotFound,
)
from catalog.identifiers import UUIDType, parse_uuid
from catalog.models import AuditEntry, utc_now, utc_now_text
from catalog.storage import check_storage_path
from catalog.store.values import Doc

if TYPE_CHECKING:
    from catalog.catalog import Catalog

ACTIVE_STATES = frozenset({"WAITING", "QUEUED", "RUNNING"})
PURGE_PAGE = 1000  # file records unlinked (and history entries erased) per transaction


def missing(catalog: Catalog, uuid: str) -> CatalogError:
    """The error for a job the store does not have: deleted (410) or never there (404)."""
    tombstone = catalog.store.get_tombstone(uuid)
    if tombstone is None:
        return JobNotFound(uuid)
    return JobDeleted(uuid, tombstone["deleted"]["date"], tombstone["deleted"]["source"])


def gone_or(catalog: Catalog, exc: CatalogError) -> CatalogError:
    """``exc``, or ``JobDeleted`` when it is a JobNotFound for a deleted job."""
    if isinstance(exc, JobNotFound) and not isinstance(exc, JobDeleted):
        return missing(catalog, str(exc.details["uuid"]))
    return exc


def refuse_deleted(catalog: Catalog, uuid: str) -> None:
    """Refuse to create again a job that was deleted and not purged."""
    tombstone = catalog.store.get_tombstone(uuid)
    if tombstone is not None:
        raise JobDeleted(uuid, tombstone["deleted"]["date"], tombstone["deleted"]["source"])


def _record(catalog: Catalog, uuid: str, name: str, code: str, reason: str,
            source: str, data: dict[str, Any] | None = None) -> None:
    entry = AuditEntry(job_uuid=uuid, name=name, date=utc_now(), source=source, code=code,
                       reason=reason, data=data or {})
    catalog.store.append_audit(entry.model_dump(mode="json"))


def delete(catalog: Catalog, uuid: str, token: str | None, source: str = "python",
           reason: str = "deleted by an administrator") -> Doc:
    """Tombstone the job (admin token); the tombstone (its head with ``deleted``)."""
    from catalog.queue.release import release

    uuid = parse_uuid(uuid, UUIDType.pipelinejob)
    catalog.check_admin(token, f"delete job {uuid}", source)
    deleted = {"date": utc_now_text(), "source": source, "reason": reason}

    def check(head: Doc) -> None:
        if head["state"] in ACTIVE_STATES:
            raise JobActive(uuid, head["state"])

    try:
        tombstone = catalog.store.tombstone_job(uuid, deleted, check)
        if tombstone is None:
            raise missing(catalog, uuid)
    except (JobActive, JobDeleted) as exc:  # refusals of an authenticated admin: audited
        _record(catalog, uuid, "delete", exc.code, exc.message, source)
        raise
    _record(catalog, uuid, "delete", "deleted", reason, source,
            {"state": tombstone["state"]})
    release(catalog, uuid)  # the jobs waiting on it: it will never end as they asked
    return tombstone


def purge(catalog: Catalog, uuid: str, token: str | None, confirm: str | None,
          files: bool = False, source: str = "python") -> dict[str, Any]:
    """Erase the job (admin token, ``confirm`` naming it); with ``files``, its archive
    directory too. ``{"uuid", "purged": true, "files_removed": <count or null>}``."""
    uuid = parse_uuid(uuid, UUIDType.pipelinejob)
    catalog.check_admin(token, f"purge job {uuid}", source)
    if not isinstance(confirm, str) or confirm.strip().lower() != uuid:
        raise ConfirmationRequired(
            f"purging erases job {uuid} for good: confirm with the job's UUID (\"confirm\" "
            f"over HTTP, --yes on the command line; got {confirm!r})")
    # A live job is deleted first, even beside a tombstone (a deletion a crash interrupted
    # on a store without transactions): its records are never erased under it.
    if catalog.store.get_job(uuid, history=False) is not None:
        tombstone = delete(catalog, uuid, token, source, reason="deleted to be purged")
    else:
        found = catalog.store.get_tombstone(uuid)
        if found is None:
            raise JobNotFound(uuid)
        tombstone = found
    removed: int | None = None
    if files:  # before the records: a failure leaves the tombstone, to purge again
        archive_path = check_storage_path(tombstone["archive_path"], what="archive path")
        removed = catalog.storage.delete_prefix(archive_path)
    catalog.store.purge_job(uuid, PURGE_PAGE)
    _record(catalog, uuid, "purge", "purged",
            "purged by an administrator" + (f", with {removed} archive file(s)"
                                            if removed is not None else ""),
            source, {"files_removed": removed})
    return {"uuid": uuid, "purged": True, "files_removed": removed}
