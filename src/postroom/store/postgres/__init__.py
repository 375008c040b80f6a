"""The PostgreSQL backend: several postroom nodes on one database (see backend.py)."""

from postroom.store.postgres.backend import PostgresStore, open_store

__all__ = ["PostgresStore", "open_store"]
