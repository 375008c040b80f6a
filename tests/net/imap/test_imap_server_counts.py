"""Per-user counts a client controls (issue 9, hardening part 4): mailboxes, subscriptions
and ACL entries. Without a bound, CREATE in a loop (or one name a thousand levels deep)
grows every LIST, STATUS and NOTIFY of the account, and the database, without end."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from support.server import Server

MAX = 30  # limits.mailboxes_per_user here; every user starts with 6 (INBOX, Sent, ...)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = f'[limits]\nauth_delay = "10ms"\nmailboxes_per_user = {MAX}\n'
    with Server(tmp_path_factory.mktemp("imap-counts"), roles=("imap", "imaps", "mx"), extra=extra).start() as srv:
        yield srv


def _names(c) -> list[bytes]:
    return [line for line in c.ok('LIST "" "*"') if line.startswith(b"* LIST")]


def _pipelined(c, commands: list[bytes]) -> list[bytes]:
    """Send every command at once (as a hostile client would), return the tagged replies."""
    tags = [c.tag() for _ in commands]
    c.send(b"".join(b"%s %s\r\n" % (t.encode(), cmd) for t, cmd in zip(tags, commands, strict=True)))
    return [c.until_tagged(t)[1] for t in tags]


def test_create_in_a_loop_stops_at_the_limit(server: Server, user: str, raw) -> None:
    c = raw(user)
    have = len(_names(c))
    assert have == 6
    done = _pipelined(c, [b"CREATE loop%d" % i for i in range(MAX + 20)])
    ok = [d for d in done if b" OK " in d]
    refused = [d for d in done if b" NO " in d]
    assert len(ok) == MAX - have and len(refused) == 20 + have, done
    assert all(re.fullmatch(rb"t\d+ NO \[LIMIT\] .*\r\n", d) for d in refused), refused[0]
    assert len(_names(c)) == MAX
    # A deleted mailbox makes room again.
    c.ok("DELETE loop0")
    c.ok("CREATE again")
    _, refused_again = c.cmd("CREATE one-more")
    assert b"NO [LIMIT]" in refused_again


def test_deep_names_count_every_level(server: Server, user: str, raw) -> None:
    """CREATE a/b/c/... creates every missing superior name (RFC 9051 6.3.4): one command
    of 30 levels (32 is the name policy's bound) is 30 mailboxes. Refused whole; nothing
    is created."""
    c = raw(user)
    deep = "/".join("d" for _ in range(30))
    _, done = c.cmd(f"CREATE {deep}")
    assert b"NO [LIMIT]" in done, done
    assert len(_names(c)) == 6
    c.ok("CREATE top")
    # RENAME creates the new name's superiors too.
    _, done = c.cmd("RENAME top " + "/".join(f"r{i}" for i in range(MAX)))
    assert b"NO [LIMIT]" in done, done
    assert len(_names(c)) == 7
    # Renaming INBOX makes a new mailbox (its messages move there): counted as well.
    c.ok("CREATE " + "/".join(f"f{i}" for i in range(MAX - 7)))
    assert len(_names(c)) == MAX
    _, done = c.cmd("RENAME INBOX old-inbox")
    assert b"NO [LIMIT]" in done, done
    c.ok("RENAME top moved")  # a plain rename adds nothing


def test_subscriptions_are_bounded_too(server: Server, user: str, raw) -> None:
    """RFC 9051 6.3.7: a client may subscribe to names that do not exist, so the mailbox
    bound does not cover subscriptions: they stop at the same number."""
    c = raw(user)
    subscribed = len([x for x in c.ok('LSUB "" "*"') if x.startswith(b"* LSUB")])
    done = _pipelined(c, [b"SUBSCRIBE ghost%d" % i for i in range(MAX + 5)])
    assert sum(b" OK " in d for d in done) == MAX - subscribed, done
    assert all(b"NO [LIMIT]" in d for d in done if b" OK " not in d)
    assert len([x for x in c.ok('LSUB "" "*"') if x.startswith(b"* LSUB")]) == MAX
    c.ok("SUBSCRIBE ghost0")  # already subscribed: still fine
    c.ok("UNSUBSCRIBE ghost1")
    c.ok("SUBSCRIBE another")


def test_acl_entries_name_existing_users_only(server: Server, user: str, raw) -> None:
    """ACL entries are bounded by the directory: an identifier must be an existing user
    (or anyone/authenticated), so a SETACL loop over made-up names stores nothing."""
    c = raw(user)
    done = _pipelined(c, [b"SETACL INBOX nobody%d@example.test lr" % i for i in range(50)])
    assert all(b"NO [NONEXISTENT]" in d for d in done), done[0]
    acl = b"".join(c.ok("GETACL INBOX"))
    assert b"nobody" not in acl
