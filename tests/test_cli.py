"""The ``catalog`` console script, run as a real subprocess on a real SQLite file.

Each invocation costs a Python start-up, so commands are grouped: one module-wide catalog for
the commands that succeed, and one that is only ever sent refused commands (``frozen``) and
must end exactly as it was set up.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.identifiers import UUIDType, typed_uuid, uuid_type
from catalog.tokens import keys_from_env_or_file

SCRIPT = Path(sys.executable).parent / "catalog"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
ARCHIVE_PATH = r"/products/v2/[0-9a-f]{32}/[0-9a-f]{16}/[0-9a-f]{16}"
CREATE_KEYS = {"uuid", "state", "archive_path", "token", "webhook", "created"}
OUTCOME_KEYS = {"uuid", "state", "last_event", "event_id", "duplicate"}


@dataclass
class Result:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def document(self) -> Any:
        """The one JSON document a successful ``--json`` command prints, on one line."""
        assert self.code == 0, (self.args, self.stderr)
        assert self.stdout.endswith("\n") and self.stdout.count("\n") == 1, self.stdout
        return json.loads(self.stdout)

    def error(self) -> dict[str, Any]:
        """The ``{"error": {"code", "message"}}`` a failing ``--json`` command writes to stderr."""
        assert self.code != 0, self.args
        assert self.stdout == "", self.stdout
        assert self.stderr.count("\n") == 1, self.stderr
        body = json.loads(self.stderr)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["message"]
        return dict(body["error"])


class Cli:
    """Runs ``catalog`` in ``cwd`` with ``CATALOG_DB`` pointing at a file there."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.db = f"sqlite:///{cwd}/c.db"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
        self.env["CATALOG_DB"] = self.db

    def __call__(self, *args: str) -> Result:
        done = subprocess.run(
            [str(SCRIPT), *args], cwd=self.cwd, env=self.env, capture_output=True, text=True,
            timeout=60,
        )
        return Result(args, done.returncode, done.stdout, done.stderr)

    def json(self, *args: str) -> Any:
        """``catalog <args> --json`` (the option after the subcommand): its document."""
        return self(*args, "--json").document()

    def json_first(self, *args: str) -> Any:
        """``catalog --json <args>`` (the option before the subcommand): its document."""
        return self("--json", *args).document()

    def human(self, *args: str) -> str:
        """``catalog <args>`` without ``--json``: exit 0 and some output that is not JSON.

        Returned with runs of whitespace made single spaces, as rich wraps long lines.
        """
        result = self(*args)
        assert result.code == 0, (args, result.stderr)
        assert result.stdout.strip() and result.stderr == "", (args, result.stderr)
        if result.stdout.lstrip()[:1] in "{[":
            with pytest.raises(json.JSONDecodeError):
                json.loads(result.stdout)
        return " ".join(result.stdout.split())

    def admin_token(self) -> str:
        return keys_from_env_or_file(self.cwd / ".catalog" / "secret.json").admin_token()


@dataclass
class Setup:
    """A catalog initialised for the module, with one pipeline and one job."""

    cli: Cli
    init: dict[str, Any]
    pipeline: dict[str, Any]
    job: dict[str, Any]
    admin: str


def _set_up(cli: Cli, measurement: str) -> Setup:
    init = cli.json("init")
    pipeline = cli.json("pipeline", "add", "--name", "align", "--version", "1.0",
                        "--component", '{"image": "align:1.0"}')
    job = cli.json("job", "create", "--pipeline", "align", "--data", '{"window": 5}',
                   "--measurement", measurement)
    return Setup(cli, init, pipeline, job, cli.admin_token())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return _set_up(Cli(tmp_path_factory.mktemp("cli")), "measurement.shared.1")


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """Only refused commands are sent here; its job is RUNNING."""
    setup = _set_up(Cli(tmp_path_factory.mktemp("frozen")), "measurement.frozen.1")
    setup.cli.json("job", "event", setup.job["uuid"], "run", "--token", setup.job["token"])
    return setup


