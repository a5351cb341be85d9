"""The fixity commands (``index``, ``verify``, ``bag``), thin like the rest of
``catalog.cli``, on the same app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from catalog.cli import JsonOption, TokenOption, _catalog, _emit, _state, app
from catalog.errors import InvalidInput
from catalog.spool import JSONSpool


@app.command()
def index(
    uuid: str,
    token: TokenOption = None,
    rehash: Annotated[bool, typer.Option(help="Re-read files even when unchanged.")] = False,
    fixity: Annotated[bool | None, typer.Option(
        "--fixity/--no-fixity", help="Force sha256 on (or off) for every request.")] = None,
    fail_on_error: Annotated[bool, typer.Option(
        help="Send 'fail' when indexing fails (else the job stays INDEXING).")] = False,
    accept_changes: Annotated[bool, typer.Option(
        help="Take changed content as its record's new version (the old one is kept).")
    ] = False,
    json_: JsonOption = False,
) -> None:
    """Index a finished job's files with fixity checksums (index -> indexed).

    Content that differs from its recorded checksums stays marked changed, the recorded
    checksums the truth, unless --accept-changes is given."""
    from catalog.cli_progress import progress_bar
    from catalog.indexer import index_job

    as_json = json_ or _state.json
    # The records go to a spool (JSON, on disk past a few MiB) or nowhere, not into memory:
    # a tree of a million files is printed without holding a million records.
    with _catalog() as catalog, progress_bar("indexing", not as_json) as progress, \
            JSONSpool() as spool:
        result = index_job(catalog, uuid, token, None, fixity, rehash, fail_on_error, "cli",
                           progress, sink=spool if as_json else _discard,
                           accept_changes=accept_changes)
        if as_json:
            _write_spooled(spool, result.to_dict(), "files")
            return
    summary = (f"{result.uuid}: {result.indexed} file(s) indexed ({result.hashed} hashed, "
               f"{result.unchanged} unchanged) -> {result.state}")
    if result.accepted:
        summary += f"\n{result.accepted} changed file(s) accepted as new versions"
    if result.changed:
        summary += (f"\n{result.changed} file(s) CHANGED since recorded, kept as changed "
                    "(--accept-changes to take the new content): "
                    + "; ".join(result.changed_files[:10]) + ("; ..." if result.changed > 10
                                                               else ""))
    if result.unmatched_requests:
        summary += "\nmatched nothing: " + "; ".join(result.unmatched_requests)
    _emit(None, False, summary)


def _discard(records: list[Any]) -> None:
    """An index sink for when only the counts are shown."""


def _write_spooled(spool: JSONSpool, document: dict[str, Any], key: str) -> None:
    """``_emit``'s JSON line, with the spooled items as ``document[key]``."""
    _, chunks = spool.document(document, key)
    sys.stdout.flush()
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
    out.write(b"\n")
    out.flush()


@app.command()
def verify(
    uuid: Annotated[str | None, typer.Argument(help="Job UUID (or --all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every catalogued file.")] = False,
    older_than: Annotated[str | None, typer.Option(
        help="Only files last checked longer ago than this (90s, 15m, 12h, 7d), oldest first."
    )] = None,
    limit: Annotated[int | None, typer.Option(
        help="With --older-than: at most this many files (default: setting fixity_batch).")
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Re-read files: ok, changed, missing, unreadable, uncatalogued, ignored; exit 1 unless
    all ok (files no index request selects are listed as ignored, not an error)."""
    from catalog.cli_progress import progress_bar
    from catalog.fixity_schedule import parse_duration, verify_oldest
    from catalog.verify import FileVerdict
    from catalog.verify import verify as run_verify

    if (uuid is not None) + all_ + (older_than is not None) != 1:
        raise InvalidInput("give a job UUID, --all or --older-than (one of them)")
    if limit is not None and older_than is None:
        raise InvalidInput("--limit goes with --older-than")
    as_json = json_ or _state.json
    problems: list[FileVerdict] = []  # for people, only what is wrong is listed

    def keep_problems(verdicts: list[FileVerdict]) -> None:
        problems.extend(v for v in verdicts if v.outcome != "ok")

    # Verdicts go to a spool (JSON, on disk past a few MiB) or only the wrong ones are kept.
    with _catalog() as catalog, progress_bar("verifying", not as_json) as progress, \
            JSONSpool() as spool:
        sink = (lambda verdicts: spool(map(vars, verdicts))) if as_json else keep_problems
        if older_than is None:
            report = run_verify(catalog, uuid, progress, sink)
        else:
            report = verify_oldest(catalog, parse_duration(older_than),
                                   catalog.settings.fixity_batch if limit is None else limit,
                                   progress, sink,
                                   "cli").report
        if as_json:
            _write_spooled(spool, report.to_dict(), "files")
    if not as_json:
        lines = [f"{v.outcome:8} {v.path}" + (f" ({', '.join(v.changed)})" if v.changed else "")
                 for v in problems]
        lines += [f"{'error':8} {entry}" for entry in report.unreadable]
        lines += [f"{'new':8} {path} (selected by an index request, not catalogued)"
                  for path in report.uncatalogued]
        lines += [f"{'ignored':8} {path} (no index request selects it)"
                  for path in report.ignored]
        lines += [f"{'skipped':8} {path} (another storage system: not read here)"
                  for path in report.other_storage]
        counts = report.counts()
        skipped = counts.pop("other_storage")
        lines.append(", ".join(f"{n} {k}" for k, n in counts.items())
                     + (f", {skipped} skipped (another storage system)" if skipped else ""))
        _emit(None, False, "\n".join(lines))
    if not report.ok:
        raise SystemExit(1)


@app.command()
def bag(
    uuid: str,
    destination: Annotated[Path, typer.Argument(help="A new directory for the bag.")],
    token: TokenOption = None,
    link: Annotated[bool, typer.Option(
        "--link", help="Hard-link the files from the archive where the filesystem allows "
        "(else copy): no bytes written, but the bag shares the archive's files, so a write "
        "to one is a write to the other. For a bag that is sent on.")] = False,
    json_: JsonOption = False,
) -> None:
    """Export a job's files as a BagIt bag, its manifest the recorded checksums re-verified
    as each file is copied (a file that no longer matches stops it, naming the file)."""
    from catalog.bag import export_bag

    with _catalog() as catalog:
        result = export_bag(catalog, uuid, destination, token, "cli", link=link)
    linked = f", {result.linked} linked" if link else ""
    _emit(result.to_dict(), json_,
          f"{result.path}: bag of {result.files} file(s){linked}, {result.bytes} bytes, "
          f"of {uuid}")
