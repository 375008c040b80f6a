"""LIST and LSUB answers as pure functions (RFC 9051 6.3.9, RFC 5258, RFC 6154, RFC 3348).

Patterns: the reference and the pattern are concatenated (RFC 9051 6.3.9), ``*`` matches
anything and ``%`` anything but the hierarchy delimiter "/". Names are compared exactly,
except that the INBOX part of INBOX and its children matches case-insensitively (RFC 9051
5.1: "INBOX" is case-insensitive), so ``LIST "" inb%`` finds INBOX.

Attributes (all cheap: one pass over the user's mailbox names):

* ``\\HasChildren`` / ``\\HasNoChildren`` on every existing mailbox (CHILDREN, RFC 3348;
  RFC 9051 makes them part of the base protocol);
* the special-use attribute (``\\Sent``, ``\\Trash``, ...) whenever a mailbox has one
  (RFC 6154 allows it without the SPECIAL-USE return option, and clients rely on it);
* ``\\Subscribed`` when the client selected or asked for subscription state;
* ``\\NonExistent`` for subscriptions whose mailbox no longer exists (RFC 5258 3.4).

The store always creates missing parents (``CREATE a/b`` creates ``a``), so
``\\Noselect`` only appears in LSUB for an unsubscribed parent of a subscribed name that
the pattern does not reach directly (RFC 3501 6.3.9).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from postroom.proto.imap.utf7 import DELIMITER, INBOX, normalize_inbox
from postroom.store.api import Mailbox


@dataclass(slots=True)
class Entry:
    """One LIST/LSUB line: name, attributes, CHILDINFO, and whether it exists."""

    name: str
    attributes: list[str] = field(default_factory=list)
    childinfo: tuple[str, ...] = ()
    exists: bool = True


def _regex(pattern: str, inbox_ci: bool) -> re.Pattern[str]:
    out: list[str] = []
    literal_prefix = True
    for i, ch in enumerate(pattern):
        if ch == "*":
            out.append(".*")
            literal_prefix = False
        elif ch == "%":
            out.append("[^/]*")
            literal_prefix = False
        elif inbox_ci and literal_prefix and i < len(INBOX) and ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


class Matcher:
    """Does a mailbox name match any of the LIST patterns?"""

    __slots__ = ("_exact", "_inbox")

    def __init__(self, patterns: Iterable[str]) -> None:
        pats = [normalize_inbox(p) for p in patterns]
        self._exact = [_regex(p, False) for p in pats]
        self._inbox = [_regex(p, True) for p in pats]

    def __call__(self, name: str) -> bool:
        if any(r.fullmatch(name) for r in self._exact):
            return True
        if name == INBOX or name.startswith(INBOX + DELIMITER):
            return any(r.fullmatch(name) for r in self._inbox)
        return False


def canonical_pattern(reference: str, pattern: str) -> str:
    """RFC 9051 6.3.9: the reference is a prefix of the pattern."""
    return reference + pattern if reference else pattern


def ancestors(name: str) -> Iterable[str]:
    """``a/b/c`` → ``a``, ``a/b``."""
    pos = name.find(DELIMITER)
    while pos > 0:
        yield name[:pos]
        pos = name.find(DELIMITER, pos + 1)


def _order(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: (n != INBOX, n))


def list_entries(
    mailboxes: Sequence[Mailbox],
    subscriptions: Iterable[str],
    patterns: Iterable[str],
    *,
    select: frozenset[str] = frozenset(),
    returns: frozenset[str] = frozenset(),
) -> list[Entry]:
    """The LIST response entries for already-canonical ``patterns``."""
    match = Matcher(patterns)
    by_name = {mb.name: mb for mb in mailboxes}
    parents: set[str] = set()
    for name in by_name:
        parents.update(ancestors(name))
    subscribed = set(subscriptions)
    sub_parents: set[str] = set()
    for name in subscribed:
        sub_parents.update(ancestors(name))
    want_subscribed = "SUBSCRIBED" in select or "SUBSCRIBED" in returns
    recursive = "RECURSIVEMATCH" in select

    if "SUBSCRIBED" in select:
        candidates = set(subscribed)
        if recursive:
            # RFC 5258 3.5 / 4: a parent that does not itself satisfy SUBSCRIBED is listed
            # (with CHILDINFO) only to stand for a subscribed descendant the patterns do
            # not reach: for each subscribed name the pattern misses, its nearest matching
            # ancestor. A name the patterns list itself needs no stand-in, so with the
            # patterns (a/b a/b/c) and only a/b/c subscribed, a/b is not listed (Dovecot
            # and imaptest listext agree).
            for name in subscribed:
                if match(name):
                    continue
                for parent in reversed(list(ancestors(name))):
                    if match(parent):
                        candidates.add(parent)
                        break
    elif "SPECIAL-USE" in select:
        candidates = {n for n, mb in by_name.items() if mb.special_use}
        if recursive:
            candidates |= {a for n in candidates for a in ancestors(n) if a in by_name}
    else:
        candidates = set(by_name)

    out: list[Entry] = []
    for name in _order(candidates):
        if not match(name):
            continue
        entry = Entry(name)
        mb = by_name.get(name)
        if mb is None:
            entry.exists = False
            entry.attributes.append("\\NonExistent")  # RFC 5258 3.4 (implies \Noselect)
        else:
            entry.attributes.append("\\HasChildren" if name in parents else "\\HasNoChildren")
            if mb.special_use:
                entry.attributes.append(mb.special_use)
        if want_subscribed and name in subscribed:
            entry.attributes.append("\\Subscribed")
        if recursive and "SUBSCRIBED" in select and name in sub_parents:
            entry.childinfo = ("SUBSCRIBED",)  # RFC 5258 4
        out.append(entry)
    return out


def lsub_entries(subscriptions: Iterable[str], pattern: str) -> list[Entry]:
    """LSUB (RFC 3501 6.3.9): subscribed names, plus ``\\Noselect`` parents that ``%``
    reaches while the subscribed child itself is beyond the pattern."""
    match = Matcher([pattern])
    subscribed = set(subscriptions)
    out: dict[str, Entry] = {}
    for name in subscribed:
        if match(name):
            out[name] = Entry(name)
        else:
            for parent in ancestors(name):
                if parent not in subscribed and parent not in out and match(parent):
                    out[parent] = Entry(parent, ["\\Noselect"], exists=False)
    return [out[n] for n in _order(out)]
