"""What OpenLineage events built, on the command line (``catalog openlineage ...``): datasets
listed and found by namespace and name, runs by runId. Thin like the rest of ``catalog.cli``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from catalog.cli import JsonOption, _catalog, _emit, _table, app
from catalog.openlineage_views import get_dataset, get_run, list_datasets

openlineage_app = typer.Typer(help="Datasets and runs that OpenLineage events described.",
                              no_args_is_help=True)
app.add_typer(openlineage_app, name="openlineage")


@openlineage_app.command("datasets")
def datasets(
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    limit: Annotated[int, typer.Option(help="Page size (1-1000).")] = 100,
    cursor: Annotated[str | None, typer.Option(help="The 'next' of the page before.")] = None,
    json_: JsonOption = False,
) -> None:
    """List datasets by namespace and name."""
    with _catalog() as catalog:
        page = list_datasets(catalog, namespace, limit, cursor)
    _emit(page, json_, _table(page["datasets"], ["namespace", "name", "uuid"], "datasets"))


@openlineage_app.command("dataset")
def dataset(namespace: str, name: str, json_: JsonOption = False) -> None:
    """One dataset: the runs that wrote and read it, its facets and versions."""
    with _catalog() as catalog:
        found = get_dataset(catalog, namespace, name)
    _emit(found, json_, _lines(found, ("uuid", "namespace", "name", "uri", "written_by",
                                       "read_by", "facets")))


@openlineage_app.command("run")
def run(run_id: str, json_: JsonOption = False) -> None:
    """One run by its runId: state, times, parent and children, datasets and facets."""
    with _catalog() as catalog:
        found = get_run(catalog, run_id)
    _emit(found, json_, _lines(found, ("runId", "job", "state", "state_in_catalog",
                                       "startedAt", "endedAt", "disagreement", "parent",
                                       "children", "inputs", "outputs", "standard")))


def _lines(document: dict[str, Any], keys: tuple[str, ...]) -> str:
    """``key: value`` a line, lists a line an item, for people (--json for everything)."""
    lines = []
    for key in keys:
        value = document.get(key)
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"  {_item(item)}" for item in value]
        elif isinstance(value, dict):
            shown = {k: v for k, v in value.items() if v is not None}
            named = key in ("facets", "standard")  # which there are; --json has them whole
            text = ", ".join(sorted(shown)) if named else json.dumps(shown, ensure_ascii=False)
            lines.append(f"{key}: {text}")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _item(item: Any) -> Any:
    return item.get("uri") or item.get("name") if isinstance(item, dict) else item
