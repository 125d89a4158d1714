"""Persistence: SQLite by default (WAL), each component owning its tables."""

from .db import Database

__all__ = ["Database"]
