"""Shared fixtures: every store backend (each opened from its URL, closed after) and S3."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from s3server import create_bucket, delete_bucket, s3_client, start_moto_server, stop_moto_server

from catalog.store import Store, open_store

MONGODB_URI_ENV = "CATALOG_TEST_MONGODB_URI"
STORE_BACKENDS = ["sqlite", "mongomock"] + (["mongodb"] if os.environ.get(MONGODB_URI_ENV) else [])


def _with_database(uri: str, name: str) -> str:
    """``uri`` naming database ``name``, still authenticating where ``uri`` did."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    auth_database = parts.path.strip("/")
    if auth_database and "authSource" not in query:
        query["authSource"] = [auth_database]
    return parts._replace(path=f"/{name}", query=urlencode(query, doseq=True)).geturl()


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty catalog on one backend."""
    name = f"catalog_test_{uuid.uuid4().hex}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/catalog.db"
    elif request.param == "mongomock":
        yield f"mongomock://{name}"
    else:
        import pymongo

        url = _with_database(os.environ[MONGODB_URI_ENV], name)
        yield url
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
        with client:
            client.drop_database(name)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


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
