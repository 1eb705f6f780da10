"""The job server: FastAPI app, job store, Huey queue and workers. Imports only the ``animate`` facade."""

from server.app import create_app

__all__ = ["create_app"]