@pytest.fixture(scope="module")
def frozen_state(frozen: Setup) -> tuple[Any, Any]:
    """``job show`` of the frozen job and ``job list``, as the CLI printed them once."""
    return frozen.cli.json("job", "show", frozen.job["uuid"]), frozen.cli.json("job", "list")


@pytest.fixture
def frozen_catalog(frozen: Setup) -> Iterator[Catalog]:
    """The frozen catalog opened in this process, to compare states between commands."""
    with Catalog.open(frozen.cli.db) as opened:
        yield opened


def library_state(catalog: Catalog, uuid: str) -> tuple[Any, Any]:
    """What ``job show`` and ``job list`` print, read through the library."""
    return (catalog.get_job(uuid).model_dump(mode="json"),
            {"jobs": catalog.find_jobs().items, "next": None})


# -- commands ---------------------------------------------------------------------------------


def test_init(shared: Setup) -> None:
    cli = shared.cli
    human = cli.human("init")
    again = cli.json_first("init")

    assert shared.init == {"db": cli.db, "archive_root": "archive",
                           "secret_file": ".catalog/secret.json", "secret_created": True}
    assert again == {**shared.init, "secret_created": False}
    assert "kept" in human and "c.db" in human
    secret = cli.cwd / ".catalog" / "secret.json"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (cli.cwd / "archive").is_dir() and (cli.cwd / "c.db").is_file()



