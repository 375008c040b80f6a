"""Outbound queue: retry policy (model), delivery status notifications (dsn).

The pure parts live here (``model``, ``dsn``); the durable queue and the worker that drives
the SMTP client core are separate modules that import them.
"""
