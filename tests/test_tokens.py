"""Job and admin tokens (HMAC-SHA256, hex) and the secret file (DESIGN §4)."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest

from catalog.errors import AdminRequired, ConfigurationError, TokenInvalid, TokenRequired
from catalog.identifiers import UUIDType, typed_uuid
from catalog.tokens import Keys, create_secret_file, keys_from_env_or_file

SECRET = b"job-secret-0123456789abcdef0123456789"
ADMIN_KEY = b"admin-key-fedcba9876543210fedcba98"
KEYS = Keys(SECRET, ADMIN_KEY)
JOBS = [typed_uuid(UUIDType.pipelinejob, f"job-{n}") for n in range(5)]
JOB = JOBS[0]


def hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATALOG_SECRET", raising=False)
    monkeypatch.delenv("CATALOG_ADMIN_KEY", raising=False)


@pytest.mark.parametrize("job", JOBS)
def test_job_token_is_hmac_sha256_hex_of_the_uuid(job: str) -> None:
    token = KEYS.job_token(job)
    assert token == hmac_hex(SECRET, job.encode("ascii"))
    assert len(token) == 64
    assert token == token.lower()
    assert KEYS.job_token(job) == token
    assert Keys(SECRET, ADMIN_KEY).job_token(job) == token  # stable across instances
    assert Keys(SECRET, b"another admin key").job_token(job) == token  # admin key not involved
    assert Keys(b"another secret", ADMIN_KEY).job_token(job) != token


def test_job_tokens_differ_per_job() -> None:
    tokens = [KEYS.job_token(job) for job in JOBS]
    assert len(set(tokens)) == len(JOBS)


def test_admin_token_is_hmac_of_the_admin_key() -> None:
    token = KEYS.admin_token()
    assert token == hmac_hex(ADMIN_KEY, b"catalog-admin")
    assert KEYS.admin_token() == token
    assert Keys(b"another secret", ADMIN_KEY).admin_token() == token  # secret not involved


def test_admin_token_differs_from_job_tokens_and_the_job_secret() -> None:
    admin = KEYS.admin_token()
    assert admin not in {KEYS.job_token(job) for job in JOBS}
    assert admin != hmac_hex(SECRET, b"catalog-admin")
    # Keys whose admin key differs from the job secret give a different admin token.
    assert Keys(SECRET, SECRET).admin_token() != admin


@pytest.mark.parametrize("token", [None, ""])
def test_check_job_requires_a_token(token: str | None) -> None:
    with pytest.raises(TokenRequired) as caught:
        KEYS.check_job(JOB, token)
    assert JOB in caught.value.message
    assert (caught.value.status, caught.value.code) == (401, "token_required")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("0" * 64, id="zeros"),
        pytest.param(KEYS.job_token(JOBS[1]), id="other-jobs-token"),
        pytest.param(KEYS.job_token(JOB).upper(), id="upper-case"),
        pytest.param(KEYS.job_token(JOB)[:-1], id="truncated"),
        pytest.param(KEYS.job_token(JOB) + "0", id="extended"),
        pytest.param(Keys(b"other", ADMIN_KEY).job_token(JOB), id="other-secret"),
        pytest.param(Keys(SECRET, b"other").admin_token(), id="other-admin-key"),
        pytest.param("é" * 64, id="non-ascii"),
    ],
)
def test_check_job_refuses_wrong_tokens(token: str) -> None:
    with pytest.raises(TokenInvalid) as caught:
        KEYS.check_job(JOB, token)
    assert type(caught.value) is TokenInvalid
    assert (caught.value.status, caught.value.code) == (403, "token_invalid")
    assert token not in caught.value.message
    assert KEYS.job_token(JOB) not in caught.value.message


def test_check_job_tells_job_token_from_admin_token() -> None:
    assert KEYS.check_job(JOB, KEYS.job_token(JOB)) is False
    assert KEYS.check_job(JOB, KEYS.admin_token()) is True
    assert KEYS.check_job(JOBS[3], KEYS.admin_token()) is True


def test_check_admin() -> None:
    assert KEYS.check_admin(KEYS.admin_token(), "reset a job") is None
    with pytest.raises(AdminRequired) as caught:
        KEYS.check_admin(KEYS.job_token(JOB), "reset a job")
    assert caught.value.message == "the admin token is required to reset a job"
    assert (caught.value.status, caught.value.code) == (403, "admin_required")
    with pytest.raises(TokenRequired):
        KEYS.check_admin(None, "reset a job")
    with pytest.raises(TokenRequired):
        KEYS.check_admin("", "reset a job")
    with pytest.raises(AdminRequired):
        KEYS.check_admin(hmac_hex(SECRET, b"catalog-admin"), "reset a job")


def test_is_admin() -> None:
    assert KEYS.is_admin(KEYS.admin_token())
    assert not KEYS.is_admin(None)
    assert not KEYS.is_admin("")
    assert not KEYS.is_admin(KEYS.job_token(JOB))


def test_repr_hides_the_keys() -> None:
    for text in (repr(KEYS), str(KEYS), f"{KEYS!r}", repr([KEYS])):
        for hidden in (SECRET, ADMIN_KEY):
            assert hidden.decode() not in text
            assert repr(hidden) not in text
            assert hidden.hex() not in text
    assert repr(KEYS) == "Keys(<hidden>)"


# -- the secret file -----------------------------------------------------------------------


def test_create_secret_file_is_owner_only_and_created_once(tmp_path: Path) -> None:
    secret_file = tmp_path / "state" / "secret.json"
    assert create_secret_file(secret_file) is True
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) & 0o077 == 0
    content = secret_file.read_bytes()
    stored = json.loads(content)
    assert set(stored) == {"secret", "admin_key"}
    assert all(len(bytes.fromhex(value)) == 32 for value in stored.values())
    assert stored["secret"] != stored["admin_key"]

    assert create_secret_file(secret_file) is False
    assert secret_file.read_bytes() == content
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    keys = keys_from_env_or_file(secret_file)
    assert keys == Keys(bytes.fromhex(stored["secret"]), bytes.fromhex(stored["admin_key"]))
    assert keys.job_token(JOB) == hmac_hex(bytes.fromhex(stored["secret"]), JOB.encode())


def test_each_secret_file_is_new(tmp_path: Path) -> None:
    assert create_secret_file(tmp_path / "a.json")
    assert create_secret_file(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "b.json").read_bytes()


def test_create_secret_file_keeps_an_existing_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.json"
    secret_file.write_text("left alone", encoding="utf-8")
    assert create_secret_file(secret_file) is False
    assert secret_file.read_text(encoding="utf-8") == "left alone"


def test_environment_secret_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "secret.json"
    create_secret_file(secret_file)
    from_file = keys_from_env_or_file(secret_file)
    monkeypatch.setenv("CATALOG_SECRET", "env-secret")
    keys = keys_from_env_or_file(secret_file)
    assert keys.secret == b"env-secret"
    assert keys.job_token(JOB) == hmac_hex(b"env-secret", JOB.encode())
    assert keys.job_token(JOB) != from_file.job_token(JOB)
    # Without CATALOG_ADMIN_KEY the admin key is derived, never the job secret itself.
    assert keys.admin_key != keys.secret
    assert keys.admin_token() != hmac_hex(b"env-secret", b"catalog-admin")
    assert keys.admin_token() == keys_from_env_or_file(secret_file).admin_token()

    monkeypatch.setenv("CATALOG_ADMIN_KEY", "env-admin")
    with_admin = keys_from_env_or_file(secret_file)
    assert with_admin.admin_key == b"env-admin"
    assert with_admin.admin_token() == hmac_hex(b"env-admin", b"catalog-admin")
    assert with_admin.job_token(JOB) == keys.job_token(JOB)


def test_environment_secret_needs_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_SECRET", "env-secret")
    monkeypatch.setenv("CATALOG_ADMIN_KEY", "env-admin")
    keys = keys_from_env_or_file(tmp_path / "missing.json")
    assert keys == Keys(b"env-secret", b"env-admin")


def test_admin_key_alone_is_not_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_ADMIN_KEY", "env-admin")
    with pytest.raises(ConfigurationError):
        keys_from_env_or_file(tmp_path / "missing.json")


def test_no_secret_at_all(tmp_path: Path) -> None:
    secret_file = tmp_path / "missing.json"
    with pytest.raises(ConfigurationError) as caught:
        keys_from_env_or_file(secret_file)
    assert str(secret_file) in caught.value.message
    assert "CATALOG_SECRET" in caught.value.message


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="list"),
        pytest.param(b"null", id="null"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b'{"secret": "00ff"}', id="no-admin-key"),
        pytest.param(b'{"admin_key": "00ff"}', id="no-secret"),
        pytest.param(b'{"secret": "zz", "admin_key": "00ff"}', id="secret-not-hex"),
        pytest.param(b'{"secret": "00ff", "admin_key": "xyz"}', id="admin-key-not-hex"),
        pytest.param(b'{"secret": 1, "admin_key": 2}', id="numbers"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    ],
)
def test_corrupt_secret_file(tmp_path: Path, content: bytes) -> None:
    secret_file = tmp_path / "secret.json"
    secret_file.write_bytes(content)
    with pytest.raises(ConfigurationError) as caught:
        keys_from_env_or_file(secret_file)
    assert caught.value.message == f"secret file {secret_file} is unreadable or corrupt"


def test_unreadable_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.json"
    secret_file.mkdir()  # exists, but cannot be read as a file
    with pytest.raises(ConfigurationError) as caught:
        keys_from_env_or_file(secret_file)
    assert str(secret_file) in caught.value.message
