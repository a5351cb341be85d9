"""Job tokens and the admin token: HMAC-SHA256 in hex, compared in constant time.

A job's token is ``HMAC(secret, job uuid)``; it never changes while the job lives. The admin
token is ``HMAC(admin_key, "catalog-admin")``, a key kept apart from the job secret so that no
job token can be turned into admin rights. Secrets are never logged or put in error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets as _secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from catalog.errors import AdminRequired, ConfigurationError, TokenInvalid, TokenRequired

_ADMIN_MESSAGE = b"catalog-admin"
# The worker key: withdraw, heartbeat and complete queued jobs (and deposit on the CHIME
# surfaces), nothing else. Derived from the admin key, so only an administrator can hand it out.
_WORKER_MESSAGE = b"catalog-worker"
_ADMIN_KEY_LABEL = b"catalog-admin-key-from-secret"


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.digest(key, message, hashlib.sha256).hex()  # the one-shot C path


@dataclass(frozen=True, repr=False)
class Keys:
    """The catalog's job secret and admin key (repr hides them)."""

    secret: bytes
    admin_key: bytes

    def __repr__(self) -> str:
        return "Keys(<hidden>)"

    def job_token(self, uuid: str) -> str:
        return _hmac_hex(self.secret, uuid.encode("ascii"))

    @cached_property
    def _admin_token(self) -> str:
        return _hmac_hex(self.admin_key, _ADMIN_MESSAGE)

    def admin_token(self) -> str:
        return self._admin_token

    @cached_property
    def _worker_token(self) -> str:
        return _hmac_hex(self.admin_key, _WORKER_MESSAGE)

    def worker_token(self) -> str:
        return self._worker_token

    def check_worker(self, token: str | None, action: str) -> None:
        """Accept the worker key or the admin token (which may do whatever a worker may)."""
        if not token:
            raise TokenRequired(f"a worker key is required to {action}")
        if self.is_admin(token) or hmac.compare_digest(
                str(token).encode("utf-8"), self._worker_token.encode("ascii")):
            return
        raise TokenInvalid(f"the token given is not a worker key: it may not {action}")

    def is_admin(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(
            str(token).encode("utf-8"), self._admin_token.encode("ascii")
        )

    def check_job(self, uuid: str, token: str | None) -> bool:
        """Accept the job's own token or the admin token; returns True for the admin token."""
        if not token:
            raise TokenRequired(f"a token is required to act on job {uuid}")
        if self.is_admin(token):
            return True
        if hmac.compare_digest(str(token).encode("utf-8"), self.job_token(uuid).encode("ascii")):
            return False
        raise TokenInvalid(f"the token given is not valid for job {uuid}")

    def withhold(self, uuid: str, document: Any, raw: bytes | str | None = None) -> Any:
        """``document`` with the job's token and the admin token cut out of every key and
        string, so that a token sent in a body is never stored or shown. ``raw``, the text the
        document was parsed from, lets the common case (no token in it) skip the walk."""
        secrets = (self.job_token(uuid), self._admin_token)
        if raw is not None:
            text = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
            if not any(secret.encode("ascii") in text for secret in secrets):
                return document
        return _withhold(document, secrets)

    def check_admin(self, token: str | None, action: str) -> None:
        if not token:
            raise TokenRequired(f"the admin token is required to {action}")
        if not self.is_admin(token):
            raise AdminRequired(f"the admin token is required to {action}")


WITHHELD_TOKEN = "<withheld: token>"


def _withhold(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, WITHHELD_TOKEN)
        return value
    if isinstance(value, list):
        return [_withhold(item, secrets) for item in value]
    if isinstance(value, dict):
        return {_withhold(key, secrets): _withhold(item, secrets) for key, item in value.items()}
    return value


def keys_from_env_or_file(secret_file: Path) -> Keys:
    """``CATALOG_SECRET`` (and optionally ``CATALOG_ADMIN_KEY``) win over the secret file."""
    env_secret = os.environ.get("CATALOG_SECRET")
    if env_secret:
        admin = os.environ.get("CATALOG_ADMIN_KEY")
        secret = env_secret.encode("utf-8")
        admin_key = admin.encode("utf-8") if admin else _hmac_hex(secret, _ADMIN_KEY_LABEL).encode()
        return Keys(secret, admin_key)
    if not secret_file.exists():
        raise ConfigurationError(
            f"no catalog secret: run 'catalog init' to create {secret_file} or set CATALOG_SECRET"
        )
    try:
        stored = json.loads(secret_file.read_text(encoding="utf-8"))
        keys = Keys(bytes.fromhex(stored["secret"]), bytes.fromhex(stored["admin_key"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigurationError(f"secret file {secret_file} is unreadable or corrupt") from None
    if len(keys.secret) < 16 or len(keys.admin_key) < 16:
        raise ConfigurationError(f"secret file {secret_file} holds keys shorter than 16 bytes")
    return keys


def create_secret_file(secret_file: Path) -> bool:
    """Create the secret file with owner-only permissions; False if it already exists."""
    secret_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = json.dumps(
        {"secret": _secrets.token_hex(32), "admin_key": _secrets.token_hex(32)}
    ).encode("ascii")
    try:
        # O_EXCL: two concurrent inits cannot both write; 0o600 from the first byte.
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    return True
