"""Shared fixtures: every store backend (each opened from its URL, closed after), S3, and the
hand-built lineage graph (``graph``) of test_lineage.py and test_prov.py:

    M1 (measurement)   M2 (measurement)          P: the pipeline of every job
      |        \\        /        |
     J1          J3 (acted_on F1) J2             (jobs child_of measurements)
      |           |               |
     F1 <--------F3------------> F2              (F3 derived_from F1 and F2)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pymongo
import pytest
from hypothesis import strategies as st
from mongowire import start_wire_server, stop_wire_server
from s3server import create_bucket, delete_bucket, s3_client, start_moto_server, stop_moto_server

from catalog import Catalog, ManagedPipelineJob
from catalog.indexer import file_uuid
from catalog.models import FileRecord, utc_now
from catalog.store import Store, open_store
from catalog.tokens import Keys
from catalog.web import create_app

LINEAGE_KEYS = Keys(b"l" * 32, b"a" * 32)
MONGODB_URI_ENV = "CATALOG_TEST_MONGODB_URI"
# mongomock in this process; "mongowire": a MongoDB-wire server started by the session
# (tests/mongowire.py); "mongodb": the real server at $CATALOG_TEST_MONGODB_URI, when set.
MONGO_BACKENDS = ["mongomock", "mongowire"] + (
    ["mongodb"] if os.environ.get(MONGODB_URI_ENV) else [])
STORE_BACKENDS = ["sqlite", *MONGO_BACKENDS]

# Any JSON value the catalog accepts in data (catalog.identifiers.check_json).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # what the stores keep; beyond: test_int64_bounds
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    # keys without NUL (what the stores keep: test_a_key_with_a_nul_is_refused)
    | st.dictionaries(st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                              max_size=8), children, max_size=5),
    max_leaves=25,
)


# Under pytest-xdist (``make test`` runs ``-n 2 --dist loadscope``) a module's tests share a
# worker, in order (some read what earlier ones left; module fixtures start once), and so do
# the modules of one machine-wide component: one Slurm cluster, one dockerd, never two at once.
COMPONENT_MODULES = {
    "docker": ("test_docker_engine.py", "test_docker_dispatch.py", "test_swarm.py",
               "test_swarm_client.py"),
    "slurm": ("test_slurm.py",),
}
_COMPONENT_FIXTURES = {"docker_daemon": "docker", "cluster": "slurm"}


@pytest.hookimpl(optionalhook=True)  # without xdist (-p no:xdist) there is no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """loadscope, its scope a module or the component its module belongs to."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    component_of = {name: component for component, names in COMPONENT_MODULES.items()
                    for name in names}

    class ByComponent(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return component_of.get(module.rsplit("/", 1)[-1], module)

    return ByComponent(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a machine-wide component lives in a module listed for it."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            component = _COMPONENT_FIXTURES.get(fixture)
            if component and item.path.name not in COMPONENT_MODULES[component]:
                raise pytest.UsageError(
                    f"{item.nodeid} uses {fixture}: list {item.path.name} in "
                    f"COMPONENT_MODULES[{component!r}] (tests/conftest.py)")


def _with_database(uri: str, name: str) -> str:
    """``uri`` naming database ``name``, still authenticating where ``uri`` did."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    auth_database = parts.path.strip("/")
    if auth_database and "authSource" not in query:
        query["authSource"] = [auth_database]
    return parts._replace(path=f"/{name}", query=urlencode(query, doseq=True)).geturl()


@pytest.fixture(scope="session")
def mongowire_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI (no database) of a MongoDB-wire server shared by the session, on 127.0.0.1 and
    its own data directory, stopped by its PID at the end."""
    home = tmp_path_factory.mktemp("mongowire")
    uri, process = start_wire_server(home, home / "server.log")
    try:
        yield uri
    finally:
        stop_wire_server(process)
        assert process.poll() is not None, f"the wire server (pid {process.pid}) did not exit"


@pytest.fixture(scope="session")
def mongowire_client(mongowire_uri: str) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    """A pymongo client on the session's wire server: ``mongowire_client[name]`` is a database
    (use a name of the test's own, e.g. from ``database_url``, and drop it after)."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongowire_uri)
    yield client
    client.close()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``database_url(backend)``: the URL of a new, empty catalog on ``backend`` (one of
    ``STORE_BACKENDS``), on a database no other test uses; MongoDB ones are dropped after."""
    dropped: list[tuple[str, str]] = []

    def new(backend: str) -> str:
        name = f"catalog_test_{uuid.uuid4().hex}"
        if backend == "sqlite":
            return f"sqlite:///{tmp_path}/{name}.db"
        if backend == "mongomock":
            return f"mongomock://{name}"
        uri = (request.getfixturevalue("mongowire_uri") if backend == "mongowire"
               else os.environ[MONGODB_URI_ENV])
        dropped.append((uri, name))
        return _with_database(uri, name)

    yield new
    for uri, name in dropped:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            _with_database(uri, name))
        with client:
            client.drop_database(name)


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, database_url: Callable[[str], str]) -> str:
    """The URL of an empty catalog on one backend."""
    return database_url(str(request.param))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def queue_catalog(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[Callable[..., Catalog]]:
    """Opens a catalog on the test's store (in a working directory of its own) with these
    keys and pipelines: a module's ``catalog`` fixture, in one line. Closed after the test."""
    monkeypatch.chdir(tmp_path)
    opened: list[Catalog] = []

    def open_(keys: Keys, *pipelines: str) -> Catalog:
        catalog = Catalog.open(store_url, keys=keys, sqlite_synchronous="NORMAL")
        opened.append(catalog)
        for name in pipelines:
            catalog.add_pipeline(name)
        return catalog

    yield open_
    for catalog in opened:
        catalog.close()


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API of the test module's ``catalog``, in process (httpx's ASGI transport)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(catalog)),
                                 base_url="http://test", timeout=60) as opened:
        yield opened


