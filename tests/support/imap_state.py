"""Everything an IMAP account holds, read with imaplib, for comparing two servers.

``account_state`` logs in, lists every selectable folder, EXAMINEs each (read-only) and
fetches ``UID FLAGS INTERNALDATE BODY.PEEK[]`` of every message. Folders are keyed by their
hierarchy levels (split on the server's delimiter), so a Dovecot account with "." and a
postroom account with "/" compare directly. Used by the import, export and backup tests.
"""

from __future__ import annotations

import datetime
import imaplib
import re
import ssl
from dataclasses import dataclass

from postroom.proto.imap.utf7 import decode_utf7, encode_utf7

_LIST = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>"(?:[^"\\]|\\.)*"|NIL) ?(?P<name>.*)$')
_UID = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_DATE = re.compile(rb'INTERNALDATE "([^"]+)"')


@dataclass(frozen=True)
class Message:
    uid: int
    flags: frozenset[str]
    internaldate: int
    data: bytes

    def content(self) -> tuple[frozenset[str], int, bytes]:
        """What must survive a migration (UIDs are renumbered by the target)."""
        return self.flags, self.internaldate, self.data


State = dict[tuple[str, ...], list[Message]]


def _unquote(raw: bytes) -> bytes:
    if raw.startswith(b'"') and raw.endswith(b'"'):
        return re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return raw


def parse_date(text: bytes) -> int:
    when = datetime.datetime.strptime(text.decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    return int(when.timestamp())


def connect(
    port: int,
    user: str,
    password: str,
    *,
    host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    starttls: bool = False,
) -> imaplib.IMAP4:
    if tls is not None and not starttls:
        conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, port, ssl_context=tls, timeout=30)
    else:
        conn = imaplib.IMAP4(host, port, timeout=30)
        if starttls:
            conn.starttls(tls)
    conn.login(user, password)
    return conn


def folders(conn: imaplib.IMAP4) -> dict[tuple[str, ...], bytes]:
    """Selectable folders: levels -> the name to send (modified UTF-7, unquoted)."""
    typ, data = conn.list()
    assert typ == "OK", data
    out: dict[tuple[str, ...], bytes] = {}
    items = list(data)
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if item is None:
            continue
        if isinstance(item, tuple):  # the name came as a literal
            head, raw_name = item
            m = _LIST.match(head.rsplit(b" {", 1)[0] + b" ")
        else:
            m = _LIST.match(item)
            raw_name = _unquote(m.group("name")) if m else b""
        assert m is not None, item
        attrs = m.group("attrs").lower()
        if b"\\noselect" in attrs or b"\\nonexistent" in attrs:
            continue
        delim = _unquote(m.group("delim")).decode() if m.group("delim") != b"NIL" else ""
        name = decode_utf7(raw_name)
        levels = tuple(name.split(delim)) if delim else (name,)
        if levels[0].upper() == "INBOX":
            levels = ("INBOX", *levels[1:])
        out[levels] = raw_name
    return out


def folder_messages(conn: imaplib.IMAP4, raw_name: bytes) -> list[Message]:
    typ, data = conn.select(b'"' + raw_name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"',
                            readonly=True)
    assert typ == "OK", data
    if int(data[0] or 0) == 0:
        return []
    typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    assert typ == "OK", data
    out: list[Message] = []
    items = list(data)
    for i, item in enumerate(items):
        if not isinstance(item, tuple):
            continue
        head, body = item
        after = items[i + 1] if i + 1 < len(items) and isinstance(items[i + 1], bytes) else b""
        meta = head + b" " + after
        uid, flags, date = _UID.search(meta), _FLAGS.search(meta), _DATE.search(meta)
        assert uid and flags is not None and date, meta
        names = frozenset(f for f in flags.group(1).decode().split() if f.lower() != "\\recent")
        out.append(Message(int(uid.group(1)), names, parse_date(date.group(1)), body))
    return sorted(out, key=lambda m: m.uid)


def account_state(
    port: int,
    user: str,
    password: str,
    *,
    tls: ssl.SSLContext | None = None,
    starttls: bool = False,
) -> State:
    conn = connect(port, user, password, tls=tls, starttls=starttls)
    try:
        return {levels: folder_messages(conn, raw) for levels, raw in folders(conn).items()}
    finally:
        conn.logout()


def contents(state: State) -> dict[tuple[str, ...], list[tuple[frozenset[str], int, bytes]]]:
    """The state without UIDs, empty folders left out."""
    return {k: [m.content() for m in v] for k, v in state.items() if v}


def append(
    conn: imaplib.IMAP4, folder: str, data: bytes, flags: str = "", when: int | None = None
) -> None:
    """APPEND with flags and an INTERNALDATE (UTC) to ``folder`` (a Unicode name)."""
    date = None
    if when is not None:
        date = '"' + datetime.datetime.fromtimestamp(when, datetime.UTC).strftime(
            "%d-%b-%Y %H:%M:%S +0000") + '"'
    name = b'"' + encode_utf7(folder) + b'"'
    typ, resp = conn.append(name.decode("ascii"), f"({flags})" if flags else None, date, data)
    assert typ == "OK", resp
