"""Catalog.submit_many (issue 16): a whole graph in one call, checked before anything is
stored, with the memoisation of N single submits, on every store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from catalog import Catalog
from catalog.errors import InvalidCondition, InvalidInput
from catalog.queue import end_attempt, withdraw
from catalog.tokens import Keys

KEYS = Keys(b"c" * 32, b"a" * 32)


@pytest.fixture
def catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Catalog]:
    monkeypatch.chdir(tmp_path)
    opened = Catalog.open(store_url, keys=KEYS, sqlite_synchronous="NORMAL")
    opened.add_pipeline("step")
    yield opened
    opened.close()


def work(n: int, **extra: Any) -> dict[str, Any]:
    return {"pipeline": "step", "data": {"command": ["step", str(n)]}, **extra}


def states(catalog: Catalog) -> dict[str, str]:
    return {j["uuid"]: j["state"] for j in catalog.find_jobs(limit=1000).items}


def test_a_diamond_by_local_keys(catalog: Catalog) -> None:
    outs = catalog.submit_many([
        work(0, key="a"),
        work(1, key="b", when={"job": "a", "is": "finished"}),
        work(2, key="c", when={"job": "a", "is": "finished"}),
        work(3, when={"all": [{"job": "b", "is": "finished"},
                              {"job": "c", "is": "finished"}]}),
    ])
    assert [o.state for o in outs] == ["QUEUED", "WAITING", "WAITING", "WAITING"]
    assert all(o.created for o in outs)
    # the same batch again: the same jobs, nothing new
    again = catalog.submit_many([work(0, key="a"),
                                 work(1, when={"job": "a", "is": "finished"})])
    assert [o.uuid for o in again] == [outs[0].uuid, outs[1].uuid]
    assert not any(o.created for o in again)


@pytest.mark.parametrize(("items", "place"), [
    ([work(0), work(1, when={"job": "nope", "is": "finished"})], "items[1].when.job"),
    ([work(0, when={"job": "later", "is": "finished"}), work(1, key="later")],
     "items[0].when.job"),
    ([work(0, key="a"), work(1, key="a")], "items[1].key"),
    ([work(0, key="a"), work(1, when={"job": "a", "is": "sideways"})], "items[1].when"),
    ([work(0), 5], "items[1]"),
])
def test_a_bad_item_refuses_the_batch_and_changes_nothing(
        catalog: Catalog, items: list[Any], place: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        catalog.submit_many(items)
    assert str(raised.value.details["place"]).startswith(place)
    assert place in raised.value.message
    assert states(catalog) == {}


def test_too_many_atoms_names_the_item(catalog: Catalog) -> None:
    first = catalog.submit_many([work(0, key="a")])[0]
    big = {"all": [{"job": "a", "is": "finished"}] * 1001}
    with pytest.raises(InvalidCondition, match=r"items\[1\]"):
        catalog.submit_many([work(5), work(6, when=big)])
    assert set(states(catalog)) == {first.uuid}


def _finish_or_fail(catalog: Catalog, uuid: str, fail: bool) -> None:
    job = withdraw(catalog, {"pipelines": ["step"]}, "w")
    assert job is not None and job.uuid == uuid
    end_attempt(catalog, uuid, "w", "boom" if fail else None)


# a random small graph: each item may wait on earlier ones; some jobs first ran (finished or
# failed) so that the batch meets memoised and re-queued jobs
GRAPHS = st.lists(st.tuples(st.integers(0, 5), st.lists(st.integers(0, 10), max_size=2),
                            st.sampled_from(["new", "finished", "failed"])),
                  min_size=1, max_size=6)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=GRAPHS)
# A later item for a job already queued leaves it as it is: its condition, which would have
# closed a cycle, is not taken (found by this test: the batch refused what singles accept).
@example(graph=[(0, [], "new"), (1, [], "new"), (0, [1], "new"), (1, [0], "new")])
def test_equals_single_submits(tmp_path: Path, graph: list[tuple[int, list[int], str]]
                               ) -> None:
    import uuid as uuidlib

    results: list[Any] = []
    for path in ("many", "single"):
        url = f"sqlite:///{tmp_path}/{path}-{uuidlib.uuid4().hex}.db"
        catalog = Catalog.open(url, keys=KEYS, sqlite_synchronous="OFF")
        try:
            catalog.add_pipeline("step")
            seen: set[int] = set()
            for n, _, first in graph:  # jobs that ran before, alone
                if first != "new" and n not in seen:
                    seen.add(n)
                    uuid = catalog.submit("step", {"command": ["step", str(n)]},
                                          retries=0).uuid
                    _finish_or_fail(catalog, uuid, first == "failed")
            items = []
            for i, (n, deps, _) in enumerate(graph):
                earlier = sorted({d % i for d in deps}) if i else []
                item = work(n, key=f"k{i}")
                if earlier:
                    item["when"] = {"all": [{"job": f"k{d}", "is": "finished"}
                                            for d in earlier]}
                items.append(item)
            before = states(catalog)
            if path == "many":
                try:
                    outs = catalog.submit_many(items)
                except InvalidCondition:  # a job waiting on itself: refused, nothing changed
                    assert states(catalog) == before
                    results.append(None)
                    continue
            else:
                uuids: dict[str, str] = {}
                outs = []
                for item in items:
                    item = dict(item)
                    key = item.pop("key")
                    if "when" in item:
                        item["when"] = {"all": [{"job": uuids[a["job"]], "is": a["is"]}
                                                for a in item["when"]["all"]]}
                    try:
                        outs.append(catalog.submit(**item))
                    except InvalidCondition:  # the single path refuses it too, midway
                        break
                    uuids[key] = outs[-1].uuid
                else:
                    outs = outs
                if len(outs) < len(items):
                    results.append(None)
                    continue
            results.append(([(o.uuid, o.state, o.memoised, o.queued, o.created)
                             for o in outs], states(catalog)))
        finally:
            catalog.close()
    assert results[0] == results[1]


SCRIPT = Path(sys.executable).parent / "catalog"


def test_catalog_submit_batch_from_a_file_and_stdin(catalog: Catalog, tmp_path: Path) -> None:
    if catalog.settings.db.startswith("mongomock"):
        pytest.skip("an in-memory mongomock is not shared with another process")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_")}
    env["CATALOG_DB"] = catalog.settings.db
    lines = [work(0, key="a"), work(1, when={"job": "a", "is": "finished"})]
    batch = tmp_path / "graph.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    done = subprocess.run([str(SCRIPT), "submit", "--batch", str(batch)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout)["jobs"]
    assert [j["state"] for j in jobs] == ["QUEUED", "WAITING"]
    again = subprocess.run([str(SCRIPT), "submit", "--batch", "-"], cwd=tmp_path, env=env,
                           input=json.dumps(lines[0]) + "\n", capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["jobs"][0]["uuid"] == jobs[0]["uuid"]
    before = states(catalog)
    bad = subprocess.run([str(SCRIPT), "submit", "--batch", "-", "--json"], cwd=tmp_path, env=env,
                         input=json.dumps(work(7)) + "\n{not json\n", capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert "line 2" in json.loads(bad.stderr)["error"]["message"]
    assert states(catalog) == before
