"""The README as a newcomer meets it: its set-up commands, its shell session and its Python
example run as written, top to bottom, in a fresh folder, and answer what the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def fenced(section: str, language: str) -> str:
    """The first ```language block after the heading ``section``."""
    start = README.index(f"\n{section}\n")
    match = re.compile(rf"^```{language}\n(.*?)^```$", re.MULTILINE | re.DOTALL).search(
        README, start)
    assert match, f"no {language} block under {section}"
    return match.group(1)


def session_steps(block: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each ``$ `` line (continued by a backslash)."""
    steps: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"output before any command: {line!r}"
        command = line[2:]
        while command.endswith("\\"):
            i += 1
            command = command + "\n" + lines[i]  # the shell joins them
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        steps.append((command, output))
    return steps


def expected_pattern(line: str) -> re.Pattern[str]:
    """The README's line as a pattern: an elided token (``b4764582…``) stands for any token,
    and a date for any date (both differ on every run); everything else is literal."""
    volatile = re.compile(r"[0-9a-f]+…|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
    parts, last = [], 0
    for match in volatile.finditer(line):
        parts.append(re.escape(line[last:match.start()]))
        parts.append("[0-9a-f]{64}" if match.group().endswith("…")
                     else r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
        last = match.end()
    parts.append(re.escape(line[last:]))
    return re.compile("".join(parts))


def fresh_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "80"  # as a newcomer's terminal; the output is a pipe all the same
    return env


def run_session(folder: Path) -> list[tuple[str, list[str], str, int]]:
    """Run the README's session in one shell (its variables carry over, as in a terminal),
    each command's stdout and stderr captured; (command, expected, got, exit code)."""
    steps = session_steps(fenced("## A short session", "console"))
    script = ["set -u"]
    for number, (command, _) in enumerate(steps):
        script.append(f"{{ {command}\n}} > .out.{number} 2>&1; echo $? > .rc.{number}")
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=folder, env=fresh_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = []
    for number, (command, expected) in enumerate(steps):
        got = (folder / f".out.{number}").read_text(encoding="utf-8")
        code = int((folder / f".rc.{number}").read_text())
        results.append((command, expected, got, code))
    return results


def test_readme_starts_with_the_two_setup_commands() -> None:
    first = re.search(r"^```(\w*)\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)
    assert first is not None and first.group(1) == "sh"
    commands = [line.split("#")[0].strip() for line in first.group(2).splitlines()]
    assert commands == ["make run", "make test"]


@pytest.mark.slow
def test_readme_session_runs_as_written_in_a_fresh_folder(tmp_path: Path) -> None:
    results = run_session(tmp_path)
    for command, expected, got, code in results:
        failed = any(line.startswith("error:") for line in expected)
        assert (code != 0) == failed, f"{command!r} exited {code}: {got}"
        got_lines = got.splitlines()
        assert len(got_lines) == len(expected), f"{command!r} printed {got!r}"
        for want, line in zip(expected, got_lines, strict=True):
            assert expected_pattern(want).fullmatch(line), \
                f"{command!r}:\n README: {want}\n    got: {line}"
    # The token came from the command the README names, and the file went where it says.
    assert any(c.startswith("TOKEN=$(catalog token job ") for c, *_ in results)
    table = tmp_path / ("archive/products/v2/10653cd8ac035c76a2859787fa33a9b8/"
                        "eb2daf0089830ca2/0e1569d74cd824b1/table.csv")
    assert table.read_text() == "wavelength,flux\n500,1.25\n"

    # The Python example, run next in the same folder (top to bottom) ...
    example = fenced("## From Python", "python")
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=fresh_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    uuid, archive_path, webhook = done.stdout.split()
    assert webhook.startswith(f"https://catalog.example.org/jobs/{uuid}/events?token=")


@pytest.mark.slow
def test_readme_python_example_runs_in_a_fresh_folder(tmp_path: Path) -> None:
    example = fenced("## From Python", "python")
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=fresh_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".catalog" / "secret.json").exists()
