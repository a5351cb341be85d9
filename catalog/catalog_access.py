"""Who may do what to a catalog: its keys, the checks of admin, job and worker tokens, and the
refusals of senders without a valid token, counted (``catalog.refusals``) and audited."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from catalog.config import Settings
from catalog.errors import CatalogError
from catalog.identifiers import UUIDType, parse_uuid
from catalog.refusals import AnonymousRefusals
from catalog.store import Store
from catalog.tokens import Keys, keys_from_env_or_file


class CatalogAccess:
    """The tokens part of ``Catalog`` (which sets the attributes below)."""

    store: Store
    settings: Settings
    _keys: Keys | None

    if TYPE_CHECKING:  # CatalogEvents'
        def _audit(self, uuid: str, event: Any, source: str, exc: CatalogError,
                   keep_data: bool) -> None: ...

    @property
    def keys(self) -> Keys:
        if self._keys is None:
            self._keys = keys_from_env_or_file(Path(self.settings.secret_file))
        return self._keys

    @cached_property
    def refusals(self) -> AnonymousRefusals:
        """Refusals of requests without a valid token, counted (``catalog.refusals``)."""
        return AnonymousRefusals.from_settings(self.settings)

    def flush_refusals(self) -> int:
        """Write the refusal counts held to the audit log; how many entries were written."""
        entries = self.refusals.take()
        for entry in entries:
            self.store.append_audit(entry.model_dump(mode="json"))
        return len(entries)

    def check_admin(self, token: str | None, action: str, source: str = "python",
                    client: str | None = None) -> None:
        """Refuse a token that is not the admin token; from a ``client`` address, the refusal
        is counted (``catalog.refusals``) and may be ``RateLimited``."""
        try:
            self.keys.check_admin(token, action)
        except CatalogError as exc:
            if client is None:
                raise
            raise self._refused_anonymously(client, source, exc) from None

    def check_job_token(self, uuid: str, token: str | None, source: str = "python",
                        client: str | None = None) -> bool:
        """``Keys.check_job`` for a request from ``client``: a refusal is counted and may be
        ``RateLimited``; True for the admin token."""
        uuid = parse_uuid(uuid, UUIDType.pipelinejob)
        try:
            return self.keys.check_job(uuid, token)
        except CatalogError as exc:
            if client is None:
                raise
            raise self._refused_anonymously(client, source, exc) from None

    def _refused_anonymously(self, client: str, source: str,
                             error: CatalogError) -> CatalogError:
        """Count a refusal of a sender without a valid token; the error to raise."""
        error = self.refusals.refuse(client, source, error)
        if self.refusals.due():
            self.flush_refusals()
        return error

    def job_token(self, uuid: str) -> str:
        return self.keys.job_token(parse_uuid(uuid, UUIDType.pipelinejob))

    def admin_token(self) -> str:
        return self.keys.admin_token()

    def webhook_url(self, uuid: str, base_url: str | None = None) -> str:
        base = (base_url or self.settings.base_url).rstrip("/")
        return f"{base}/jobs/{uuid}/events?token={quote(self.job_token(uuid))}"

    def check_worker(self, token: str | None, action: str, source: str = "python",
                     client: str | None = None) -> None:
        """Refuse a token that is neither the worker key nor the admin token; from a
        ``client`` address, the refusal is counted and may be ``RateLimited``."""
        try:
            self.keys.check_worker(token, action)
        except CatalogError as exc:
            if client is None:
                raise
            raise self._refused_anonymously(client, source, exc) from None

    def authorize(self, uuid: str, token: str | None, action: str, source: str,
                  worker: bool = False, client: str | None = None) -> None:
        """Check the job's token (or, with ``worker``, the worker key) for ``action`` on job
        ``uuid`` (the admin token passes both). A refusal from a ``client`` address is counted
        (``catalog.refusals``), any other audited against the job; then raised."""
        try:
            if worker:
                self.keys.check_worker(token, f"{action} job {uuid}")
            else:
                self.keys.check_job(uuid, token)
        except CatalogError as exc:
            if client is not None:
                raise self._refused_anonymously(client, source, exc) from None
            self._audit(uuid, {"name": action}, source, exc, keep_data=False)
            raise
