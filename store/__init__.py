"""Persistence: SQLite by default (WAL), each component owning its tables."""

from . import pg  # noqa: F401  (registers PostgreSQL: Database("postgresql://..."))
from .db import Database

__all__ = ["Database"]
