"""The embedded SQLite backend."""

from postroom.store.sqlite.backend import SQLiteStore, open_store

__all__ = ["SQLiteStore", "open_store"]
