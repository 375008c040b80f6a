"""STORE and UID STORE (RFC 9051 6.4.6) with UNCHANGEDSINCE (RFC 7162 3.1.3).

One store write changes every targeted message (``store.store_flags``: one modseq for the
whole command). The answer reports each message's new flags in an untagged FETCH unless
``.SILENT`` was given; under CONDSTORE the FETCH carries MODSEQ, and even ``.SILENT``
reports the new MODSEQ of the messages that changed (RFC 7162 3.1.3). Messages that were
modified after UNCHANGEDSINCE are left alone and listed in ``OK [MODIFIED ...]`` (sequence
numbers for STORE, UIDs for UID STORE). The session remembers which modseqs it reported
itself, so the change notification of its own write does not echo them a second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.proto.imap import responses
from postroom.proto.imap.commands import Store, StoreMode
from postroom.proto.imap.grammar import ImapPeerError
from postroom.net.imap.access import TEXT_NOPERM, flag_mask
from postroom.net.imap.selected import Known
from postroom.store.api import ALL_FLAGS, MAX_KEYWORD_LENGTH, FlagChange, StoreResult, names_to_flags

if TYPE_CHECKING:
    from postroom.net.imap.selected import SelectedMailbox
    from postroom.net.imap.session import ImapSession

_MODES = {StoreMode.REPLACE: "replace", StoreMode.ADD: "add", StoreMode.REMOVE: "remove"}
MAX_KEYWORDS_PER_STORE = 64


async def store(s: ImapSession, cmd: Store) -> bytes:
    view = s.selected
    assert view is not None
    if view.readonly:
        raise ImapPeerError("The mailbox is read-only", status="NO", code=responses.READ_ONLY,
                            tag=cmd.tag)
    positions = view.positions(cmd.seqset, cmd.uid)
    if cmd.unchanged_since is not None:
        s.enable_condstore()  # RFC 7162 3.1: the first CONDSTORE command enables it
    bits, keywords = names_to_flags(cmd.flags)
    if len(keywords) > MAX_KEYWORDS_PER_STORE or any(len(k) > MAX_KEYWORD_LENGTH for k in keywords):
        raise ImapPeerError("Too many or too long keywords", status="NO", code=responses.LIMIT,
                            tag=cmd.tag)
    mode = _MODES[cmd.mode]
    # RFC 4314 4: \Seen needs "s", \Deleted "t", other flags and keywords "w"; flags the
    # user may not change stay as they are, and only a STORE that asks for changes none of
    # which it may make fails. One that asks for nothing (+FLAGS () or -FLAGS ()) changes
    # nothing and succeeds, as without ACL (imaptest stress).
    mask, keywords_ok = flag_mask(view.rights)
    touched = bits | (ALL_FLAGS if mode == "replace" else 0)
    asked = touched or keywords or mode == "replace"
    if asked and not (touched & mask or keywords_ok and (keywords or mode == "replace")):
        raise ImapPeerError(TEXT_NOPERM, status="NO", code=responses.NOPERM, tag=cmd.tag)
    uids = view.uids_at(positions)
    if not uids:
        return responses.ok(cmd.tag, "STORE completed (nothing to do)")
    change = FlagChange(mode, bits, keywords, mask=mask, keywords_allowed=keywords_ok)
    result = await s.store.store_flags(view.mailbox_id, uids, change, cmd.unchanged_since)
    view.note_reported(result.changed)
    view.update_flags(result.changed)
    view.own_write(result.changed)
    # RFC 9051 7.3.5: the set of flags changed, and the client hears it before any FETCH
    # shows a new keyword: its own, and any another session set on these messages since
    # this session last heard of them (the store's answer carries those too). A keyword
    # named in the command joins the list whatever the mode, as in Dovecot (imaptest's
    # own_flags checks that STORE created it).
    fresh = keywords_ok and not view.keywords.issuperset(keywords)
    if fresh:
        view.keywords.update(keywords)
    line = view.announce(result.changed + result.unchanged)
    if line is None and fresh:
        line = view.flags_response()
    if line is not None:
        s.write(line)
    changed = {m.uid for m in result.changed}
    condstore = s.condstore
    for m in sorted(result.changed + result.unchanged, key=lambda m: m.uid):
        seq = view.seq_of(m.uid)
        if seq is None:
            continue
        # RFC 7162 3.1: once CONDSTORE is on, every untagged FETCH a STORE causes carries
        # UID and MODSEQ, not only those of UID STORE.
        uid = b"UID %d " % m.uid if cmd.uid or condstore else b""
        modseq = b" MODSEQ (%d)" % m.modseq if condstore else b""
        if not cmd.silent:
            flags = " ".join(view.flag_names(m, s.rev1)).encode("utf-8")
            s.write(b"* %d FETCH (%sFLAGS (%s)%s)\r\n" % (seq, uid, flags, modseq))
        elif condstore and m.uid in changed:
            s.write(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, uid, m.modseq))
    if result.failed_uids:
        failed = sorted(result.failed_uids)
        if not cmd.uid:
            failed = [seq for seq in (view.seq_of(u) for u in failed) if seq is not None]
        return responses.ok(cmd.tag, "Conditional STORE failed",
                            responses.code_modified(failed))
    if not cmd.uid and len(result.changed) + len(result.unchanged) < len(uids):
        _ghosts(s, cmd, view, uids, result, change)
    return responses.ok(cmd.tag, ("UID STORE" if cmd.uid else "STORE") + " completed")


def _ghosts(s: ImapSession, cmd: Store, view: SelectedMailbox, uids: list[int],
            result: StoreResult, change: FlagChange) -> None:
    """Messages another session expunged that this client has not been told about yet
    keep their sequence numbers until it is (RFC 9051 7.5.1), so STORE treats them as
    ghosts: the view's last known flags get the change and the client hears them, as
    for any other message (RFC 2180 4.2.3; imaptest own_flags expects the FETCH). The
    store has nothing left to change; under CONDSTORE the FETCH carries the highest
    mod-sequence the session knows, as the message has none of its own any more. The
    EXPUNGE follows at the next chance. The rights apply as to the others: flags outside
    ``change.mask`` and, without "w", keywords stay as they were."""
    mode, mask = change.mode, change.mask
    bits, keywords = change.flags & mask, change.keywords
    done = {m.uid for m in result.changed} | {m.uid for m in result.unchanged}
    modseq = max([view.modseq, *(m.modseq for m in result.changed)])
    done.update(result.failed_uids)
    for uid in uids:
        if uid in done:
            continue
        seq = view.seq_of(uid)
        if seq is None:
            continue
        old_bits, old_kw = view.flags[seq - 1], view.kw.get(uid, ())
        if mode == "add":
            new_bits, new_kw = old_bits | bits, tuple(sorted({*old_kw, *keywords}))
        elif mode == "remove":
            new_bits, new_kw = old_bits & ~bits, tuple(k for k in old_kw if k not in keywords)
        else:
            new_bits, new_kw = old_bits & ~mask | bits, tuple(sorted(set(keywords)))
        if not change.keywords_allowed:
            new_kw = old_kw
        view.flags[seq - 1] = new_bits & 0xFF
        if new_kw:
            view.kw[uid] = new_kw
        else:
            view.kw.pop(uid, None)
        if s.condstore:
            tail = b" MODSEQ (%d)" % modseq
            head = b"UID %d " % uid
        else:
            tail = head = b""
        if not cmd.silent:
            flags = " ".join(view.flag_names(Known(uid, new_bits, new_kw), s.rev1)).encode("utf-8")
            s.write(b"* %d FETCH (%sFLAGS (%s)%s)\r\n" % (seq, head, flags, tail))
        elif s.condstore:
            s.write(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, head, modseq))


HANDLERS = {Store: store}
