"""Keys for SEARCH SENT*, SORT (RFC 5256, RFC 5957) and THREAD (RFC 5256 REFERENCES).

They are computed once by :func:`postroom.message.scan` and stored in the summary, so that
sorting or threading 10,000 messages reads no message bytes at all.
"""

from __future__ import annotations

import email.utils
import re
import unicodedata
from datetime import date, datetime, timedelta, timezone

from postroom.message.address import Address
from postroom.message.encoded import decode_raw, decode_words

__all__ = [
    "MAX_REFERENCES",
    "base_subject",
    "casemap",
    "display_key",
    "mailbox_key",
    "msg_ids",
    "parse_date",
]

# Message-IDs kept from a References field (long threads carry hundreds; spam, millions).
MAX_REFERENCES = 1000


def casemap(text: str) -> str:
    """The i;unicode-casemap comparator's canonical form (RFC 5051 2).

    Titlecase every character, then decompose (NFKD); strings compare equal under the
    comparator exactly when their canonical forms are equal, and SORT orders by the UTF-8
    octets of this form.
    """
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFKD", "".join(map(_simple_title, text)))


def _simple_title(char: str) -> str:
    """Simple (one-to-one, UnicodeData.txt) titlecase mapping, which RFC 5051 uses;
    ``str.title`` applies the full SpecialCasing mappings ("ß" → "Ss")."""
    titled = char.title()
    return titled if len(titled) == 1 else char


def parse_date(raw: bytes) -> tuple[int, int] | None:
    """RFC 5322 3.3 date-time → (POSIX seconds, UTC offset in minutes); None if unusable.

    Lenient about obsolete forms (two-digit years, zone names) via the stdlib parser; a
    missing zone counts as UTC. RFC 5256 2.2: an unusable date makes the caller fall back to
    INTERNALDATE, which is why None is returned rather than a guess.
    """
    m = _USUAL_DATE.fullmatch(raw)
    if m is not None:
        # The form nearly all mail has: the fields the stdlib parser would find, without
        # its Python-level tokenising and the aware datetime (40 k -> 24 k instructions,
        # every message delivered).
        day, month, year, hour, minute, second, sign, zh, zm = m.groups()
        y, mo, d = int(year), _MONTHS[month], int(day)
        hh, mi, ss = int(hour), int(minute), int(second)
        offset = int(zh) * 3600 + int(zm) * 60
        if sign == b"-":
            offset = -offset
        if 1900 <= y <= 9000 and hh < 24 and mi < 60 and ss < 60 and -86400 < offset < 86400:
            # What the aware datetime below gives, without building it and its zone:
            # date() checks the day as datetime() does (ValueError: unusable).
            try:
                days = date(y, mo, d).toordinal() - _EPOCH_DAY
            except ValueError:
                return None
            return days * 86400 + hh * 3600 + mi * 60 + ss - offset, offset // 60
    else:
        try:
            parsed = email.utils.parsedate_tz(decode_raw(raw))
        except Exception:  # noqa: BLE001 - the stdlib parser has raised on odd input before
            return None
        if parsed is None:
            return None
        y, mo, d, hh, mi, ss = parsed[:6]
        offset = parsed[9] or 0
    try:
        zone = timezone(timedelta(seconds=offset))
        moment = datetime(y, mo, d, hh, mi, ss, tzinfo=zone)
        return int(moment.timestamp()), offset // 60
    except (ValueError, OverflowError, TypeError):
        return None


_EPOCH_DAY = date(1970, 1, 1).toordinal()
# RFC 5322 3.3 date-time as mailers write it: "Mon, 7 Dec 2026 06:16:58 +0000", maybe
# with a comment after the zone. Whatever else goes to email.utils.parsedate_tz, which
# gives these the same fields (a test compares the two).
_MONTHS = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1)}
_USUAL_DATE = re.compile(
    rb"\s*(?:[A-Za-z]{3},[ \t]*)?(\d{1,2})[ \t]+(%s)[ \t]+(\d{4})[ \t]+(\d\d):(\d\d):(\d\d)"
    rb"[ \t]+([+-])(\d\d)(\d\d)(?:[ \t]+\([^()\\]*\))?\s*" % b"|".join(_MONTHS)
)


