"""POP3 reply lines and response codes, named once (RFC 1939, RFC 2449, RFC 3206).

Replies are ``+OK`` or ``-ERR`` and free text (RFC 1939 section 3); clients only look at the
status indicator and, with RESP-CODES (RFC 2449 section 8), at a bracketed code after it.
"""

from __future__ import annotations

import enum
from typing import Final

CRLF: Final = b"\r\n"
# RFC 1939 section 3: a multi-line response ends with a line holding a single ".".
END_MULTILINE: Final = b".\r\n"


class ResponseCode(enum.Enum):
    """Extended response codes (RFC 2449 section 8, RFC 3206)."""

    AUTH = b"AUTH"  # RFC 3206: the credentials are at fault
    SYS_TEMP = b"SYS/TEMP"  # RFC 3206: temporary system problem, try later
    SYS_PERM = b"SYS/PERM"  # RFC 3206: permanent system problem, ask an administrator
    IN_USE = b"IN-USE"  # RFC 2449 8.1.1: maildrop locked by another session
    LOGIN_DELAY = b"LOGIN-DELAY"  # RFC 2449 8.1.2: logging in again too soon


def ok(text: bytes = b"") -> bytes:
    return b"+OK " + text + CRLF if text else b"+OK" + CRLF


def err(text: bytes, code: ResponseCode | None = None) -> bytes:
    if code is None:
        return b"-ERR " + text + CRLF
    return b"-ERR [" + code.value + b"] " + text + CRLF


OK_PLAIN: Final = ok()
OK_USER: Final = ok(b"send PASS")
OK_STLS: Final = ok(b"begin TLS negotiation")  # RFC 2595 section 4
OK_CAPA: Final = ok(b"capability list follows")
OK_AUTH_LIST: Final = ok(b"supported mechanisms follow")
OK_BYE: Final = ok(b"postroom POP3 server signing off")
OK_TOP: Final = ok(b"top of message follows")

ERR_UNKNOWN: Final = err(b"unknown command")
ERR_BAD_STATE: Final = err(b"command not valid in this state")
ERR_SYNTAX: Final = err(b"syntax error")
ERR_LINE_TOO_LONG: Final = err(b"line too long")
ERR_TOO_MANY_ERRORS: Final = err(b"too many errors, closing connection")
ERR_NOT_POP3: Final = err(b"this is a POP3 server, not an HTTP server; closing connection")
ERR_NO_SUCH_MESSAGE: Final = err(b"no such message")  # RFC 1939 section 5 (LIST example)
ERR_DELETED: Final = err(b"message deleted")
ERR_INVALID_NUMBER: Final = err(b"invalid message number")
ERR_USER_FIRST: Final = err(b"send USER first")  # RFC 1939 section 7: PASS right after USER
ERR_APOP: Final = err(b"APOP not supported")
# RFC 2595 section 2.2 / RFC 3206: no password in clear before TLS.
ERR_PLAINTEXT: Final = err(b"plaintext authentication disallowed without TLS", ResponseCode.AUTH)
ERR_AUTH_FAILED: Final = err(b"authentication failed", ResponseCode.AUTH)
ERR_UNSUPPORTED_MECH: Final = err(b"unsupported authentication mechanism")
ERR_BASE64: Final = err(b"invalid base64")  # RFC 5034 section 4
ERR_AUTH_CANCELLED: Final = err(b"authentication cancelled")  # RFC 5034 section 4
ERR_AUTH_LINE_TOO_LONG: Final = err(b"authentication response too long")
ERR_TLS_ACTIVE: Final = err(b"TLS already active")
ERR_TLS_UNAVAILABLE: Final = err(b"STLS not available")
# RFC 1939 section 6: QUIT in UPDATE when the removal failed.
ERR_UPDATE_FAILED: Final = err(b"some deleted messages not removed", ResponseCode.SYS_TEMP)
ERR_UNAVAILABLE: Final = err(b"message not available", ResponseCode.SYS_TEMP)

# Default texts for LoginError, per response code.
LOGIN_ERROR_TEXT: Final = {
    ResponseCode.AUTH: b"authentication failed",
    ResponseCode.SYS_TEMP: b"temporary failure, try again later",
    ResponseCode.SYS_PERM: b"login not possible, contact your administrator",
    ResponseCode.IN_USE: b"maildrop already in use",
    ResponseCode.LOGIN_DELAY: b"logging in too often",
}
