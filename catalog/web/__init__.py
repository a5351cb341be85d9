"""The HTTP entry point (FastAPI on uvicorn)."""

from catalog.web.app import create_app
from catalog.web.server import serve

__all__ = ["create_app", "serve"]
