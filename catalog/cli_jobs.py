"""The ``job`` commands (create, show, list, event, delete, purge, audit), thin like the rest
of ``catalog.cli``, on the same app."""

from __future__ import annotations

from typing import Annotated

import typer

from catalog.cli import JsonOption, TokenOption, _catalog, _emit, _json_arg, _table, job_app
from catalog.jobs import ManagedPipelineJob


@job_app.command("create")
def job_create(
    pipeline: Annotated[str, typer.Option(help="Pipeline name or UUID.")],
    data: Annotated[str | None, typer.Option(help="Job data (parameters, inputs) as JSON.")] = None,
    measurement: Annotated[list[str] | None, typer.Option(help="Measurement id/UUID.")] = None,
    sample: Annotated[list[str] | None, typer.Option(help="Sample id/UUID.")] = None,
    experiment: Annotated[list[str] | None, typer.Option(help="Experiment id/UUID.")] = None,
    observation: Annotated[list[str] | None, typer.Option(
        help="Observation event id/UUID.")] = None,
    archive_pattern: Annotated[list[str] | None, typer.Option(
        help="Archive index request as JSON.")] = None,
    product_pattern: Annotated[list[str] | None, typer.Option(
        help="Product index request as JSON.")] = None,
    archive_path: Annotated[str | None, typer.Option(
        help="Explicit archive path (inside the archive root).")] = None,
    instanced: Annotated[bool, typer.Option(
        help="Add an <adjective>-<animal>-<timestamp> directory.")] = False,
    session: Annotated[str | None, typer.Option(help="Session name for the instance.")] = None,
    agent: Annotated[str | None, typer.Option(help="Agent managing the job.")] = None,
    task: Annotated[str | None, typer.Option(help="Task of the agent.")] = None,
    json_: JsonOption = False,
) -> None:
    """Create a job, or show the existing one with the same identity (created: false)."""
    with _catalog() as catalog:
        managed = ManagedPipelineJob(
            catalog, pipeline, _json_arg(data, "data"),  # the library checks its shape
            measurement_id=measurement, sample_id=sample, experiment_id=experiment,
            observation_id=observation,
            archive_patterns=[_json_arg(p, "archive_pattern") for p in archive_pattern or []],
            product_patterns=[_json_arg(p, "product_pattern") for p in product_pattern or []],
            archive_path=archive_path, instanced=instanced, session=session, agent=agent,
            task=task, source="cli",
        )
        job = managed.setup().stored
        document = {"uuid": job.uuid, "state": job.state, "archive_path": job.archive_path,
                    "token": managed.token, "webhook": managed.build_webhook(),
                    "created": managed.created}
    _emit(document, json_, "\n".join(f"{k}: {v}" for k, v in document.items()))


@job_app.command("show")
def job_show(uuid: str, json_: JsonOption = False) -> None:
    """Show a job with its history."""
    with _catalog() as catalog:
        job = catalog.get_job(uuid)
    document = job.model_dump(mode="json")
    title = f"job {job.uuid}: {job.state}"
    resources = job.queue.resources if job.queue is not None else None
    if resources is not None:
        title += f" (cores {resources.cores}, memory " + (
            f"{resources.memory} MB" if resources.memory else "unset") + ", time " + (
            f"{resources.time} s)" if resources.time else "its timeout)")
    history = _table(document["history"], ["date", "name", "state", "source", "event_id"],
                     title)
    _emit(document, json_, history)


@job_app.command("list")
def job_list(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Pipeline name or UUID.")] = None,
    child_of: Annotated[str | None, typer.Option(help="Upstream entity id or UUID.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only jobs run by this agent.")] = None,
    created_after: Annotated[str | None, typer.Option(
        help="Created at or after this ISO 8601 date or time.")] = None,
    created_before: Annotated[str | None, typer.Option(
        help="Created before this ISO 8601 date or time.")] = None,
    text: Annotated[str | None, typer.Option(
        help="Text in a key or string value of the job's data (any case).")] = None,
    sort: Annotated[str, typer.Option(help="created (oldest first) or -created.")] = "created",
    limit: Annotated[int, typer.Option(help="Page size (1-1000).")] = 100,
    cursor: Annotated[str | None, typer.Option(help="Cursor from a previous page.")] = None,
    json_: JsonOption = False,
) -> None:
    """List jobs, oldest first unless sorted otherwise."""
    with _catalog() as catalog:
        page = catalog.find_jobs(state, pipeline, child_of, limit, cursor, agent=agent,
                                 created_after=created_after, created_before=created_before,
                                 text=text, sort=sort)
    _emit({"jobs": page.items, "next": page.next}, json_,
          _table(page.items, ["uuid", "state", "last_event", "created"], "jobs"))


@job_app.command("event")
def job_event(
    uuid: str,
    name: str,
    token: TokenOption = None,
    data: Annotated[str | None, typer.Option(help="Event data as a JSON object.")] = None,
    event_id: Annotated[str | None, typer.Option(help="Sender's id; resending is safe.")] = None,
    json_: JsonOption = False,
) -> None:
    """Send an event to a job."""
    with _catalog() as catalog:
        outcome = catalog.handle_event(
            # Only parsed here: the library validates the event (and audits a refusal).
            uuid, {"name": name, "data": {} if data is None else _json_arg(data, "data"),
                   "event_id": event_id},
            token, source="cli",
        )
    document = outcome.model_dump(mode="json")
    _emit(document, json_, f"{outcome.uuid}: {outcome.last_event} -> {outcome.state}"
          + (" (duplicate: already applied)" if outcome.duplicate else ""))


@job_app.command("delete")
def job_delete(uuid: str, token: TokenOption = None, json_: JsonOption = False) -> None:
    """Delete a job, leaving a tombstone (admin token); see `job purge`."""
    with _catalog() as catalog:
        catalog.delete_job(uuid, token, source="cli")
    _emit({"uuid": uuid, "deleted": True}, json_, f"deleted job {uuid}")


@job_app.command("purge")
def job_purge(
    uuid: str,
    token: TokenOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: the job is erased for good.")]
    = False,
    files: Annotated[bool, typer.Option(
        "--files", help="Empty the job's archive directory too.")] = False,
    json_: JsonOption = False,
) -> None:
    """Erase a job, its history and its links (admin token, --yes)."""
    with _catalog() as catalog:
        outcome = catalog.purge_job(uuid, token, uuid if yes else None, files, source="cli")
    _emit(outcome, json_, f"purged job {outcome['uuid']}" + (
        f" and {outcome['files_removed']} archive file(s)" if files else ""))


@job_app.command("audit")
def job_audit(
    uuid: Annotated[str | None, typer.Argument(help="Job UUID (all jobs if omitted).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many entries.")] = 100,
    json_: JsonOption = False,
) -> None:
    """Show refused events and administrative actions, newest first."""
    with _catalog() as catalog:
        entries = [e.model_dump(mode="json") for e in catalog.audit_log(uuid, limit)]
    _emit({"audit": entries}, json_,
          _table(entries, ["date", "job_uuid", "name", "code", "reason"], "audit"))
