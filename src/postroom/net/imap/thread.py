"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 4), as pure functions.

Input is one :class:`Item` per matching message, built from the parse summary (base
subject, sent date, Message-ID, References, In-Reply-To), so threading reads no message.
Output is the complete ``* THREAD ...`` response.

Everything is iterative: a thread of 10,000 replies is a 10,000-deep tree, far beyond
Python's recursion limit, so building, pruning, sorting and serialising walk explicit
stacks. Loops in hostile References headers are refused link by link, as the RFC says.

REFERENCES follows the RFC's steps: (1) link the References chain of every message and
make the last reference its parent (In-Reply-To when there is no References), never
creating a loop; (2) take the containers without parent; (4) prune empty dummies and
promote the children of dummies (not onto the root unless there is one); (5) sort by
sent date (a dummy takes its first child's); (6) merge root threads with the same base
subject; (7) sort every sibling list by date. Ties go by sequence number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

_REPLY = re.compile(
    r"^[ \t]*(?:\[[^\[\]]*\][ \t]*)*(?:re|fwd?)[ \t]*(?:\[[^\[\]]*\][ \t]*)?:"
    r"|\(fwd\)[ \t]*$|^[ \t]*\[fwd:",
    re.IGNORECASE,
)


def is_reply_or_forward(subject: str) -> bool:
    """Did base-subject extraction remove a reply/forward marker (RFC 5256 2.1)?"""
    return _REPLY.search(subject) is not None


@dataclass(frozen=True, slots=True)
class Item:
    number: int  # what the response shows: sequence number or UID
    seq: int  # tie-break order
    date: int  # sent date (POSIX seconds), INTERNALDATE when there is no usable Date
    subject: str  # base subject, case-mapped
    reply: bool = False
    message_id: str | None = None
    references: tuple[str, ...] = ()
    in_reply_to: str | None = None


@dataclass(eq=False, slots=True)
class _Node:
    item: Item | None = None
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)

    def key(self) -> tuple[int, int]:
        """Sort key: own date, or the first child's for a dummy (children sorted first)."""
        node = self
        while node.item is None and node.children:
            node = node.children[0]
        item = node.item
        return (item.date, item.seq) if item is not None else (0, 0)

    def subject_item(self) -> Item | None:
        return self.item if self.item is not None else (
            self.children[0].item if self.children else None
        )


