"""The reactor: messages in, outcomes out; one bad message never stops the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, ManagedPipelineJob
from catalog.errors import SchemaViolation, TokenInvalid
from catalog.reactor import handle_message, process_lines
from catalog.tokens import Keys

KEYS = Keys(b"r" * 32, b"a" * 32)


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS)
    opened.add_pipeline("reactor-test", "1")
    yield opened
    opened.close()


@pytest.fixture
def job(catalog: Catalog) -> ManagedPipelineJob:
    managed = ManagedPipelineJob(catalog, "reactor-test", {"n": 1},
                                 measurement_id="measurement.r.1")
    managed.setup()
    return managed


def test_event_message(catalog: Catalog, job: ManagedPipelineJob) -> None:
    message = {"uuid": job.uuid, "token": job.token, "name": "run", "data": {"host": "n1"},
               "event_id": "m-1"}
    assert handle_message(catalog, message) == {
        "uuid": job.uuid, "state": "RUNNING", "last_event": "run", "event_id": "m-1",
        "duplicate": False,
    }
    assert handle_message(catalog, message)["duplicate"] is True
    history = catalog.get_job(job.uuid).history
    assert [(e.name, e.source, e.data) for e in history] == [
        ("create", "python", {}), ("run", "reactor", {"host": "n1"})]


def test_status_message_uses_the_mapping(catalog: Catalog, job: ManagedPipelineJob) -> None:
    outcome = handle_message(catalog, {"uuid": job.uuid, "token": job.token,
                                       "status": "RUNNING", "mapping": "tapis"})
    assert (outcome["state"], outcome["last_event"]) == ("RUNNING", "run")
    entry = catalog.get_job(job.uuid).history[-1]
    assert entry.data == {"status": "RUNNING", "mapping": "tapis"}


def test_default_token_applies_when_the_message_has_none(
    catalog: Catalog, job: ManagedPipelineJob
) -> None:
    outcome = handle_message(catalog, {"uuid": job.uuid, "name": "run"}, token=job.token)
    assert outcome["state"] == "RUNNING"
    with pytest.raises(TokenInvalid):
        handle_message(catalog, {"uuid": job.uuid, "name": "update", "token": "f" * 64},
                       token=job.token)


@pytest.mark.parametrize(
    "message",
    [
        ["not", "an", "object"],
        {"name": "run"},
        {"uuid": 7, "name": "run"},
        {"uuid": "x", "name": "run", "surprise": 1},
        {"uuid": "x", "status": "", "mapping": "tapis"},
        {"uuid": "x", "status": "RUNNING", "mapping": 3},
        {"uuid": "x", "token": 5, "name": "run"},
    ],
    ids=["array", "no-uuid", "uuid-not-string", "unknown-field", "empty-status",
         "mapping-not-string", "token-not-string"],
)
def test_malformed_messages_are_schema_violations(catalog: Catalog, message: Any) -> None:
    with pytest.raises(SchemaViolation):
        handle_message(catalog, message)


def test_process_lines_continues_past_bad_lines(catalog: Catalog, job: ManagedPipelineJob) -> None:
    lines = [
        json.dumps({"uuid": job.uuid, "token": job.token, "name": "run", "event_id": "a"}),
        "{not json",
        "",
        json.dumps({"uuid": job.uuid, "token": job.token, "name": "index"}),
        json.dumps({"uuid": job.uuid, "token": job.token, "name": "finish", "event_id": "b"}),
    ]
    results = list(process_lines(catalog, lines))
    assert [r["line"] for r in results] == [1, 2, 4, 5]
    assert results[0]["state"] == "RUNNING"
    assert results[1]["error"]["code"] == "invalid_data"
    assert results[2]["error"]["code"] == "event_not_allowed"
    assert "RUNNING" in results[2]["error"]["message"]
    assert results[3]["state"] == "FINISHED"
    assert [e.name for e in catalog.get_job(job.uuid).history] == ["create", "run", "finish"]
    refused = catalog.audit_log(job.uuid)
    assert [(a.name, a.code, a.source) for a in refused] == [
        ("index", "event_not_allowed", "reactor")]


@pytest.mark.slow
def test_cli_reactor_reads_a_file_and_stdin(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = f"sqlite:///{tmp_path}/c.db"
    command = str(Path(sys.executable).parent / "catalog")

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([command, *args], cwd=tmp_path, env=env, input=stdin,
                              capture_output=True, text=True, timeout=60)

    assert cli("init").returncode == 0
    assert cli("pipeline", "add", "--name", "p").returncode == 0
    created = json.loads(cli("--json", "job", "create", "--pipeline", "p").stdout)
    messages = tmp_path / "messages.jsonl"
    messages.write_text(
        json.dumps({"uuid": created["uuid"], "name": "run", "event_id": "r1"}) + "\n"
        + "[broken\n"
        + json.dumps({"uuid": created["uuid"], "name": "update", "event_id": "u1"}) + "\n",
        encoding="utf-8",
    )
    done = cli("reactor", str(messages), "--token", created["token"])
    assert done.returncode == 1  # one message was refused
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r.get("state") or r["error"]["code"] for r in results] == [
        "RUNNING", "invalid_data", "RUNNING"]
    again = cli("reactor", "--token", created["token"], "-",
                stdin=messages.read_text().splitlines()[0] + "\n")
    assert again.returncode == 0
    assert json.loads(again.stdout)["duplicate"] is True
