"""The HTTP service: admin API and UI, self-service, client auto-configuration, MTA-STS,
metrics and health (see ``server.py``)."""
