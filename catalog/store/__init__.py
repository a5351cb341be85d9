"""Persistence behind one small interface, with backends chosen by URL scheme.

``sqlite:///relative/or/absolute/path.db`` (``sqlite:////abs/path.db`` for absolute paths too),
``mongodb://host/dbname`` (or ``mongodb+srv://``), and ``mongomock://dbname`` for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from catalog.config import Settings
from catalog.errors import ConfigurationError
from catalog.store.base import Store
from catalog.store.values import Applied, JobQuery, Page

__all__ = ["Applied", "JobQuery", "Page", "Store", "open_store", "register_backend"]

Opener = Callable[[str, Settings], Store]
_BACKENDS: dict[str, Opener] = {}


def register_backend(scheme: str, opener: Opener) -> None:
    _BACKENDS[scheme] = opener


def sqlite_path(url: str) -> str | None:
    """The file a ``sqlite://`` URL names (None for another scheme)."""
    if urlsplit(url).scheme != "sqlite":
        return None
    path = url[len("sqlite://"):]
    if path.startswith("/"):
        path = path[1:]  # sqlite:///catalog.db is relative; sqlite:////abs/x.db absolute
    if not path:
        raise ConfigurationError(f"database URL {url!r} names no file")
    return path


def _open_sqlite(url: str, settings: Settings) -> Store:
    from catalog.store.sqlite import SQLiteStore

    path = sqlite_path(url)
    assert path is not None
    return SQLiteStore(path, synchronous=settings.sqlite_synchronous,
                       busy_timeout_ms=settings.busy_timeout_ms)


def _open_mongo(url: str, settings: Settings) -> Store:
    from catalog.store.mongo import MongoStore

    return MongoStore.from_url(url, retries=settings.event_retries)


register_backend("sqlite", _open_sqlite)
register_backend("mongodb", _open_mongo)
register_backend("mongodb+srv", _open_mongo)
register_backend("mongomock", _open_mongo)


def open_store(url: str, settings: Settings | None = None) -> Store:
    """Open the store a URL names."""
    scheme = urlsplit(url).scheme
    opener = _BACKENDS.get(scheme)
    if opener is None:
        known = ", ".join(sorted(_BACKENDS))
        raise ConfigurationError(f"unknown database URL scheme {scheme!r} in {url!r}; use {known}")
    return opener(url, settings or Settings())
