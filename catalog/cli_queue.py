"""The queue's commands (``submit``, ``queue``, ``cancel``, ``retry``, ``run``, ``token
worker``), thin like the rest of ``catalog.cli``, on the same app."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from catalog.catalog import Catalog
from catalog.cli import JsonOption, _catalog, _emit, _json_arg, _state, _table, app, token_app
from catalog.config import load_settings
from catalog.errors import ConfigurationError, InvalidInput
from catalog.queue.batch import read_batch
from catalog.tokens import keys_from_env_or_file

queue_app = typer.Typer(help="See and tend the work queue.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")


@app.command()
def submit(
    pipeline: Annotated[str | None, typer.Option(
        help="Pipeline name or UUID (not with --batch).")] = None,
    data: Annotated[str | None, typer.Option(
        help="Job data as JSON: function or command, and parameters.")] = None,
    measurement: Annotated[list[str] | None, typer.Option(help="Measurement id/UUID.")] = None,
    sample: Annotated[list[str] | None, typer.Option(help="Sample id/UUID.")] = None,
    experiment: Annotated[list[str] | None, typer.Option(help="Experiment id/UUID.")] = None,
    observation: Annotated[list[str] | None, typer.Option(
        help="Observation event id/UUID.")] = None,
    priority: Annotated[int, typer.Option(help="1 to 5, higher first.")] = 3,
    retries: Annotated[int, typer.Option(help="Attempts in all before a failure is final.")] = 2,
    timeout: Annotated[int, typer.Option(help="Seconds an attempt may run.")] = 3600,
    site: Annotated[str | None, typer.Option(help="Site that should run it.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    user: Annotated[str | None, typer.Option(help="Who asks for it.")] = None,
    cores: Annotated[int | None, typer.Option(
        help="CPU cores it asks for (not part of its identity).")] = None,
    memory: Annotated[str | None, typer.Option(
        help="Memory it asks for: MB, or a size such as 512M, 2G.")] = None,
    time: Annotated[str | None, typer.Option(
        help="Wall time it asks for: seconds, or 90s, 30m, 2h, 1d, H:MM:SS (default: "
        "--timeout).")] = None,
    when: Annotated[str | None, typer.Option(
        help='A condition on other jobs as JSON, e.g. \'{"all": [{"job": UUID, "is": '
        '"finished"}]}\': the job waits until it holds, and is cancelled if it never can.'
    )] = None,
    batch: Annotated[str | None, typer.Option(
        help="Submit a whole graph: a JSON Lines file (- for stdin), one submission a line "
        "(pipeline, data, when, priority...) with an optional local key that later lines' "
        "conditions may name; checked whole before anything is stored.")] = None,
    json_: JsonOption = False,
) -> None:
    """Have a job run: create it (or find it: same pipeline, upstream and data) and queue it
    (or have it wait for its condition)."""
    asked = {"cores": cores, "memory": memory, "time": time}
    resources = {name: value for name, value in asked.items() if value is not None} or None
    if batch is not None:
        if pipeline is not None or resources is not None:
            raise InvalidInput("--batch takes the pipelines and resources from its lines, "
                               "not --pipeline, --cores, --memory or --time")
        items = read_batch(sys.stdin.read() if batch == "-" else Path(batch).read_text())
        with _catalog() as catalog:
            outcomes = catalog.submit_many(items, source="cli")
        _emit({"jobs": [o.model_dump(mode="json") for o in outcomes]}, True)
        return
    if pipeline is None:
        raise InvalidInput("submit needs --pipeline (or --batch FILE)")
    with _catalog() as catalog:
        outcome = catalog.submit(
            pipeline, _json_arg(data, "data"), source="cli", measurement_id=measurement,
            sample_id=sample, experiment_id=experiment, observation_id=observation,
            priority=priority, retries=retries, timeout=timeout, site=site, tags=tag or [],
            user=user, when=_json_arg(when, "when"), resources=resources)
        document = outcome.model_dump(mode="json")
    _emit(document, json_, "\n".join(f"{k}: {v}" for k, v in document.items()
                                      if v is not None or k != "resources"))


@app.command()
def wait(
    uuid: Annotated[list[str], typer.Argument(help="The jobs to wait for.")],
    any_: Annotated[bool, typer.Option("--any", help="Until the first of them ends.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up after S seconds.")] = None,
) -> None:
    """Wait until the jobs end; print {"jobs": {uuid: state}, "timed_out"}. Exit 0 when they
    finished, 1 when one failed or was cancelled, 124 when the time ran out."""
    with _catalog() as catalog:
        outcome = catalog.wait(uuid, any=any_, timeout=timeout)
    _emit(outcome.model_dump(mode="json"), True)
    raise SystemExit(outcome.exit_code())


@app.command()
def cancel(
    uuid: str,
    reason: Annotated[str, typer.Option(help="Why, for the job's history.")] =
    "cancelled by a user",
    json_: JsonOption = False,
) -> None:
    """Cancel a job that has not ended; a running one's worker stops its work."""
    with _catalog() as catalog:
        outcome = catalog.cancel(uuid, reason, source="cli")
    _emit(outcome.model_dump(mode="json"), json_, f"{outcome.uuid}: {outcome.state}")