def sent_datetime(value: tuple[int, int] | None) -> datetime | None:
    """The stored (seconds, offset) pair as an aware datetime in the sender's zone."""
    if value is None:
        return None
    seconds, minutes = value
    try:
        return datetime.fromtimestamp(seconds, timezone(timedelta(minutes=minutes)))
    except (ValueError, OverflowError, OSError):
        return None


_ANGLE_ID = re.compile(rb"<([^<>]*)>")
_ID_SPACE = re.compile(rb"[ \t\r\n]+")


def msg_ids(raw: bytes, limit: int = MAX_REFERENCES) -> list[str]:
    """Message-IDs in a Message-ID/In-Reply-To/References value, without angle brackets.

    RFC 5322 3.6.4 msg-id = "<" id-left "@" id-right ">"; folding whitespace inside the
    brackets is removed, phrases between them (old In-Reply-To style) are ignored. A value
    with no brackets that is one ``x@y`` token counts too: some mailers omit them.
    """
    out: list[str] = []
    for m in _ANGLE_ID.finditer(raw):
        ident = _ID_SPACE.sub(b"", m.group(1))
        if ident:
            out.append(decode_raw(ident))
            if len(out) >= limit:
                break
    if not out:
        bare = raw.strip(b" \t\r\n")
        if bare and 0x40 in bare and not _ID_SPACE.search(bare):
            out.append(decode_raw(bare))
    return out


# RFC 5256 5 (ABNF): subj-blob, subj-refwd, subj-leader, subj-fwd-hdr/trl
_BLOB = r"\[[^\[\]]*\][ \t]*"
_LEADER = re.compile(
    r"(?:(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:|[ \t]+)", re.IGNORECASE
)
_BLOB_RE = re.compile(_BLOB)
_SPACES = re.compile(r"[ \t\r\n]+")


def base_subject(subject: str) -> str:
    """RFC 5256 2.1 base subject (before the comparator's case mapping).

    *subject* must already be decoded (step 1 converts encoded words to UTF-8). Works on
    indexes rather than slicing, so hostile subjects ("Re: " a million times, thousands of
    "[blob]"s) stay linear.
    """
    # (1) tabs and continuations become spaces, runs of spaces become one
    s = _SPACES.sub(" ", subject)
    start, end = 0, len(s)
    while True:
        # (2) remove trailing "(fwd)" and whitespace, repeatedly
        while end > start:
            if s[end - 1] == " ":
                end -= 1
            elif end - start >= 5 and s[end - 5 : end].lower() == "(fwd)":
                end -= 5
            else:
                break
        # (3)-(5) remove leaders and blobs until nothing changes
        while True:
            m = _LEADER.match(s, start, end)
            if m is not None and m.end() > start:
                start = m.end()
                continue
            # No leader here. Removing blobs cannot make one appear (a leader may itself
            # start with blobs, and all of those were just tried), so only blobs remain to
            # strip: (4) each one while a non-empty subj-base follows it.
            while True:
                m = _BLOB_RE.match(s, start, end)
                if m is None or m.end() >= end:
                    break
                start = m.end()
            break
        # (6) "[fwd: ... ]" wrapping: unwrap and start again at (2)
        if end - start >= 6 and s[start : start + 5].lower() == "[fwd:" and s[end - 1] == "]":
            start += 5
            end -= 1
            continue
        return s[start:end]


def mailbox_key(addresses: tuple[Address, ...] | None) -> str:
    """RFC 5256 SORT FROM/TO/CC key: addr-mailbox of the first address, case-mapped.

    "First address" is the first address structure of the ENVELOPE field, so for group
    syntax (``team: a@x, b@y;``) it is the group-start marker, whose addr-mailbox holds
    the group name (RFC 3501 7.4.2): ``Cc: team: blah@x.org;`` sorts as "team", as in
    Dovecot.
    """
    for a in addresses or ():
        return casemap(decode_raw(a.mailbox or b""))
    return ""


def display_key(addresses: tuple[Address, ...] | None) -> str:
    """RFC 5957 DISPLAYFROM/DISPLAYTO key: decoded display name, else the addr-spec, of
    the first address structure; for a group that is its name (``To: empty:;`` sorts as
    "empty"), the same fallback SORT TO uses."""
    for a in addresses or ():
        if a.name:
            name = decode_words(a.name).strip()
            if name:
                return casemap(name)
        spec = a.mailbox or b""
        if a.host:
            spec += b"@" + a.host
        return casemap(decode_raw(spec))
    return ""