def _link(parent: _Node, child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _is_ancestor(candidate: _Node, node: _Node) -> bool:
    """Is ``candidate`` ``node`` itself or one of its ancestors?"""
    cur: _Node | None = node
    while cur is not None:
        if cur is candidate:
            return True
        cur = cur.parent
    return False


def _walk(roots: Sequence[_Node]) -> Iterator[_Node]:
    stack = list(roots)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def _sort_all(roots: list[_Node]) -> None:
    """Sort every sibling list by date, deepest first (a dummy's key is its first child)."""
    order = list(_walk(roots))
    for node in reversed(order):
        node.children.sort(key=_Node.key)
    roots.sort(key=_Node.key)


def references(items: Sequence[Item]) -> list[_Node]:
    table: dict[str, _Node] = {}
    for n, item in enumerate(items):
        mid = item.message_id
        if mid is None or (mid in table and table[mid].item is not None):
            mid = f"\x00unique-{n}"  # missing or duplicate Message-ID: a thread of its own
        node = table.get(mid)
        if node is None:
            node = table[mid] = _Node()
        node.item = item
        refs = item.references or ((item.in_reply_to,) if item.in_reply_to else ())
        prev: _Node | None = None
        for ref in refs:
            ref_node = table.get(ref)
            if ref_node is None:
                ref_node = table[ref] = _Node()
            # 1A: link the chain, keeping existing links and refusing loops.
            if prev is not None and ref_node.parent is None and not _is_ancestor(ref_node, prev):
                _link(prev, ref_node)
            prev = ref_node
        # 1B: the last reference is the parent. An earlier parent (from a truncated
        # References of another message) is broken first, even when the new link cannot
        # be made because it would create a loop: then the message becomes a root.
        if node.parent is not None and node.parent is not prev:
            node.parent.children.remove(node)
            node.parent = None
        if prev is not None and node.parent is None and not _is_ancestor(node, prev):
            _link(prev, node)
    roots = [node for node in table.values() if node.parent is None]
    roots = _prune(roots)
    _sort_all(roots)
    return _merge_subjects(roots)


def _prune(roots: list[_Node]) -> list[_Node]:
    """Step 4: drop empty dummies, promote dummies' children (iteratively, bottom up)."""
    order = list(_walk(roots))
    for node in reversed(order):
        kept: list[_Node] = []
        for child in node.children:
            if child.item is None:
                if not child.children:
                    continue
                for grandchild in child.children:
                    grandchild.parent = node
                kept.extend(child.children)
            else:
                kept.append(child)
        node.children = kept
    out: list[_Node] = []
    for root in roots:
        if root.item is None:
            if not root.children:
                continue
            if len(root.children) == 1:
                child = root.children[0]
                child.parent = None
                out.append(child)
                continue
        out.append(root)
    return out


def _merge_subjects(roots: list[_Node]) -> list[_Node]:
    """Step 6: gather root threads that share a base subject; then sort (step 7)."""
    table: dict[str, _Node] = {}
    for root in roots:
        item = root.subject_item()
        if item is None or not item.subject:
            continue
        old = table.get(item.subject)
        # Prefer a dummy, then a message that is not a reply/forward (RFC 5256 4 step 6B).
        if old is None or (root.item is None and old.item is not None) or (
            old.item is not None and old.item.reply and root.item is not None
            and not root.item.reply
        ):
            table[item.subject] = root
    dummies: list[_Node] = []
    for root in roots:
        item = root.subject_item()
        if item is None or not item.subject or root.parent is not None:
            continue
        target = table[item.subject]
        if target is root:
            continue
        if root.item is None and target.item is None:
            for child in list(root.children):
                _link(target, child)
        elif target.item is None:
            _link(target, root)
        elif root.item is not None and root.item.reply and not target.item.reply:
            _link(target, root)
        else:
            dummy = _Node()
            dummies.append(dummy)
            _link(dummy, target)
            _link(dummy, root)
            table[item.subject] = dummy
    final = [
        n for n in (*roots, *dummies)
        if n.parent is None and (n.item is not None or n.children)
    ]
    _sort_all(final)
    return final


def ordered_subject(items: Sequence[Item]) -> list[_Node]:
    """ORDEREDSUBJECT: group by base subject, each group's first message is the parent."""
    groups: dict[str, list[Item]] = {}
    for item in sorted(items, key=lambda i: (i.subject, i.date, i.seq)):
        groups.setdefault(item.subject, []).append(item)
    roots: list[_Node] = []
    for members in groups.values():
        root = _Node(members[0])
        for item in members[1:]:
            child = _Node(item, parent=root)
            root.children.append(child)
        roots.append(root)
    roots.sort(key=_Node.key)
    return roots


def serialize(roots: Sequence[_Node]) -> bytes:
    """``* THREAD (1 2 (3)(4 5))(6)``: chains flat, branches as nested lists (RFC 5256 4).

    thread-list = "(" (thread-members / thread-nested) ")"; a node with one child
    continues the member chain, a node with several opens one nested list per child.
    """
    out: list[bytes] = [b"* THREAD "]
    stack: list[_Node | None] = list(reversed(roots))  # None closes a list
    while stack:
        node = stack.pop()
        if node is None:
            out.append(b")")
            continue
        out.append(b"(")
        members = False
        while node.item is not None:
            if members:
                out.append(b" ")
            out.append(b"%d" % node.item.number)
            members = True
            if len(node.children) != 1:
                break
            node = node.children[0]
        stack.append(None)
        if node.children:
            if members:
                out.append(b" ")
            stack.extend(reversed(node.children))
    out.append(b"\r\n")
    return b"".join(out)


def thread_response(algorithm: str, items: Sequence[Item]) -> bytes:
    roots = references(items) if algorithm == "REFERENCES" else ordered_subject(items)
    return serialize(roots)
