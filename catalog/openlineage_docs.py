"""The records a new OpenLineage run stores, built directly as plain documents.

A run's first event stores its job's pipeline (if absent) and its job. Built through the
``Pipeline`` and ``Job`` models (``ManagedPipelineJob(...).new_job().model_dump(mode="json")``)
they cost 0.2 ms of a START's 0.5 ms: validation of values that are derived here, and cannot
be wrong, then their serialisation. These functions make the same documents (a test compares
them field for field with the models' for the same run), from the parts an OpenLineage job
has: a pipeline of one component naming its namespace and name, no upstream entities, and
``data`` holding the run id alone (so no inputs or parameters to resolve).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from catalog.identifiers import UUIDType, pipeline_uuid, typed_uuid
from catalog.identifiers import archive_path as derive_archive_path
from catalog.paths import check_archive_path
from catalog.states import INITIAL_STATE
from catalog.store.values import Doc

__all__ = ["pipeline_of", "run_job_doc", "run_job_uuid", "run_pipeline_doc"]


@lru_cache(maxsize=4096)
def pipeline_of(namespace: str, name: str, catalog_namespace: str) -> tuple[str, str]:
    """The uuid and name of an OpenLineage job's pipeline (a digest: worth keeping)."""
    components: list[Any] = [{"openlineage": {"namespace": namespace, "name": name}}]
    full_name = f"{namespace}/{name}"
    return pipeline_uuid(full_name, None, components, catalog_namespace), full_name


def run_pipeline_doc(namespace: str, name: str, catalog_namespace: str, created: str) -> Doc:
    """``Pipeline(...).model_dump(mode="json")`` of the OpenLineage job's pipeline."""
    uuid, full_name = pipeline_of(namespace, name, catalog_namespace)
    return {"uuid": uuid, "name": full_name, "version": None,
            "components": [{"openlineage": {"namespace": namespace, "name": name}}],
            "description": None, "created": created}


@lru_cache(maxsize=65536)
def run_job_uuid(pipeline: str, run_id: str, catalog_namespace: str) -> str:
    """``job_uuid(pipeline, [], {"openlineage": {"runId": run_id}})``: a run's START and its
    COMPLETE derive it once. Both ids are UUIDs in their one spelling (hex digits and
    hyphens), so this is the canonical JSON ``job_identity`` writes, keys in sorted order."""
    identity = (f'{{"child_of":[],"data":{{"openlineage":{{"runId":"{run_id}"}}}},'
                f'"pipeline":"{pipeline}"}}')
    return typed_uuid(UUIDType.pipelinejob, identity, catalog_namespace)


def run_job_doc(*, uuid: str, pipeline: str, run_id: str, catalog_namespace: str,
                archive_root: str, archive_system: str, source: str, agent: str | None,
                created: str) -> Doc:
    """``ManagedPipelineJob(catalog, pipeline, data={"openlineage": {"runId": run_id}},
    source=source, agent=agent).new_job().model_dump(mode="json")``, created at ``created``."""
    data = {"openlineage": {"runId": run_id}}
    # Derived from digests, so lexically safe; the check still follows symlinks on disk.
    archive = check_archive_path(derive_archive_path(pipeline, [], data, None), archive_root)
    event_id = f"{uuid}:create"
    first = {"uuid": typed_uuid(UUIDType.pipelinejob_event, f"{uuid}:{event_id}",
                                catalog_namespace),
             "name": "create", "date": created, "data": {}, "source": source,
             "event_id": event_id, "state": INITIAL_STATE}
    return {"uuid": uuid, "pipeline_uuid": pipeline, "data": data, "state": INITIAL_STATE,
            "last_event": "create", "version": 1, "child_of": [], "generated_by": [pipeline],
            "acted_on": [], "acted_using": [], "archive_system": archive_system,
            "archive_path": archive, "archive_patterns": [], "product_patterns": [],
            "session": None, "agent": agent, "task": None, "status_mapping": None,
            "created": created, "updated": created, "queue": None, "results": None,
            "history": [first]}
