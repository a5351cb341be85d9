"""The rough edges a newcomer met (issue 21 item 3): the demo in a fresh folder, a job's token
again, lineage of an unknown record, tables cut at 80 columns, flags shown as taking a value,
``setup()`` returning the job, and a progress bar that knows its totals."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from catalog import Catalog, ManagedPipelineJob
from catalog.cli_progress import Bar, _FilesColumn, progress_bar
from catalog.errors import NotFound
from catalog.identifiers import UUIDType, typed_uuid
from catalog.indexer import index_job
from catalog.models import Job
from catalog.web import create_app

SCRIPT = Path(sys.executable).parent / "catalog"
UNKNOWN_JOB = str(typed_uuid(UUIDType.pipelinejob, "nothing has this one"))


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    environment.update(env)
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    for name in list(os.environ):
        if name.startswith("CATALOG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    opened, _ = Catalog.init(f"sqlite:///{tmp_path}/catalog.db")
    opened.add_pipeline("newcomer", "1.0")
    yield opened
    opened.close()


def make_job(catalog: Catalog, **data: Any) -> ManagedPipelineJob:
    return ManagedPipelineJob(catalog, "newcomer", data or {"n": 1},
                              archive_patterns=[{"patterns": [r"\.csv$"]}]).setup()


def test_demo_in_a_fresh_folder_creates_what_it_needs(tmp_path: Path) -> None:
    done = run(tmp_path, "--json", "demo")
    assert done.returncode == 0, done.stderr
    steps = {s["step"]: s["result"] for s in json.loads(done.stdout)["steps"]}
    assert "secret created in .catalog/secret.json" in steps["catalog"]
    assert (tmp_path / ".catalog" / "secret.json").stat().st_mode & 0o077 == 0
    assert steps["history"][-1] == "finish->FINISHED"
    again = run(tmp_path, "--json", "demo")  # the same catalog, kept as it is
    assert again.returncode == 0, again.stderr
    assert "secret kept" in json.loads(again.stdout)["steps"][0]["result"]


def test_token_job_gives_the_jobs_token_back(catalog: Catalog, tmp_path: Path) -> None:
    job = make_job(catalog)
    env = {"CATALOG_DB": catalog.settings.db}
    done = run(tmp_path, "token", "job", job.uuid, **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == job.token + "\n"
    document = json.loads(run(tmp_path, "--json", "token", "job", job.uuid, **env).stdout)
    assert document == {"uuid": job.uuid, "token": job.token, "webhook": job.build_webhook()}
    # The token works: it drives the job.
    sent = run(tmp_path, "job", "event", job.uuid, "run", "--token", done.stdout.strip(), **env)
    assert sent.returncode == 0 and "-> RUNNING" in sent.stdout, sent.stderr
    unknown = run(tmp_path, "--json", "token", "job", UNKNOWN_JOB, **env)
    assert unknown.returncode == 4 and unknown.stdout == ""
    assert json.loads(unknown.stderr)["error"]["code"] == "job_not_found"


def test_token_job_without_a_secret_says_what_to_run(tmp_path: Path) -> None:
    done = run(tmp_path, "token", "job", UNKNOWN_JOB)
    assert done.returncode == 1 and "catalog init" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created on the way


@pytest.mark.parametrize("args", [("file", "list", "--job", UNKNOWN_JOB), ("job", "list"),
                                  ("queue", "status"), ("serve", "--port", "0"),
                                  ("run", "reduce", "--lives", "1")])
def test_a_command_in_a_folder_without_a_catalog_says_so_and_creates_none(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    """Run in the wrong folder, a command is told there is no catalog there (exit 4), rather
    than answered from a new, empty one it would leave behind."""
    done = run(tmp_path, "--json", *args)
    assert done.returncode == 4, done.stderr
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "catalog_not_found"
    assert error["message"] == (
        f"no catalog at sqlite:///catalog.db ({tmp_path / 'catalog.db'} does not exist): "
        "'catalog init' creates it; --db or CATALOG_DB names another")
    assert list(tmp_path.iterdir()) == []
    other = tmp_path / "elsewhere.db"
    done = run(tmp_path, "job", "list", CATALOG_DB=f"sqlite:///{other}")
    assert done.returncode == 4 and f"no catalog at sqlite:///{other}" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_lineage_of_an_unknown_record_is_404_everywhere(catalog: Catalog,
                                                        tmp_path: Path) -> None:
    job = make_job(catalog)
    unknown_file = str(typed_uuid(UUIDType.file, "no such file"))
    for uuid in (UNKNOWN_JOB, unknown_file, "measurement.nobody.0"):
        with pytest.raises(NotFound):
            catalog.lineage(uuid)
        with pytest.raises(NotFound):
            catalog.lineage(uuid, "down", 0)
    # Known records answer, even without edges (a pipeline nothing ran yet) or at depth 0.
    assert catalog.lineage(job.uuid)["nodes"][0]["uuid"] == job.uuid
    assert catalog.lineage(job.uuid, depth=0)["edges"] == []
    lonely, _ = catalog.add_pipeline("lonely", "1")
    assert catalog.lineage(lonely.uuid)["nodes"] == [
        {"uuid": lonely.uuid, "type": "pipeline", "depth": 0, "name": "lonely", "version": "1"}]
    with TestClient(create_app(catalog)) as client:
        for fmt in ("json", "prov-json", "prov-n"):
            answer = client.get(f"/lineage/{UNKNOWN_JOB}", params={"format": fmt})
            assert answer.status_code == 404, answer.text
            assert answer.json() == {"error": {"code": "not_found", "message": (
                f"no record {UNKNOWN_JOB} in the catalog (nothing has this UUID, and no "
                "lineage names it)")}}
        assert client.get(f"/lineage/{job.uuid}").status_code == 200
    env = {"CATALOG_DB": catalog.settings.db}
    for fmt in ("json", "text", "prov-json", "prov-n"):
        done = run(tmp_path, "lineage", UNKNOWN_JOB, "--format", fmt, **env)
        assert done.returncode == 4 and done.stdout == "", (fmt, done.stdout)
        assert f"error: no record {UNKNOWN_JOB}" in done.stderr


def test_setup_returns_the_job_object_itself(catalog: Catalog) -> None:
    job = ManagedPipelineJob(catalog, "newcomer", {"chain": True})
    assert job.setup() is job
    outcome = ManagedPipelineJob(catalog, "newcomer", {"chain": True}).setup().run()
    assert outcome.state == "RUNNING"
    again = ManagedPipelineJob(catalog, "newcomer", {"chain": True}).setup()
    assert again.created is False
    assert isinstance(again.stored, Job) and again.stored.state == "RUNNING"
    # Callers of the old setup(), which returned the stored Job, read the same fields.
    assert (again.state, again.version, again.acted_on) == ("RUNNING", 2, [])
    assert again.model_dump(mode="json")["uuid"] == job.uuid
    assert job.job.state == "RUNNING"  # the job as it is now
    with pytest.raises(AttributeError, match="call setup"):
        _ = ManagedPipelineJob(catalog, "newcomer", {"other": 1}).state
    with pytest.raises(AttributeError):
        _ = again.no_such_field


def test_help_shows_flags_as_flags(tmp_path: Path) -> None:
    for command in (("index",), ("verify",), ("job", "list"), ("token", "job")):
        done = run(tmp_path, *command, "--help")
        assert done.returncode == 0, done.stderr
        assert "<bool>" not in done.stdout, done.stdout
        assert "--json " in done.stdout
    assert "--rehash / --no-rehash" in run(tmp_path, "index", "--help").stdout


def test_tables_keep_uuids_and_paths_whole(catalog: Catalog, tmp_path: Path) -> None:
    job = make_job(catalog)
    job.run()
    job.finish()
    folder = catalog.archive_root / job.archive_path.lstrip("/") / "a" / "deeply" / "nested"
    folder.mkdir(parents=True)
    (folder / "spectrum-with-a-rather-long-name.csv").write_text("x\n1\n")
    index_job(catalog, job.uuid, job.token)
    path = f"{job.archive_path}/a/deeply/nested/spectrum-with-a-rather-long-name.csv"
    env = {"CATALOG_DB": catalog.settings.db, "COLUMNS": "60"}
    piped = run(tmp_path, "file", "list", **env)  # stdout is a pipe here
    assert piped.returncode == 0, piped.stderr
    assert path in piped.stdout and job.uuid not in piped.stdout
    listed = run(tmp_path, "job", "list", **env)
    assert job.uuid in listed.stdout
    # On a (narrow) terminal the table fits it, unless --wide.
    terminal = {**env, "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    narrow = run(tmp_path, "job", "list", **terminal)
    assert job.uuid not in narrow.stdout
    visible = re.sub(r"\x1b\[[0-9;]*m", "", narrow.stdout)
    assert max(map(len, visible.splitlines())) <= 60
    wide = run(tmp_path, "--wide", "job", "list", **terminal)
    assert job.uuid in wide.stdout


def test_indexing_announces_totals_and_skips_unchanged(catalog: Catalog) -> None:
    job = make_job(catalog)
    job.run()
    job.finish()
    root = catalog.archive_root / job.archive_path.lstrip("/")
    root.mkdir(parents=True, exist_ok=True)
    for n, size in enumerate((10, 200, 3000)):
        (root / f"{n}.csv").write_bytes(b"x" * size)
    (root / "log.txt").write_bytes(b"not selected")

    calls: list[tuple[str, Any, int]] = []

    class Recorder:
        def __call__(self, path: str, size: int) -> None:
            calls.append(("read", path.rsplit("/", 1)[-1], size))

        def total(self, files: int, size: int) -> None:
            calls.append(("total", files, size))

        def skip(self, files: int, size: int) -> None:
            calls.append(("skip", files, size))

    index_job(catalog, job.uuid, job.token, progress=Recorder())
    assert calls[0] == ("total", 3, 3210)  # before any file is read
    assert sorted(calls[1:]) == [("read", "0.csv", 10), ("read", "1.csv", 200),
                                 ("read", "2.csv", 3000)]
    calls.clear()
    (root / "2.csv").write_bytes(b"y" * 3001)
    index_job(catalog, job.uuid, job.token, progress=Recorder(), accept_changes=True)
    assert calls == [("total", 3, 3211), ("skip", 2, 210), ("read", "2.csv", 3001)]


def test_the_bar_shows_totals_and_the_rate_of_what_was_read() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    with progress_bar("indexing", True, console) as bar:
        assert isinstance(bar, Bar)
        bar.total(3, 3_000_000)
        bar.skip(1, 1_000_000)
        bar("a.csv", 1_000_000)
        task = bar._progress.tasks[0]
        assert str(_FilesColumn().render(task)) == "2/3 files"
        assert (task.completed, task.total) == (2_000_000, 3_000_000)
        assert task.fields["read"] == 1_000_000  # the rate counts only what was read
        bar._progress.refresh()
    assert "2.0/3.0 MB" in out.getvalue()
    with progress_bar("indexing", False, console) as none:
        assert none is None
