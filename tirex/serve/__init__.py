"""The forecast server: HTTP (the reference server's API plus timestamped series) and MCP, with
dynamic batching (``tirex serve``; needs ``pip install 'tirex[serve]'``)."""

from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(settings: ServerSettings | None = None):
    """The server as a FastAPI app; see ``tirex.serve.app.create_app``."""
    from .app import create_app as _create_app

    return _create_app(settings)
