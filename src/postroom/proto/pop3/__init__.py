"""Sans-IO POP3 server (RFC 1939, 2449, 2595, 3206, 5034).

``server.py`` holds the session state machine and its theory of operation (how a shell
drives it); ``events.py`` the events and answer types; ``message.py`` the wire form of
messages (sizes, byte-stuffing, TOP); ``replies.py`` the reply lines and response codes.
"""

from postroom.proto.pop3.events import (
    NEED_DATA,
    Authenticated,
    Closed,
    Commit,
    CredentialsRequest,
    Event,
    LoginError,
    MaildropItem,
    NeedData,
    PassRequest,
    Pop3State,
    Retrieve,
    StartTls,
)
from postroom.proto.pop3.message import (
    byte_stuff,
    normalize,
    retr_body,
    top_body,
    top_part,
    wire_size,
)
from postroom.proto.pop3.replies import ResponseCode
from postroom.proto.pop3.server import Pop3Server, Pop3Settings, Pop3UsageError

__all__ = [
    "NEED_DATA",
    "Authenticated",
    "Closed",
    "Commit",
    "CredentialsRequest",
    "Event",
    "LoginError",
    "MaildropItem",
    "NeedData",
    "PassRequest",
    "Pop3Server",
    "Pop3Settings",
    "Pop3State",
    "Pop3UsageError",
    "ResponseCode",
    "Retrieve",
    "StartTls",
    "byte_stuff",
    "normalize",
    "retr_body",
    "top_body",
    "top_part",
    "wire_size",
]