@app.command()
def retry(uuid: str, json_: JsonOption = False) -> None:
    """Queue a failed job again, with a fresh count of attempts."""
    with _catalog() as catalog:
        outcome = catalog.retry(uuid, source="cli")
    _emit(outcome.model_dump(mode="json"), json_, f"{outcome.uuid}: {outcome.state}")


@queue_app.command("status")
def queue_status(
    pipeline: Annotated[list[str] | None, typer.Option(help="Only these pipelines.")] = None,
    json_: JsonOption = False,
) -> None:
    """Jobs by pipeline and state."""
    from catalog.queue import status

    with _catalog() as catalog:
        document = status(catalog, pipeline)
    rows = [{"pipeline": name, **counts} for name, counts in sorted(
        document["pipelines"].items())]
    states = sorted({state for counts in document["pipelines"].values() for state in counts})
    _emit(document, json_, _table(rows, ["pipeline", *states], "queue"))


@queue_app.command("sweep")
def queue_sweep(json_: JsonOption = False) -> None:
    """Fail the attempts whose lease expired, and queue them again while attempts remain."""
    from catalog.queue import sweep

    with _catalog() as catalog:
        document = sweep(catalog)
    _emit(document, json_, f"{document['expired']} expired, {document['failed']} failed, "
                           f"{document['retried']} queued again")


@token_app.command("worker")
def token_worker(json_: JsonOption = False) -> None:
    """Print the worker key: withdraw, heartbeat and complete queued jobs, nothing else."""
    settings = load_settings(db=_state.db)
    token = keys_from_env_or_file(Path(settings.secret_file)).worker_token()
    _emit({"token": token}, json_, token)


