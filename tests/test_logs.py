"""The text log format: one ``key=value`` line per event, values quoted only when needed."""

from __future__ import annotations

import logging

from postroom.logs import TextFormatter


def _line(**fields: object) -> str:
    record = logging.LogRecord("postroom.net.smtp", logging.INFO, "", 0, "transaction", (), None)
    record.created = 1_800_000_000.25
    record.msecs = 250.0
    record.fields = fields
    return TextFormatter().format(record)


def test_plain_values_are_bare_and_none_is_left_out() -> None:
    line = _line(session="24HVZL8HTBVF99H", size=5120, ms=1.5, tls=None, ok=True)
    assert line == (
        "2027-01-15T08:00:00.250Z info postroom.net.smtp event=transaction "
        "session=24HVZL8HTBVF99H size=5120 ms=1.5 ok=True"
    )


def test_values_that_need_quotes_are_quoted_and_escaped() -> None:
    line = _line(empty="", space="a b", eq="k=v", quote='say "hi"', back="a\\b", nl="x\ny\r",
                 tab="a\tb", obj=("a b", 1))
    assert line.split(" event=transaction ")[1] == (
        'empty="" space="a b" eq="k=v" quote="say \\"hi\\"" back="a\\\\b" nl="x\\ny\\r" '
        "tab=\"a\tb\" obj=\"('a b', 1)\""
    )


def test_worker_suffix() -> None:
    record = logging.LogRecord("x", logging.WARNING, "", 0, "plain %s", ("text",), None)
    assert TextFormatter(worker=2).format(record).endswith(" warning x plain text worker=2")


def test_event_reaches_handlers_with_its_fields() -> None:
    from postroom import logs

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("postroom.test_logs")
    handler = Keep()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logs.event(logger, "transaction", size=1, tls=None)
        logs.event(logger, "hidden", logging.DEBUG, size=2)  # below the level: not made
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert [(r.getMessage(), r.levelno, r.fields) for r in seen] == [  # type: ignore[attr-defined]
        ("transaction", logging.INFO, {"size": 1, "tls": None})
    ]
    assert seen[0].name == "postroom.test_logs"
