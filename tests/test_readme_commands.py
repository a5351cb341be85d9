"""The README's `make run` recipe works on a fresh directory, run exactly as the Makefile says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def recipe(target: str) -> list[str]:
    """The shell lines of a Makefile target, with $(BIN) pointing at this interpreter's bin."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.MULTILINE)
    assert match, f"Makefile has no {target} target"
    bin_dir = str(Path(sys.executable).parent)
    return [line.strip().replace("$(BIN)", bin_dir) for line in match.group(1).splitlines()]


@pytest.mark.slow
def test_make_run_recipe_initialises_and_runs_the_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    outputs = []
    for line in recipe("run"):
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert (tmp_path / "catalog.db").is_file()
    assert (tmp_path / ".catalog" / "secret.json").stat().st_mode & 0o077 == 0
    assert "late run refused" in outputs[-1]
    # A second run finds the same catalog and the same job, unchanged.
    again = subprocess.run([str(Path(sys.executable).parent / "catalog"), "--json", "demo"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    steps = {s["step"]: s["result"] for s in json.loads(again.stdout)["steps"]}
    assert "existing job returned unchanged" in steps["job"]
    assert steps["history"] == ["create->CREATED", "run->RUNNING", "update->RUNNING",
                                "finish->FINISHED"]
