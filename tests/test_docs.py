"""Generated documentation, schemas and the README's promises stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import catalog
from catalog import docs
from catalog.config import Settings
from catalog.states import TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted(docs.expected_files(), key=str), ids=lambda p: p.name)
def test_generated_file_is_current(path: Path) -> None:
    expected = docs.expected_files()[path]
    assert path.exists(), f"{path} is missing: run `make docs`"
    assert path.read_text(encoding="utf-8") == expected, f"{path} is stale: run `make docs`"


def test_no_stray_schema_files() -> None:
    generated = {p.name for p in docs.expected_files() if p.parent == docs.SCHEMAS}
    assert {p.name for p in docs.SCHEMAS.glob("*.json")} == generated


def test_readme_diagram_has_every_transition() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for event, sources, dest in TRANSITIONS:
        for source in sources:
            target = dest or source
            line = re.compile(rf"^\s*{source} --> {target}: .*\b{event}\b", re.MULTILINE)
            assert line.search(readme), f"{source} --{event}--> {target} missing from README"


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make run", "make test"]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"


def test_every_setting_documented_and_in_default_config() -> None:
    reference = docs.REFERENCE.read_text(encoding="utf-8")
    config = (ROOT / "config" / "catalog.toml").read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        assert f"`{Settings.env_name(name)}`" in reference
        assert re.search(rf"^{name} = ", config, re.MULTILINE), f"{name} not in config/"
        assert field.description, f"setting {name} has no help text"


def test_default_config_file_matches_defaults(tmp_path: Path) -> None:
    from catalog.config import load_settings

    assert load_settings(ROOT / "config" / "catalog.toml") == Settings()


def test_every_cli_command_documented() -> None:
    reference = docs.REFERENCE.read_text(encoding="utf-8")
    commands = docs.cli_commands()
    assert {"catalog init", "catalog job create", "catalog job event", "catalog token admin",
            "catalog pipeline add"} <= {name for name, _ in commands}
    for name, help_text in commands:
        assert help_text, f"{name} has no help"
        assert f"`{name}`" in reference


def test_public_surface_is_sorted_and_exported() -> None:
    assert catalog.__all__ == sorted(catalog.__all__)
    exported = {n for n in dir(catalog) if not n.startswith("_") and n[0].isupper()}
    assert exported == set(catalog.__all__)
    for name in catalog.__all__:
        assert getattr(catalog, name) is not None
