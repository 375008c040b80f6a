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

from collections.abc import Callable, Iterable, Sequence
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


def _collapse(pattern: str) -> str:
    """Merge runs of wildcards: a run holding a ``*`` is ``*``, a run of ``%`` is ``%``.

    Equivalent (``*`` matches everything a ``%`` or an empty string does), and what makes
    ``*%*%*%...x`` as cheap as ``*x``.
    """
    if "**" not in pattern and "%%" not in pattern and "*%" not in pattern \
            and "%*" not in pattern:
        return pattern
    out: list[str] = []
    for ch in pattern:
        if ch in "*%" and out and out[-1] in "*%":
            if ch == "*":
                out[-1] = "*"
            continue
        out.append(ch)
    return "".join(out)


class _Glob:
    """One LIST pattern, compiled for matching in time linear in the name.

    No backtracking anywhere (issue 9: the regex ``.*[^/]*.*[^/]*...x`` took 90 s to fail
    on one name). After :func:`_collapse`:

    * without wildcards: string equality; a literal prefix then one trailing ``*`` or
      ``%``: ``startswith`` (and no "/" after it for ``%``);
    * only ``*`` wildcards: the literal pieces are found left to right with ``str.find``,
      each at its leftmost place after the previous one (the classic greedy glob match,
      exact because ``*`` can absorb whatever lies between two pieces), the last one
      anchored at the end;
    * anything else: a Thompson NFA simulated with bit sets (bit ``i`` set: the first
      ``i`` pattern characters match the name so far), a few integer operations per
      character of the name, whatever the pattern.

    A name shorter than the pattern's literal characters, or missing one of its literal
    pieces, is refused before any of that.
    """

    __slots__ = ("_accept", "_literals", "_mode", "_need", "_pattern", "_pieces", "_pct",
                 "_star", "_table", "_wild")

    def __init__(self, pattern: str) -> None:
        p = _collapse(pattern)
        self._pattern = p
        wild = [i for i, ch in enumerate(p) if ch in "*%"]
        self._literals = [piece for piece in _split_wild(p) if piece]
        self._need = sum(map(len, self._literals))
        self._pieces: list[str] = []
        if not wild:
            self._mode = "exact"
        elif wild == [len(p) - 1]:
            self._mode = "prefix*" if p[-1] == "*" else "prefix%"
        elif "%" not in p:
            self._mode = "star"
            self._pieces = p.split("*")
        else:
            self._mode = "nfa"
        table: dict[str, int] = {}
        star = pct = 0
        for i, ch in enumerate(p):
            if ch == "*":
                star |= 1 << i
            elif ch == "%":
                pct |= 1 << i
            else:
                table[ch] = table.get(ch, 0) | 1 << i
        self._table, self._star, self._pct = table, star, pct
        self._wild = star | pct
        self._accept = 1 << len(p)

    def __call__(self, name: str) -> bool:
        mode = self._mode
        p = self._pattern
        if mode == "exact":
            return name == p
        if mode == "prefix*":
            return name.startswith(p[:-1])
        if mode == "prefix%":
            n = len(p) - 1
            return name.startswith(p[:-1]) and DELIMITER not in name[n:]
        if len(name) < self._need or not all(piece in name for piece in self._literals):
            return False
        if mode == "star":
            return self._star_match(name)
        return self._nfa(name)

    def _star_match(self, name: str) -> bool:
        pieces = self._pieces
        first, last = pieces[0], pieces[-1]
        if not name.startswith(first):
            return False
        pos = len(first)
        end = len(name) - len(last)
        if end < pos or not name.endswith(last):
            return False
        for piece in pieces[1:-1]:
            found = name.find(piece, pos, end)
            if found < 0:
                return False
            pos = found + len(piece)
        return True

    def _nfa(self, name: str) -> bool:
        table, star, wild = self._table, self._star, self._wild
        get = table.get
        states = 1 | (1 & wild) << 1  # closure of the start: a wildcard may match ""
        for ch in name:
            loop = states & (star if ch == DELIMITER else wild)
            states = (states & get(ch, 0)) << 1 | loop
            states |= (states & wild) << 1  # (after _collapse no two wildcards are adjacent)
            if not states:
                return False
        return bool(states & self._accept)


def _split_wild(pattern: str) -> list[str]:
    return pattern.replace("%", "*").split("*")


def _inbox_folded(pattern: str) -> str:
    """``pattern`` with the letters of its literal prefix that can stand for INBOX's
    first five characters upper-cased (RFC 9051 5.1: INBOX is case-insensitive)."""
    out = list(pattern)
    for i, ch in enumerate(pattern[: len(INBOX)]):
        if ch in "*%":
            break
        if ch.isascii() and ch.isalpha():
            out[i] = ch.upper()
    return "".join(out)


class Matcher:
    """Does a mailbox name match any of the LIST patterns? (RFC 9051 6.3.9)

    ``*`` matches any characters, ``%`` any but the hierarchy delimiter "/". Names are
    compared exactly, except that the INBOX part of INBOX and its children matches
    case-insensitively. Time per name is linear in its length (see :class:`_Glob`).
    """

    __slots__ = ("_exact", "_inbox")

    def __init__(self, patterns: Iterable[str]) -> None:
        pats = [normalize_inbox(p) for p in patterns]
        self._exact = [_Glob(p) for p in pats]
        # A name in the INBOX tree is stored as "INBOX...": matching it against the
        # pattern with its prefix upper-cased is the case-insensitive comparison.
        self._inbox = [_Glob(f) for p in pats if (f := _inbox_folded(p)) != p]

    def __call__(self, name: str) -> bool:
        if any(g(name) for g in self._exact):
            return True
        if self._inbox and (name == INBOX or name.startswith(INBOX + DELIMITER)):
            return any(g(name) for g in self._inbox)
        return False


def names_to_match(mailboxes: Iterable[str], subscriptions: Iterable[str]) -> set[str]:
    """Every name :func:`list_entries` or :func:`lsub_entries` may test against a pattern."""
    names = set(mailboxes)
    for name in subscriptions:
        names.add(name)
        names.update(ancestors(name))
    return names


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
    match: Callable[[str], bool] | None = None,
) -> list[Entry]:
    """The LIST response entries for already-canonical ``patterns``.

    ``match``: the answers of ``Matcher(patterns)`` when the caller already has them
    (the IMAP shell computes them in slices for users with very many mailboxes).
    """
    if match is None:
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


def lsub_entries(subscriptions: Iterable[str], pattern: str,
                 match: Callable[[str], bool] | None = None) -> list[Entry]:
    """LSUB (RFC 3501 6.3.9): subscribed names, plus ``\\Noselect`` parents that ``%``
    reaches while the subscribed child itself is beyond the pattern."""
    if match is None:
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