@pytest.mark.parametrize("url", ["sqlite:///:memory:", "nonsense:///x.db", "sqlite://"])
def test_init_with_a_database_url_it_refuses_creates_nothing(url: str, tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.env["CATALOG_DB"] = url
    result = cli("--json", "init")
    assert result.code != 0
    assert result.error()["code"] == "configuration_error"
    assert list(tmp_path.iterdir()) == []  # no secret, no archive root, no database

def test_pipeline_add_and_list(shared: Setup) -> None:
    cli = shared.cli
    args = ("pipeline", "add", "--name", "call", "--version", "2.1",
            "--component", '{"image": "call:2.1"}', "--component", '"bcftools"')
    added = cli.json(*args)
    again = cli.json_first(*args)
    human = cli.human("pipeline", "add", "--name", "call", "--version", "3.0")
    listed = cli.json_first("pipeline", "list")
    table = cli.human("pipeline", "list")

    assert {"uuid", "name", "version", "components", "created"} <= set(added)
    assert uuid_type(added["uuid"]) is UUIDType.pipeline
    assert uuid_type(shared.pipeline["uuid"]) is UUIDType.pipeline
    assert (added["name"], added["version"]) == ("call", "2.1")
    assert added["components"] == [{"image": "call:2.1"}, "bcftools"]
    assert added["created_now"] is True
    assert again == {**added, "created_now": False}
    assert "call" in human and "added" in human
    assert set(listed) == {"pipelines", "next"} and listed["next"] is None
    rows = [(p["name"], p["uuid"]) for p in listed["pipelines"]]
    assert rows == sorted(rows)  # ordered by (name, uuid)
    assert sorted((p["name"], p["version"]) for p in listed["pipelines"]) == [
        ("align", "1.0"), ("call", "2.1"), ("call", "3.0")
    ]
    assert "align" in table and "call" in table


def test_job_create(shared: Setup) -> None:
    cli = shared.cli
    args = ("job", "create", "--pipeline", "align", "--data", '{"window": 7, "method": "median"}',
            "--measurement", "measurement.lab.2", "--measurement", "measurement.lab.1",
            "--sample", "sample.lab.7", "--experiment", "experiment.lab.3",
            "--observation", "observation.chime.9",
            "--archive-pattern", '{"patterns": ["\\\\.fits$"], "level": 1}',
            "--product-pattern", '{"patterns": ["\\\\.png$"], "derived_from": ["raw"]}')
    created = cli.json(*args)
    again = cli.json_first(*args)
    shown = cli.json("job", "show", created["uuid"])
    instanced = cli.json("job", "create", "--pipeline", shared.pipeline["uuid"],
                         "--data", '{"window": 8}', "--instanced", "--session", "night-1")
    human = cli.human("job", "create", "--pipeline", "align", "--data", '{"window": 9}')

    assert set(created) == CREATE_KEYS
    assert uuid_type(created["uuid"]) is UUIDType.pipelinejob
    assert (created["state"], created["created"]) == ("CREATED", True)
    assert HEX64.match(created["token"])
    assert created["webhook"] == (
        f"http://127.0.0.1:8000/jobs/{created['uuid']}/events?token={created['token']}"
    )
    assert re.fullmatch(ARCHIVE_PATH, created["archive_path"])
    assert again == {**created, "created": False}
    assert shown["child_of"] == sorted(
        typed_uuid(kind, name) for kind, name in [
            (UUIDType.measurement, "measurement.lab.1"),
            (UUIDType.measurement, "measurement.lab.2"),
            (UUIDType.sample, "sample.lab.7"),
            (UUIDType.experiment, "experiment.lab.3"),
            (UUIDType.observation, "observation.chime.9"),
        ]
    )
    assert sorted(u[:3] for u in shown["child_of"]) == ["102", "103", "104", "104", "126"]
    assert shown["data"] == {"window": 7, "method": "median"}
    assert shown["archive_patterns"][0]["patterns"] == [r"\.fits$"]
    assert shown["archive_patterns"][0]["level"] == "1"
    assert shown["product_patterns"][0]["derived_from"] == ["raw"]
    assert [e["name"] for e in shown["history"]] == ["create"]
    assert instanced["created"] is True
    assert re.fullmatch(ARCHIVE_PATH + r"/night-1-\d{8}T\d{6}Z", instanced["archive_path"])
    assert "created: True" in human and "CREATED" in human


def test_job_show_and_list(shared: Setup) -> None:
    cli = shared.cli
    uuid = shared.job["uuid"]
    shown = cli.json("job", "show", uuid)
    table = cli.human("job", "show", uuid)
    filtered = cli.json_first("job", "list", "--state", "created", "--pipeline", "align",
                              "--child-of", "measurement.shared.1", "--limit", "5")
    by_uuid = cli.json("job", "list", "--child-of",
                       typed_uuid(UUIDType.measurement, "measurement.shared.1"))
    human = cli.human("job", "list")

    assert (shown["uuid"], shown["state"], shown["version"]) == (uuid, "CREATED", 1)
    assert shown["pipeline_uuid"] == shared.pipeline["uuid"]
    assert shown["archive_path"] == shared.job["archive_path"]
    assert [(e["name"], e["state"]) for e in shown["history"]] == [("create", "CREATED")]
    assert "CREATED" in table and "create" in table
    assert set(filtered) == {"jobs", "next"} and filtered["next"] is None
    assert [j["uuid"] for j in filtered["jobs"]] == [uuid]
    assert "history" not in filtered["jobs"][0]
    assert by_uuid == filtered
    assert "jobs" in human


def test_job_list_pages_until_next_is_null(shared: Setup) -> None:
    cli = shared.cli
    everything = cli.json("job", "list")
    for window in range(100, 103 - len(everything["jobs"])):  # when run on its own
        cli.json("job", "create", "--pipeline", "align", "--data", f'{{"window": {window}}}')
        everything = cli.json("job", "list")
    assert everything["next"] is None and len(everything["jobs"]) >= 3

    pages, cursor = [], None
    while True:
        page = cli.json("job", "list", "--limit", "2", *(["--cursor", cursor] if cursor else []))
        pages.append([job["uuid"] for job in page["jobs"]])
        cursor = page["next"]
        if cursor is None:
            break
        assert len(page["jobs"]) == 2

    assert [uuid for page in pages for uuid in page] == [j["uuid"] for j in everything["jobs"]]
    assert len(pages) == (len(everything["jobs"]) + 1) // 2


def test_job_event_flow(shared: Setup) -> None:
    cli = shared.cli
    job = cli.json("job", "create", "--pipeline", "align", "--data", '{"events": true}')
    uuid, token = job["uuid"], job["token"]

    run = cli.json("job", "event", uuid, "run", "--token", token, "--data", '{"host": "n1"}',
                   "--event-id", "slurm-1")
    update = cli.json_first("job", "event", uuid, "update", "--token", token,
                            "--data", '{"progress": 0.5}', "--event-id", "upd-1")
    replay = cli.json("job", "event", uuid, "update", "--token", token,
                      "--data", '{"progress": 0.9}', "--event-id", "upd-1")
    human = cli.human("job", "event", uuid, "finish", "--token", token)
    shown = cli.json("job", "show", uuid)

    assert set(run) == OUTCOME_KEYS
    assert run == {"uuid": uuid, "state": "RUNNING", "last_event": "run",
                   "event_id": "slurm-1", "duplicate": False}
    assert update == {**run, "last_event": "update", "event_id": "upd-1"}
    assert replay == {**update, "duplicate": True}
    assert "FINISHED" in human
    assert (shown["state"], shown["last_event"], shown["version"]) == ("FINISHED", "finish", 4)
    history = shown["history"]
    assert [(e["name"], e["state"], e["source"]) for e in history] == [
        ("create", "CREATED", "cli"), ("run", "RUNNING", "cli"), ("update", "RUNNING", "cli"),
        ("finish", "FINISHED", "cli"),
    ]
    assert [e["event_id"] for e in history[1:3]] == ["slurm-1", "upd-1"]
    assert history[1]["data"] == {"host": "n1"}
    assert history[2]["data"] == {"progress": 0.5}  # the replay changed nothing


def test_token_delete_and_audit(shared: Setup) -> None:
    cli = shared.cli
    token = cli.json("token", "admin")
    human_token = cli.human("token", "admin").strip()
    doomed = cli.json("job", "create", "--pipeline", "align", "--data", '{"doomed": 1}')
    also_doomed = cli.json("job", "create", "--pipeline", "align", "--data", '{"doomed": 2}')

    deleted = cli.json("job", "delete", doomed["uuid"], "--token", shared.admin)
    human = cli.human("job", "delete", also_doomed["uuid"], "--token", shared.admin)
    audit = cli.json_first("job", "audit")
    table = cli.human("job", "audit")

    assert token == {"token": shared.admin} and HEX64.match(shared.admin)
    assert human_token == shared.admin
    assert deleted == {"uuid": doomed["uuid"], "deleted": True}
    assert also_doomed["uuid"] in human
    assert set(audit) == {"audit"}
    assert [(e["job_uuid"], e["name"], e["code"], e["source"]) for e in audit["audit"][:2]] == [
        (also_doomed["uuid"], "delete", "deleted", "cli"),
        (doomed["uuid"], "delete", "deleted", "cli"),
    ]
    assert "deleted" in table
    with Catalog.open(cli.db) as catalog:
        remaining = {job["uuid"] for job in catalog.find_jobs(limit=1000).items}
    assert doomed["uuid"] not in remaining and also_doomed["uuid"] not in remaining
    assert shared.job["uuid"] in remaining


def test_demo(shared: Setup) -> None:
    first = shared.cli.json("demo")
    human = shared.cli.human("demo")

    steps = {step["step"]: step["result"] for step in first["steps"]}
    assert steps["event finish"] == "-> FINISHED"
    assert steps["replayed event_id demo-run"].startswith("duplicate=True")
    assert "not allowed" in steps["late run refused"]
    assert "existing job returned unchanged" in human  # the second run finds the first's job


# -- errors ----------------------------------------------------------------------------------

# Placeholders filled from the frozen catalog: JOB (RUNNING), TOKEN (its token), ADMIN,
# PIPELINE (a pipeline UUID where a job UUID is expected).
UNKNOWN_JOB = typed_uuid(UUIDType.pipelinejob, "never created")
# (id, arguments, --json?, exit code, error code or a text the human message contains)
ERRORS: list[tuple[str, list[str], bool, int, str]] = [
    ("event-bad-json", ["job", "event", "JOB", "update", "--token", "TOKEN", "--data", "{"],
     True, 2, "invalid_data"),
    ("event-nan", ["job", "event", "JOB", "update", "--token", "TOKEN", "--data", '{"x": NaN}'],
     True, 2, "invalid_data"),
    ("event-data-list", ["job", "event", "JOB", "update", "--token", "TOKEN", "--data", "[1]"],
     True, 2, "schema_violation"),
    ("create-nan", ["job", "create", "--pipeline", "align", "--data", '{"x": NaN}'],
     True, 2, "invalid_data"),
    ("create-data-list", ["job", "create", "--pipeline", "align", "--data", "[1]"],
     True, 2, "schema_violation"),
    ("unknown-job", ["job", "event", UNKNOWN_JOB, "run", "--token", "ADMIN"],
     True, 4, "job_not_found"),
    ("unknown-job-human", ["job", "show", UNKNOWN_JOB], False, 4, "no job"),
    ("malformed-uuid", ["job", "event", "not-a-uuid", "run", "--token", "ADMIN"],
     True, 2, "malformed_uuid"),
    ("wrong-uuid-type", ["job", "show", "PIPELINE"], True, 2, "wrong_uuid_type"),
    ("wrong-token", ["job", "event", "JOB", "finish", "--token", "0" * 64],
     True, 3, "token_invalid"),
    ("missing-token", ["job", "event", "JOB", "finish"], True, 3, "token_required"),
    ("admin-event-job-token", ["job", "event", "JOB", "reset", "--token", "TOKEN"],
     True, 3, "admin_required"),
    ("delete-job-token", ["job", "delete", "JOB", "--token", "TOKEN"],
     True, 3, "admin_required"),
    ("illegal-event", ["job", "event", "JOB", "create", "--token", "TOKEN"],
     True, 5, "event_not_allowed"),
    ("unknown-event", ["job", "event", "JOB", "explode", "--token", "TOKEN"],
     True, 2, "unknown_event"),
    ("missing-argument", ["job", "event"], True, 2, "usage"),
    ("missing-argument-human", ["job", "event", "JOB"], False, 2, "Missing argument"),
    ("archive-path-escapes",
     ["job", "create", "--pipeline", "align", "--data", '{"p": 1}', "--archive-path", "/../x"],
     True, 2, "unsafe_path"),
    ("unknown-pipeline", ["job", "create", "--pipeline", "no-such-pipeline"],
     True, 4, "pipeline_not_found"),
]


def _fill(setup: Setup, args: list[str]) -> list[str]:
    values = {"JOB": setup.job["uuid"], "TOKEN": setup.job["token"], "ADMIN": setup.admin,
              "PIPELINE": setup.pipeline["uuid"]}
    return [values.get(arg, arg) for arg in args]


@pytest.mark.parametrize(
    "args, json_, exit_code, expected",
    [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS],
)
def test_refused_command(
    frozen: Setup, frozen_state: tuple[Any, Any], frozen_catalog: Catalog, args: list[str],
    json_: bool, exit_code: int, expected: str,
) -> None:
    cli = frozen.cli
    before = library_state(frozen_catalog, frozen.job["uuid"])
    assert before == frozen_state
    filled = _fill(frozen, args)

    if json_:  # --json before the subcommand for some cases, after it for the others
        result = cli("--json", *filled) if len(args) % 2 else cli(*filled, "--json")
        error = result.error()
        assert (result.code, error["code"]) == (exit_code, expected), error
        message = error["message"]
    else:
        result = cli(*filled)
        assert (result.code, result.stdout) == (exit_code, "")
        with pytest.raises(json.JSONDecodeError):
            json.loads(result.stderr)
        message = " ".join(result.stderr.split())  # rich wraps long lines
        assert expected in message

    assert frozen.job["token"] not in message and frozen.admin not in message
    if expected == "event_not_allowed":
        assert "RUNNING" in message and "allowed events: cancel, fail, finish" in message
    assert library_state(frozen_catalog, frozen.job["uuid"]) == before


def test_refused_commands_left_the_catalog_unchanged(
    frozen: Setup, frozen_state: tuple[Any, Any]
) -> None:
    """After all the refusals above, ``job show`` and ``job list`` print what they did before."""
    cli = frozen.cli
    assert (cli.json("job", "show", frozen.job["uuid"]), cli.json("job", "list")) == frozen_state
    shown = frozen_state[0]
    assert [e["name"] for e in shown["history"]] == ["create", "run"]
    assert (shown["state"], shown["version"]) == ("RUNNING", 2)
    assert [j["uuid"] for j in frozen_state[1]["jobs"]] == [frozen.job["uuid"]]

    audit = cli.json("job", "audit", frozen.job["uuid"])["audit"]
    assert {"token_invalid", "token_required", "admin_required", "event_not_allowed",
            "unknown_event"} <= {entry["code"] for entry in audit}
    assert all(entry["source"] == "cli" for entry in audit)


def test_event_refused_for_its_data_is_audited(
    frozen: Setup, frozen_catalog: Catalog
) -> None:
    """Every event received is recorded, refused ones in the audit log (DESIGN §4).

    Data that is JSON but not an object must reach the catalog and be refused (and audited)
    there, as through the library, not be turned away by the CLI alone.
    """
    audited = len(frozen_catalog.audit_log(frozen.job["uuid"]))
    result = frozen.cli("--json", "job", "event", frozen.job["uuid"], "update",
                        "--token", frozen.job["token"], "--data", '["not", "an", "object"]')

    assert result.error()["code"] == "schema_violation"
    audit = frozen_catalog.audit_log(frozen.job["uuid"])
    assert len(audit) == audited + 1
    assert (audit[0].name, audit[0].code, audit[0].source) == ("update", "schema_violation", "cli")


@pytest.mark.parametrize("given", ["[/x]", "[red]nope[/red]", "[bold]" + "n" * 50])
def test_what_the_user_gave_is_printed_as_is_never_as_markup(frozen: Setup, given: str) -> None:
    """Square brackets are Rich markup: an error, a table cell, a title must print them as
    text (a closing tag "[/x]" nobody opened made `job audit` crash with a traceback), and an
    error is one line however long, as its JSON message is."""
    cli, uuid = frozen.cli, frozen.job["uuid"]
    shown = cli("job", "show", given)
    assert (shown.code, shown.stdout, shown.stderr) == (2, "", f"error: {given!r} is not a UUID\n")
    sent = cli("job", "event", uuid, given, "--token", frozen.job["token"])
    assert sent.code == 2 and sent.stderr.startswith(f"error: unknown event {given!r}; known")
    assert sent.stderr.count("\n") == 1
    audit = cli("job", "audit", uuid)  # the refused event is audited under its name
    assert audit.code == 0 and audit.stderr == ""
    assert given[:10] in audit.stdout


def test_tables_print_cells_and_titles_as_text() -> None:
    from rich.console import Console

    from catalog.cli import _table

    console = Console(record=True, width=200)
    console.print(_table([{"path": "/a/[draft]/x.csv"}, {"path": "/b/[/x]"},
                          {"path": "/c/[bold]c[/bold]"}], ["path"], "files in [/x]"))
    text = console.export_text()
    assert all(part in text for part in ("/a/[draft]/x.csv", "/b/[/x]", "/c/[bold]c[/bold]",
                                         "files in [/x]"))