@pytest.fixture
def graph(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[tuple[Catalog, dict[str, str]]]:
    """The catalog of the lineage graph drawn above, and its records' UUIDs by name."""
    monkeypatch.chdir(tmp_path)
    catalog = Catalog.open(store_url, keys=LINEAGE_KEYS, sqlite_synchronous="NORMAL")
    pipeline, _ = catalog.add_pipeline("lineage-test", "1")
    ids = {"P": pipeline.uuid}
    for name, upstream in (("J1", ["measurement.g.1"]), ("J2", ["measurement.g.2"]),
                           ("J3", ["measurement.g.1", "measurement.g.2"])):
        job = ManagedPipelineJob(catalog, pipeline.uuid, {"name": name},
                                 measurement_id=upstream)
        job.setup()
        ids[name] = job.uuid
    ids["M1"], ids["M2"] = (catalog.parse_upstream(m)
                            for m in ("measurement.g.1", "measurement.g.2"))
    now = utc_now()

    def record(name: str, job: str, derived_from: list[str]) -> dict[str, Any]:
        path = f"/products/{name}.csv"
        ids[name] = file_uuid(catalog, "local", path)
        return FileRecord(uuid=ids[name], storage_system="local", path=path, name=f"{name}.csv",
                          size=1, mtime=now, media_type="text/csv", kind="product",
                          child_of=[ids[job]], generated_by=[ids[job]],
                          derived_from=derived_from, created=now, updated=now
                          ).model_dump(mode="json")

    catalog.store.upsert_files([record("F1", "J1", []), record("F2", "J2", [])])
    catalog.store.upsert_files([record("F3", "J3", [ids["F1"], ids["F2"]])])
    catalog.add_links(ids["J3"], "acted_on", [ids["F1"]])
    yield catalog, ids
    catalog.close()


# S3 through a real moto server subprocess (boto3 speaks HTTP to it), one per session.
@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a ``moto_server`` subprocess shared by the session, stopped by its PID."""
    endpoint_url, process = start_moto_server(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield endpoint_url
    finally:
        stop_moto_server(process)
        assert process.poll() is not None, f"moto_server (pid {process.pid}) did not exit"


@pytest.fixture(scope="session")
def s3(moto_endpoint: str) -> Iterator[Any]:
    client = s3_client(moto_endpoint)
    yield client
    client.close()


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    name = create_bucket(s3)
    yield name
    delete_bucket(s3, name)