@app.command()
def run(
    names: Annotated[list[str], typer.Argument(
        metavar="PIPELINE... [FUNCTION]",
        help="Pipelines to take jobs from, then optionally a pkg.module.function to run for "
        "every job instead of the job's own (told by its dots, after at least one pipeline).")],
    command: Annotated[str | None, typer.Option(
        help="A command to run for every job instead (split as a shell would).")] = None,
    site: Annotated[str | None, typer.Option(help="Take only jobs for this site.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Take only jobs with a tag.")] = None,
    user: Annotated[list[str] | None, typer.Option(help="Take only jobs of a user.")] = None,
    lives: Annotated[int, typer.Option(
        help="Withdraws before stopping (-1: until stopped).")] = -1,
    sleep: Annotated[float, typer.Option(help="Seconds to wait while the queue is empty.")] = 30,
    lease: Annotated[int, typer.Option(help="Seconds a lease lasts between heartbeats.")] = 60,
    workdir: Annotated[Path | None, typer.Option(
        help="Where work directories go (default: the system's temporary directory).")] = None,
    url: Annotated[str | None, typer.Option(
        help="Work for this catalog server (default: the local catalog).")] = None,
    token: Annotated[str | None, typer.Option(
        "--token", envvar="CATALOG_WORKER_KEY", help="Worker key, with --url.")] = None,
    engine: Annotated[str, typer.Option(
        help="Where the work runs: local (child processes), slurm (sbatch on the cluster "
        "SLURM_CONF names) or docker (containers of the daemon DOCKER_HOST names); slurm and "
        "docker jobs are followed by a dispatcher.")] = "local",
    max_in_flight: Annotated[int, typer.Option(
        help="With --engine slurm or docker: most jobs started and not yet ended.")] = 100,
    name: Annotated[str | None, typer.Option(
        help="With --engine slurm or docker: the dispatcher's name, kept across restarts so "
        "that it finds its jobs again (default: ENGINE:HOST).")] = None,
    image: Annotated[str | None, typer.Option(
        help="With --engine docker: the image of jobs whose data names none (it must be on "
        "this machine: nothing is pulled).")] = None,
    report_url: Annotated[str | None, typer.Option(
        help="With --engine slurm: the catalog server the nodes report to, through each "
        "job's webhook (default: --url; none for a local catalog).")] = None,
    json_: JsonOption = False,
) -> None:
    """Run queued jobs: withdraw, execute under the job's timeout, archive, index, report.

    SIGTERM or SIGINT lets the job in hand end, then stops (with --engine slurm or docker:
    stops following; a restart finds the jobs in flight again)."""
    from catalog.engines.local import command_argv
    from catalog.queue.models import WorkFilter
    from catalog.worker import HTTPQueue, LocalQueue, Worker, WorkerOptions

    pipelines, function = names, None
    if len(names) > 1 and "." in names[-1]:
        pipelines, function = names[:-1], names[-1]
    if function is not None and command is not None:
        raise ConfigurationError("give a FUNCTION or --command, not both")
    if lease < 5:
        raise ConfigurationError("--lease must be at least 5 seconds")
    if engine not in ("local", "slurm", "docker"):
        raise ConfigurationError(f"unknown engine {engine!r}: local, slurm or docker")
    if max_in_flight < 1:
        raise ConfigurationError("--max-in-flight must be at least 1")
    if report_url is not None and not report_url.startswith(("http://", "https://")):
        raise ConfigurationError(f"--report-url {report_url!r} is not an http:// or https:// "
                                 "URL")
    if engine != "local" and (function is not None or command is not None):
        raise ConfigurationError(f"--engine {engine} runs each job's own function or command")
    if image is not None and engine != "docker":
        raise ConfigurationError("--image is for --engine docker")
    if report_url is not None and engine == "docker":
        raise ConfigurationError("--report-url is for --engine slurm (a container reports "
                                 "through the dispatcher)")
    work_filter = WorkFilter(pipelines=pipelines, site=site, tags=tag, users=user)
    options = WorkerOptions(work_filter, function=function,
                            command=command_argv(command) if command is not None else None,
                            lives=lives, sleep=sleep, lease=lease,
                            sweep_every=min(10.0, lease / 2), workdir=workdir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def work(queue: Any) -> list[Any]:
        if engine != "local":
            return _dispatch(engine, queue, options, max_in_flight, name, stop,
                             report_url or url, image)
        return Worker(queue, options, stop=stop).run()

    if url is not None:
        attempts = work(HTTPQueue(url, token or ""))
    else:
        catalog: Catalog
        with _catalog() as catalog:
            attempts = work(LocalQueue(catalog))
    rows: list[dict[str, Any]] = [{"uuid": a.uuid, "state": a.state, "error": a.error or ""}
                                  for a in attempts]
    _emit({"worker": options.name, "attempts": rows}, json_,
          _table(rows, ["uuid", "state", "error"], f"worker {options.name}"))


def _dispatch(engine: str, queue: Any, options: Any, max_in_flight: int, name: str | None,
              stop: threading.Event, report_url: str | None = None,
              image: str | None = None) -> list[Any]:
    import tempfile

    from catalog.engines.dispatcher import Dispatcher, DispatchOptions, Fleet, dispatcher_name

    fleet: Fleet
    name = name or dispatcher_name(engine)
    if engine == "docker":
        from catalog.engines.docker import DockerEngine
        from catalog.engines.docker_fleet import DockerFleet

        docker = DockerEngine()
        reason = docker.unavailable()
        if reason is not None:
            raise ConfigurationError(f"--engine docker: {reason}")
        if image is not None and not docker.has_image(image):
            raise ConfigurationError(f"--image {image!r} is not on this machine, and nothing "
                                     "is pulled here: load or build it first")
        fleet = DockerFleet(docker, name, image)
    else:
        from catalog.engines.slurm import SlurmFleet
        from catalog.engines.slurm_client import available

        reason = available()
        if reason is not None:
            raise ConfigurationError(f"--engine slurm: {reason}")
        fleet = SlurmFleet(report_url=report_url)
    root = options.workdir or Path(tempfile.gettempdir()) / f"catalog-{engine}"
    dispatch = DispatchOptions(options.work_filter, root, name=name,
                               max_in_flight=max_in_flight, lease=options.lease,
                               sleep=options.sleep, lives=options.lives,
                               sweep_every=options.sweep_every)
    options.name = dispatch.name
    return Dispatcher(queue, fleet, dispatch, stop).run()
