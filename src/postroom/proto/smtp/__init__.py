"""Sans-IO SMTP: replies, envelope grammar, the server core and dot-stuffing.

The server shell needs only what is re-exported here; ``replies`` (named Reply constants)
and ``grammar`` (paths, parameters, xtext) are imported as modules. The client core lives
in ``client.py`` and is not imported by this package on purpose (it pulls in more).
"""

from postroom.proto.smtp.events import (
    CLOSED,
    DECISION_EVENTS,
    NEED_DATA,
    AuthAborted,
    AuthResponse,
    AuthStart,
    Event,
    Hello,
    MailFrom,
    MessageComplete,
    MessageRefused,
    RcptTo,
    Recipient,
    Reset,
    Sentinel,
    StartTls,
)
from postroom.proto.smtp.replies import Reply, SmtpError, SmtpUsageError
from postroom.proto.smtp.server import CloseReason, ServerConfig, ServerConnection, State

__all__ = [
    "CLOSED",
    "DECISION_EVENTS",
    "NEED_DATA",
    "AuthAborted",
    "AuthResponse",
    "AuthStart",
    "CloseReason",
    "Event",
    "Hello",
    "MailFrom",
    "MessageComplete",
    "MessageRefused",
    "RcptTo",
    "Recipient",
    "Reply",
    "Reset",
    "Sentinel",
    "ServerConfig",
    "ServerConnection",
    "SmtpError",
    "SmtpUsageError",
    "StartTls",
    "State",
]
