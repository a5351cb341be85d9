"""The local engine: functions and commands in child process groups, their outputs, timeouts."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog.engines import LocalEngine, Outputs, parse_outputs
from catalog.engines.base import Resources, outputs_of_line
from catalog.engines.local import command_argv

MODULE = '''
import os, subprocess, time

def fine(x):
    return {"x": x}, ["a.csv"], ["b.png"]

def wrong():
    return 42

def leaves_a_child(pid_file):
    child = subprocess.Popen(["sleep", "60"])
    with open(pid_file, "w") as handle:
        handle.write(str(child.pid))
    time.sleep(60)
'''


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory holding modules ``base`` (named as an engine module is) and ``jobs``."""
    (tmp_path / "base.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)  # the child gets the worker's working directory on its path
    yield tmp_path / "run"


def run(work: dict[str, Any], workdir: Path, timeout: int = 30) -> Any:
    started = LocalEngine().start(work, workdir, timeout)
    assert started.wait(timeout + 10)
    return started.result()


def test_a_function_in_a_module_named_like_an_engine_module(workdir: Path) -> None:
    result = run({"function": "base.fine", "parameters": {"x": 1}}, workdir)
    assert result.error is None
    assert result.outputs == Outputs({"x": 1}, ["a.csv"], ["b.png"])


def test_a_function_returning_the_wrong_thing_is_an_error(workdir: Path) -> None:
    result = run({"function": "base.wrong"}, workdir)
    assert result.error == ("ValueError: returned a int: expected a dict of results or "
                            "(results, products, plots)")
    missing = run({"function": "base.nothing_here"}, workdir)
    assert missing.error is not None and "nothing_here" in missing.error


def test_a_timeout_kills_the_whole_process_group(workdir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    started = time.monotonic()
    result = run({"function": "base.leaves_a_child", "parameters": {"pid_file": str(pid_file)}},
                 workdir, timeout=2)
    assert time.monotonic() - started < 10
    assert (result.timed_out, result.error) == (True, "timed out after 2 s")
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _running(grandchild):
        assert time.monotonic() < deadline, "the work's own child outlived the timeout"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split()[2] != "Z"


def test_a_command_reports_its_last_line_or_its_exit_code(workdir: Path) -> None:
    said = run({"command": ["python3", "-c", "print('hi'); print(({'n': 2}, ['p'], []))"]},
               workdir)
    assert said.outputs == Outputs({"n": 2}, ["p"], [])
    plain = run({"command": "echo hello"}, workdir)
    assert plain.outputs == Outputs({"returncode": 0})
    assert (workdir / "stdout.txt").read_text() == "hello\n"
    failed = run({"command": ["sh", "-c", "echo oops >&2; exit 3"]}, workdir)
    assert failed.error == "the command exited with code 3"
    assert (workdir / "stderr.txt").read_text() == "oops\n"


@pytest.mark.parametrize("value", ["__import__('os').system('true')", "[1, 2]", "{'a': {1}}",
                                   "({}, 'x', [])", "{'nan': float('nan')}", "{'b': b'x'}"])
def test_a_last_line_is_never_run_as_code_and_must_be_json_results(value: str) -> None:
    assert outputs_of_line(value) is None


@pytest.mark.parametrize(("command", "argv"), [
    (["a", "b c"], ["a", "b c"]),
    ("a 'b c'", ["a", "b c"]),
    (["prog --flag"], ["prog", "--flag"]),  # workflow-core's one-string form
])
def test_command_argv(command: Any, argv: list[str]) -> None:
    assert command_argv(command) == argv


@pytest.mark.parametrize("command", [[], "", [1], {"a": 1}])
def test_bad_commands_are_refused(command: Any) -> None:
    with pytest.raises(ValueError):
        command_argv(command)


def test_parse_outputs() -> None:
    assert parse_outputs(None) == Outputs()
    assert parse_outputs(({"a": 1}, [], ["p.png"])) == Outputs({"a": 1}, [], ["p.png"])
    with pytest.raises(ValueError):
        parse_outputs(({"a": 1}, "x", []))


def test_kill_ends_the_group_at_once_and_says_why(workdir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    started = LocalEngine().start(
        {"function": "base.leaves_a_child", "parameters": {"pid_file": str(pid_file)}},
        workdir, 60)
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the work never started its child"
        time.sleep(0.05)
    began = time.monotonic()
    started.kill("cancelled by a user")
    assert time.monotonic() - began < 5
    result = started.result()
    assert (result.killed, result.timed_out, result.error) == (True, False,
                                                                 "cancelled by a user")
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _running(grandchild):
        assert time.monotonic() < deadline, "the work's own child outlived the kill"
        time.sleep(0.05)


def test_a_command_that_does_not_exist_is_refused_before_anything_runs(workdir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program-here"):
        LocalEngine().start({"command": ["no-such-program-here", "x"]}, workdir, 10)


@pytest.mark.parametrize(("asked", "expected"), [
    ({}, Resources(1, None, 30)),
    ({"resources": {"cores": 2, "memory": "2G", "time": 90}}, Resources(2, 2048, 90)),
    ({"resources": {"memory": 300}}, Resources(1, 300, 30)),
    ({"resources": {"memory": "512K"}}, Resources(1, 1, 30)),
    ({"resources": {"time": "1h"}}, Resources(1, None, 3600)),
    ({"resources": {"time": "0:01:30", "cores": 3}}, Resources(3, None, 90)),
])
def test_resources_are_read_from_the_job(asked: dict[str, Any], expected: Resources) -> None:
    assert Resources.of(asked, 30) == expected


@pytest.mark.parametrize(("asked", "message"), [
    ({"resources": []}, "not a JSON object"),
    ({"resources": {"gpus": 1}}, "unknown resources"),
    ({"resources": {"cores": 0}}, "resources.cores"),
    ({"resources": {"cores": True}}, "resources.cores"),
    ({"resources": {"time": "soon"}}, "resources.time"),
    ({"resources": {"time": 0}}, "resources.time"),
    ({"resources": {"memory": "lots"}}, "resources.memory"),
    ({"resources": {"memory": -5}}, "resources.memory"),
])
def test_bad_resources_are_refused_saying_which(asked: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Resources.of(asked, 30)
