"""The node's store, opened from its settings (the service, the CLI, the salvager)."""

from __future__ import annotations

from config import Settings
from store import Database


def open_store(settings: Settings) -> Database:
    """The node's store: PostgreSQL when ``storage.url`` is set (``env:``/``file:``
    resolved here), else the SQLite file."""
    from config.loader import secret

    url = secret(settings.storage.url, key="storage.url") if settings.storage.url else ""
    return Database(url or settings.storage.database_path)
