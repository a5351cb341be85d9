"""A short end-to-end walk through the catalog, for ``make run`` and newcomers."""

from __future__ import annotations

from typing import Any

from catalog.catalog import Catalog
from catalog.jobs import ManagedPipelineJob, ManagedPipelineJobInstance


def run_demo(catalog: Catalog, initialised: bool = False) -> list[dict[str, Any]]:
    """Register a pipeline, create a job, drive it, replay and refuse events; say what happened.

    ``initialised``: the caller has just created the catalog's secret (``Catalog.init``)."""
    steps: list[dict[str, Any]] = []

    def step(name: str, result: Any) -> None:
        steps.append({"step": name, "result": result})

    settings = catalog.settings
    step("catalog", f"{settings.db} (secret {'created' if initialised else 'kept'} in "
         f"{settings.secret_file}; archive root {settings.archive_root})")

    pipeline, added = catalog.add_pipeline(
        "demo-spectra", "1.0", [{"image": "example/spectra:1.0"}],
        description="demonstration pipeline",
    )
    step("pipeline", f"{pipeline.name} {pipeline.version} {pipeline.uuid}"
         f" ({'registered' if added else 'already registered'})")
    managed = ManagedPipelineJob(catalog, pipeline.uuid, {"parameters": {"window": 5}},
                                 measurement_id="measurement.demo.1", agent="catalog-demo")
    job = managed.setup().stored
    step("job", f"{job.uuid} in {job.state} at {job.archive_path}"
         f" ({'created' if managed.created else 'existing job returned unchanged'})")
    step("webhook", managed.build_webhook())
    instance = ManagedPipelineJobInstance(catalog, job.uuid)
    if instance.job.state == "CREATED":
        for name in ("run", "update", "finish"):
            outcome = instance.handle({"name": name, "data": {"demo": True},
                                       "event_id": f"demo-{name}"}, token=managed.token)
            step(f"event {name}", f"-> {outcome.state}")
    replay = instance.handle({"name": "run", "event_id": "demo-run"}, token=managed.token)
    step("replayed event_id demo-run", f"duplicate={replay.duplicate}, answered {replay.state}")
    try:
        instance.handle({"name": "run"}, token=managed.token)
    except Exception as exc:  # the demo shows the refusal; nothing is applied
        step("late run refused", str(exc))
    final = catalog.get_job(job.uuid)
    step("history", [f"{e.name}->{e.state}" for e in final.history])
    return steps
