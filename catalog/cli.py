"""The ``catalog`` command line: thin commands over the library.

Each command opens the catalog, makes one library call and renders the result: one JSON
document on stdout with ``--json``, a short human rendering otherwise. Errors go to stderr
(a JSON ``{"error": {"code", "message"}}`` document with ``--json``) with a non-zero exit code.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from catalog.catalog import Catalog
from catalog.config import load_settings
from catalog.errors import CatalogError, CatalogNotFound, InvalidInput
from catalog.identifiers import loads_json
from catalog.lineage import DEFAULT_LIMIT, MAX_LIMIT
from catalog.store import sqlite_path
from catalog.tokens import keys_from_env_or_file

# Exit codes by HTTP status class of the error; documented in the README.
EXIT_CODES = {400: 2, 422: 2, 401: 3, 403: 3, 404: 4, 409: 5, 410: 4}
FIXITY_SHOWN = 100  # checks "file show" lists (the API pages through the rest)

# Plain help (click's layout): Typer's Rich help shows every flag as "--json <bool>", as if
# it took a value, --help included.
app = typer.Typer(help="Provenance and data-catalog job manager.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
pipeline_app = typer.Typer(help="Register and list pipelines.", no_args_is_help=True)
job_app = typer.Typer(help="Create, inspect and drive jobs.", no_args_is_help=True)
token_app = typer.Typer(help="Show tokens.", no_args_is_help=True)
file_app = typer.Typer(help="Look up indexed file records.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(job_app, name="job")
app.add_typer(token_app, name="token")
app.add_typer(file_app, name="file")


class _State:
    db: str | None = None
    json: bool = False
    token_file: Path | None = None
    wide: bool = False


def _token_or_file(token: str | None) -> str | None:
    """``--token`` (or ``CATALOG_TOKEN``), else the token in ``--token-file``: a token on the
    command line is visible to every user of the machine (``ps``), one in a file is not."""
    if token or _state.token_file is None:
        return token
    try:
        text = _state.token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"token file {_state.token_file} is unreadable: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    if not text or len(text.splitlines()) != 1:
        raise InvalidInput(f"token file {_state.token_file} must hold one token on one line")
    return text


_state = _State()
JsonOption = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document.")]
TokenOption = Annotated[
    str | None, typer.Option(
        "--token", envvar="CATALOG_TOKEN", callback=_token_or_file,
        help="Job or admin token; better CATALOG_TOKEN or 'catalog --token-file PATH' (a "
        "command line is visible to other users).")
]


@app.callback()
def _main(
    db: Annotated[str | None, typer.Option(
        "--db", envvar="CATALOG_DB", help="Catalog URL (default: sqlite:///catalog.db).")] = None,
    json_: JsonOption = False,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", envvar="CATALOG_TOKEN_FILE",
        help="File holding the job or admin token, used when --token and CATALOG_TOKEN "
        "are not given.")] = None,
    wide: Annotated[bool, typer.Option(
        "--wide", help="Tables as wide as their cells (UUIDs and paths whole), even on a "
        "narrow terminal; always so when stdout is not a terminal.")] = False,
) -> None:
    _state.db = db
    _state.wide = wide
    _state.json = _state.json or json_
    _state.token_file = token_file


def _fail(code: str, message: str, exit_code: int) -> NoReturn:
    if _state.json:
        sys.stderr.write(json.dumps({"error": {"code": code, "message": message}}) + "\n")
    else:
        # The message names what the user gave ("[draft]/x.csv", "[/x]"): never markup, and
        # one line however long, as the JSON's message is.
        Console(stderr=True).print(Text.assemble(("error", "bold red"), ": ", message),
                                   highlight=False, soft_wrap=True)
    raise SystemExit(exit_code)


def _open_existing(**overrides: Any) -> Catalog:
    """The catalog the command names. A SQLite one must exist (``catalog init`` makes it): a
    command run in the wrong folder is told so, not answered from a new, empty catalog that
    it would leave behind."""
    url = load_settings(db=_state.db).db
    path = sqlite_path(url)
    if path is not None and path != ":memory:" and not os.path.exists(path):
        raise CatalogNotFound(
            f"no catalog at {url} ({os.path.abspath(path)} does not exist): 'catalog init' "
            "creates it; --db or CATALOG_DB names another", db=url)
    return Catalog.open(_state.db, **overrides)


@contextmanager
def _catalog() -> Iterator[Catalog]:
    catalog = _open_existing()
    try:
        yield catalog
    finally:
        catalog.close()


def _emit(document: Any, json_: bool, human: Any = None) -> None:
    if json_ or _state.json:
        sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    elif isinstance(human, str):
        # Plain text as it is: no wrapping (UUIDs stay whole) and no markup ([x] in paths).
        Console().print(human, markup=False, highlight=False, soft_wrap=True)
    elif isinstance(human, Table):
        _print_table(human)
    elif human is not None:
        Console().print(human)
    else:
        Console().print_json(data=document)


def _print_table(table: Table) -> None:
    """On a terminal, fitted to its width (unless --wide); otherwise (piped, redirected) or
    with --wide, every cell whole on one line, so that UUIDs and paths can be copied or cut:
    Rich would otherwise fold them at 80 columns."""
    console = Console()
    if _state.wide or not console.is_terminal:
        for column in table.columns:
            column.no_wrap = True
            column.overflow = "ignore"
        console = Console(width=console.measure(table, options=console.options.update(
            max_width=1 << 20)).maximum, force_terminal=console.is_terminal or None)
    console.print(table)


def _json_arg(text: str | None, name: str) -> Any:
    return None if text is None else loads_json(text, name)


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> Table:
    """A table of ``rows``; its cells and title are text as is (a path "[draft]/x.csv", an
    event named "[/x]"), never Rich markup."""
    table = Table(title=Text(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(str(row.get(c, ""))) for c in columns))
    return table


# -- commands -------------------------------------------------------------------------------


@app.command()
def init(json_: JsonOption = False) -> None:
    """Create the catalog: secret (mode 0600), database schema and archive root."""
    catalog, created = Catalog.init(_state.db)
    settings = catalog.settings
    catalog.close()
    _emit({"db": settings.db, "archive_root": settings.archive_root,
           "secret_file": settings.secret_file, "secret_created": created}, json_,
          f"catalog ready at {settings.db} (archive root {settings.archive_root}; secret "
          f"{'created' if created else 'kept'} in {settings.secret_file})")


@app.command()
def demo(json_: JsonOption = False) -> None:
    """Run a short end-to-end demonstration, creating the catalog first where there is none.

    It says what it did: the catalog (secret created or kept, as 'catalog init'), a pipeline
    and a job, the events sent to it, an event replayed and one refused."""
    from catalog.demo import run_demo

    # In a fresh folder the demo first does what 'catalog init' does (an existing secret and
    # database are kept as they are), rather than failing half-way for want of a secret.
    catalog, created = Catalog.init(_state.db)
    try:
        steps = run_demo(catalog, initialised=created)
    finally:
        catalog.close()
    _emit({"steps": steps}, json_, "\n".join(f"• {s['step']}: {s['result']}" for s in steps))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    base_url: Annotated[str | None, typer.Option(
        envvar="CATALOG_BASE_URL", help="Public URL used in webhooks.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    qcg_address: Annotated[str | None, typer.Option(
        help="Also serve QCG-PilotJob's manager protocol (ZeroMQ) at tcp://HOST:PORT "
        "(port 0: any free one).")] = None,
    qcg_allow_remote: Annotated[bool, typer.Option(
        help="Allow --qcg-address off the loopback interface (its protocol carries no "
        "credentials).")] = False,
    qcg_cores: Annotated[int | None, typer.Option(
        help="Cores the QCG surface advertises and runs jobs on (default: this machine's).")
    ] = None,
) -> None:
    """Serve the webhooks and the JSON API (FastAPI on uvicorn)."""
    from catalog.web import serve as run_server

    catalog = _open_existing(base_url=base_url or f"http://{host}:{port}")
    _ = catalog.keys  # fail now, not on the first request, when there is no secret
    qcg = None
    if qcg_address is not None:
        from catalog.compat.qcg_wire import QcgServer

        try:
            qcg = QcgServer(catalog, qcg_address, qcg_cores or os.cpu_count() or 1,
                            qcg_allow_remote).start()
        except CatalogError:
            catalog.close()
            raise
        Console(stderr=True).print(f"QCG-PilotJob manager protocol on {qcg.address}",
                                   markup=False, highlight=False)
    Console(stderr=True).print(
        f"catalog serving {catalog.settings.db} on http://{host}:{port} "
        f"(admin token: `catalog token admin`; secret in {catalog.settings.secret_file})",
        markup=False, highlight=False, soft_wrap=True)
    try:
        run_server(catalog, host, port, log_level)
    finally:
        if qcg is not None:
            qcg.stop()
        catalog.close()


@app.command()
def reactor(
    source: Annotated[str, typer.Argument(help="File of JSON lines, or - for stdin.")] = "-",
    token: TokenOption = None,
) -> None:
    """Apply JSON-lines messages (events, status callbacks, OpenLineage RunEvents).

    Writes one JSON result line per message; a bad line yields an error line and processing
    continues. Exits 1 when any message was refused.
    """
    from catalog.reactor import dumps, process_lines

    failed = False
    with _catalog() as catalog:
        stream = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
        try:
            for result in process_lines(catalog, stream, token):
                failed = failed or "error" in result
                sys.stdout.write(dumps(result) + "\n")
                sys.stdout.flush()
        finally:
            if stream is not sys.stdin:
                stream.close()
    if failed:
        raise SystemExit(1)


@pipeline_app.command("add")
def pipeline_add(
    name: Annotated[str, typer.Option(help="Pipeline name.")],
    version: Annotated[str | None, typer.Option(help="Pipeline version.")] = None,
    component: Annotated[list[str] | None, typer.Option(
        help="A component as JSON (repeatable).")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    json_: JsonOption = False,
) -> None:
    """Register a pipeline (adding the same one again changes nothing)."""
    components = [_json_arg(c, f"component[{i}]") for i, c in enumerate(component or [])]
    with _catalog() as catalog:
        pipeline, created = catalog.add_pipeline(name, version, components, description)
    document = {**pipeline.model_dump(mode="json"), "created_now": created}
    _emit(document, json_, f"pipeline {pipeline.name} {pipeline.version or ''} {pipeline.uuid}"
          f" ({'added' if created else 'already registered'})")


@pipeline_app.command("list")
def pipeline_list(
    name: Annotated[str | None, typer.Option(help="Only pipelines of this name.")] = None,
    limit: Annotated[int, typer.Option(help="Page size (1-1000).")] = 100,
    cursor: Annotated[str | None, typer.Option(help="Cursor from a previous page.")] = None,
    json_: JsonOption = False,
) -> None:
    """List pipelines."""
    with _catalog() as catalog:
        page = catalog.list_pipelines(name, limit, cursor)
    _emit({"pipelines": page.items, "next": page.next}, json_,
          _table(page.items, ["uuid", "name", "version", "created"], "pipelines"))


@app.command("lineage")
def lineage_command(
    uuid: Annotated[str, typer.Argument(help="Any record's UUID, or an id like sample.lab.7.")],
    direction: Annotated[str, typer.Option(help="up, down or both.")] = "up",
    depth: Annotated[int, typer.Option(help="How many edges away (0-20).")] = 5,
    limit: Annotated[int, typer.Option(
        help=f"At most this many edges (1-{MAX_LIMIT}); a larger graph is cut to them.")
    ] = DEFAULT_LIMIT,
    format_: Annotated[str, typer.Option(
        "--format", help="json, text, prov-json (W3C PROV-JSON) or prov-n (PROV-N).")] = "text",
    json_: JsonOption = False,
) -> None:
    """Walk the lineage graph from a record: what it came from, or what came from it."""
    from catalog.lineage import as_text
    from catalog.prov import as_prov_json, as_prov_n

    formats = ("json", "text", "prov-json", "prov-n")
    if format_ not in formats:
        raise InvalidInput(f"format must be one of {', '.join(formats)}, not {format_!r}")
    if format_ == "prov-n" and (json_ or _state.json):
        # --json promises exactly one JSON document on stdout, which PROV-N is not.
        raise InvalidInput("--json and --format prov-n exclude each other; use prov-json")
    with _catalog() as catalog:
        graph = catalog.lineage(uuid, direction, depth, limit)
    catalog_json = format_ == "json" or (format_ == "text" and (json_ or _state.json))
    if graph["truncated"] and not catalog_json:
        # The catalog's JSON says so itself; text and PROV do not, so stderr does.
        Console(stderr=True).print(
            f"warning: more than {limit} edges within depth {depth}: the graph is cut to "
            f"{limit} (use --limit, a lower --depth, or walk from one of its nodes)",
            markup=False, highlight=False, soft_wrap=True)
    if format_ == "prov-json":
        sys.stdout.write(as_prov_json(graph) + "\n")
    elif format_ == "prov-n":
        sys.stdout.write(as_prov_n(graph) + "\n")
    else:
        _emit(graph, json_ or format_ == "json", as_text(graph))


@file_app.command("list")
def file_list(
    job: Annotated[str | None, typer.Option(help="Only files of this job.")] = None,
    path_prefix: Annotated[str | None, typer.Option(help="Paths starting with this.")] = None,
    status: Annotated[str | None, typer.Option(
        help="ok, changed, missing or unchecked.")] = None,
    checksum: Annotated[str | None, typer.Option(
        help="algorithm:hexdigest, e.g. sha256:ab12...")] = None,
    path_glob: Annotated[str | None, typer.Option(
        help="Paths matching this glob (* ** ? [...]; no leading / matches at any depth).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="archive, product or plot.")] = None,
    level: Annotated[str | None, typer.Option(
        help="0, 1, 2, 3, Reference, User or Unknown.")] = None,
    media_type: Annotated[str | None, typer.Option(help="e.g. text/csv.")] = None,
    sort: Annotated[str, typer.Option(help="path, -path, created or -created.")] = "path",
    limit: Annotated[int, typer.Option(help="Page size (1-1000).")] = 100,
    cursor: Annotated[str | None, typer.Option(help="Cursor from a previous page.")] = None,
    json_: JsonOption = False,
) -> None:
    """List file records, in path order unless sorted otherwise."""
    with _catalog() as catalog:
        page = catalog.find_files(job, path_prefix, status, checksum, limit, cursor,
                                  path_glob=path_glob, kind=kind, level=level,
                                  media_type=media_type, sort=sort)
    _emit({"files": page.items, "next": page.next}, json_,
          _table(page.items, ["uuid", "path", "size", "kind", "status"], "files"))


@file_app.command("show")
def file_show(uuid: str, json_: JsonOption = False) -> None:
    """Show a file record with its checksums, links and fixity history."""
    with _catalog() as catalog:
        record = catalog.get_file(uuid)
        history = catalog.fixity_checks(uuid, FIXITY_SHOWN) if not json_ else None
    document = record.model_dump(mode="json")
    more = "" if history is None or history.next is None else \
        f" (first {FIXITY_SHOWN} checks; GET /files/{uuid}/fixity pages on)"
    checks = _table(history.items if history else [], ["date", "outcome", "size", "changed"],
                    f"{record.path}: {record.status}{more}")
    _emit(document, json_, checks)


@token_app.command("admin")
def token_admin(json_: JsonOption = False) -> None:
    """Print the admin token (needs the secret: 'catalog init' or CATALOG_SECRET)."""
    settings = load_settings(db=_state.db)
    token = keys_from_env_or_file(Path(settings.secret_file)).admin_token()
    _emit({"token": token}, json_, token)


from catalog import (  # noqa: E402, F401 (their commands, on the app)
    cli_fixity,
    cli_jobs,
    cli_openlineage,
    cli_queue,
    cli_tokens,
)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn every error into one clean message."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state.json = "--json" in args[: args.index("--") if "--" in args else len(args)]
    try:
        app(args=args, prog_name="catalog", standalone_mode=False)
    except CatalogError as exc:
        _fail(exc.code, exc.message, EXIT_CODES.get(exc.status, 1))
    except typer.Abort:
        _fail("aborted", "aborted", 130)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.TyperException as exc:  # usage errors from the (vendored) click parser
        exit_code = int(getattr(exc, "exit_code", 2) or 2)
        if _state.json and type(exc).__name__ != "NoArgsIsHelpError":
            format_message = getattr(exc, "format_message", None)
            _fail("usage", format_message() if format_message else str(exc), exit_code)
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        raise SystemExit(exit_code) from None
    except OSError as exc:
        _fail("os_error", f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1)
