"""``catalog token job UUID``: a job's token again, read from the local secret like ``token
admin`` (whoever can read the secret file is an administrator already). Thin like the rest of
``catalog.cli``, on the same app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from catalog.cli import JsonOption, _catalog, _emit, _state, token_app
from catalog.config import load_settings
from catalog.tokens import keys_from_env_or_file


@token_app.command("job")
def token_job(
    uuid: Annotated[str, typer.Argument(help="The job's UUID.")],
    json_: JsonOption = False,
) -> None:
    """Print a job's token again, as in 'job create' (needs the secret, as 'token admin').

    For instance TOKEN=$(catalog token job UUID); an unknown job is refused (exit 4)."""
    # The secret first: without one, say what to run before a database is opened (created).
    keys_from_env_or_file(Path(load_settings(db=_state.db).secret_file))
    with _catalog() as catalog:
        job = catalog.get_job(uuid)  # an unknown job is refused (exit 4), not given a token
        token = catalog.job_token(job.uuid)
        webhook = catalog.webhook_url(job.uuid)
    _emit({"uuid": job.uuid, "token": token, "webhook": webhook}, json_, token)
