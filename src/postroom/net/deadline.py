"""Read deadlines for whole records, shared by the SMTP, IMAP and POP3 shells.

Why not just a timeout per read: a client that trickles one byte of a command every few
seconds is never idle for a whole timeout, and with a per-read timeout it keeps its session
(and its slot under ``limits.connections_*``) for as long as it likes. So the timeout
covers a whole *record* instead, as Postfix's ``smtpd_per_record_deadline`` does: an SMTP
or POP3 command line, an IMAP command with all its literals, an SMTP message (DATA) or BDAT
chunk. A record starts when the server begins waiting for it (after answering the previous
one) and must be complete ``timeout`` seconds later.

Big records (a 50 MB DATA or APPEND literal) cannot arrive within an idle timeout on every
link, so each octet received extends the deadline by ``1 / min_rate`` seconds: a client
must keep sending at ``limits.min_data_rate`` on average, with ``timeout`` seconds of slack
(Postfix's ``smtpd_min_data_rate``). A stall longer than ``timeout`` between two reads still
ends the session, whatever was sent before.

The clock is passed in (``now``) so the arithmetic is testable without sleeping.
"""

from __future__ import annotations


class RecordDeadline:
    """When the record being read must be complete; see the module docstring."""

    __slots__ = ("timeout", "min_rate", "_end")

    def __init__(self, timeout: float, min_rate: float) -> None:
        self.timeout = timeout
        self.min_rate = min_rate
        self._end: float | None = None

    @property
    def active(self) -> bool:
        """A record is being read (bytes or the wait for them since the last answer)."""
        return self._end is not None

    def done(self) -> None:
        """The record is complete (the server answered it): the next wait starts afresh."""
        self._end = None

    def read_timeout(self, now: float) -> float:
        """How long the next read may wait (<= 0: the record is late). Starts a record."""
        if self._end is None:
            self._end = now + self.timeout
        return min(self.timeout, self._end - now)

    def received(self, octets: int) -> None:
        """``octets`` of the record arrived: the deadline moves by ``octets / min_rate``."""
        if self._end is not None and self.min_rate > 0:
            self._end += octets / self.min_rate
