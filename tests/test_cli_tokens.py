"""Tokens for the CLI without putting them on a command line (``ps`` shows those to all)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import Cli, Setup, _set_up


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return _set_up(Cli(tmp_path_factory.mktemp("tokens")), "measurement.tokens.1")


def test_the_token_from_the_environment(setup: Setup) -> None:
    cli, job = setup.cli, setup.job
    cli.env["CATALOG_TOKEN"] = job["token"]
    try:
        outcome = cli.json("job", "event", job["uuid"], "update")
    finally:
        del cli.env["CATALOG_TOKEN"]
    assert outcome["last_event"] == "update"


def test_the_token_from_a_file(setup: Setup, tmp_path: Path) -> None:
    cli, job = setup.cli, setup.job
    token_file = tmp_path / "token"
    token_file.write_text(job["token"] + "\n")
    token_file.chmod(0o600)
    outcome = cli.json("--token-file", str(token_file), "job", "event", job["uuid"], "update")
    assert outcome["last_event"] == "update"
    cli.env["CATALOG_TOKEN_FILE"] = str(token_file)
    try:
        assert cli.json("job", "event", job["uuid"], "update")["last_event"] == "update"
    finally:
        del cli.env["CATALOG_TOKEN_FILE"]


def test_an_explicit_token_wins_over_the_file(setup: Setup, tmp_path: Path) -> None:
    cli, job = setup.cli, setup.job
    token_file = tmp_path / "token"
    token_file.write_text(setup.admin + "\n")
    refused = cli("--json", "--token-file", str(token_file), "job", "event", job["uuid"],
                  "reset", "--token", job["token"])
    assert refused.error()["code"] == "admin_required"


@pytest.mark.parametrize("content, message", [
    (None, "is unreadable"), ("", "must hold one token"), ("a\nb\n", "must hold one token")])
def test_a_bad_token_file_is_a_clear_error(setup: Setup, tmp_path: Path, content: str | None,
                                           message: str) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    refused = setup.cli("--json", "--token-file", str(token_file), "job", "event",
                        setup.job["uuid"], "update")
    assert refused.code == 2
    assert message in refused.error()["message"] and str(token_file) in refused.error()["message"]
