"""Several serving processes on one store: the supervisor, its workers and the bus between
them (``server.workers``; see docs/architecture.md, "Processes")."""
