"""Mailbox commands: CREATE (USE), DELETE, RENAME (INBOX too), SUBSCRIBE, UNSUBSCRIBE,
LIST (wildcards, LIST-EXTENDED, SPECIAL-USE, LIST-STATUS, CHILDREN), LSUB, NAMESPACE,
STATUS, modified UTF-7 vs UTF-8 names, name attacks and isolation between users."""

from __future__ import annotations

import re

from imap_util import deliver, simple

from support.server import Server


def names(listing: list[bytes]) -> list[str]:
    out = []
    for line in listing:
        m = re.search(rb'"/" (.*?)(?: \(".*)?$', line.rstrip(b"\r\n"))
        assert m is not None, line
        name = m.group(1)
        if name.startswith(b'"'):
            name = name[1:-1]
        out.append(name.decode())
    return out


def test_default_mailboxes_and_special_use(user: str, connect) -> None:
    m = connect(user)
    typ, data = m.list()
    assert typ == "OK"
    assert names(data) == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in data
    typ, data = m.list('""', "%")
    assert len(data) == 6
    typ, data = m.list('""', '""')  # the delimiter query
    assert data == [b'(\\Noselect) "/" ""']


def test_create_hierarchy_delete_and_children(user: str, connect) -> None:
    m = connect(user)
    assert m.create("Projects/2024/Q1")[0] == "OK"
    _, data = m.list('""', "Projects*")
    assert names(data) == ["Projects", "Projects/2024", "Projects/2024/Q1"]
    assert b'(\\HasChildren) "/" "Projects"' in data
    _, data = m.list("Projects/", "%")  # reference + pattern
    assert names(data) == ["Projects/2024"]
    typ, data = m.create("Projects")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    typ, data = m.create("INBOX")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    typ, data = m.delete("Projects")
    assert typ == "NO" and b"[HASCHILDREN]" in data[0]
    assert m.delete("Projects/2024/Q1")[0] == "OK"
    typ, data = m.delete("Projects/2024/Q1")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    typ, data = m.delete("INBOX")
    assert typ == "NO"
    assert m.create("Trailing/")[0] == "OK"  # trailing delimiter: intent to have children
    assert "Trailing" in names(m.list('""', "Trailing")[1])


def test_create_special_use(user: str, raw) -> None:
    c = raw(user)
    c.ok("CREATE Important (USE (\\Flagged))")
    listing = c.ok('LIST "" Important')
    assert listing == [b'* LIST (\\HasNoChildren \\Flagged) "/" "Important"\r\n']
    _, done = c.cmd("CREATE Other (USE (\\Sent))")  # \Sent is taken by Sent
    assert b"NO [USEATTR]" in done
    _, done = c.cmd("CREATE Bad (USE (\\Bogus))")
    assert b"NO [USEATTR]" in done
    listing = c.ok('LIST (SPECIAL-USE) "" "*"')
    assert sorted(names(listing)) == ["Archive", "Drafts", "Important", "Junk", "Sent", "Trash"]
    listing = c.ok('LIST "" "*" RETURN (SPECIAL-USE)')
    assert b'(\\HasNoChildren \\Trash) "/" "Trash"' in b"".join(listing)


def test_rename_and_inbox_rename(server: Server, user: str, connect) -> None:
    m = connect(user)
    m.create("Old/Child")
    assert m.rename("Old", "New")[0] == "OK"
    assert names(m.list('""', "New*")[1]) == ["New", "New/Child"]
    assert m.list('""', "Old*")[1] == [None]
    typ, data = m.rename("Missing", "X")
    assert typ == "NO" and b"NONEXISTENT" in data[0]
    typ, data = m.rename("New", "Sent")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    # INBOX: its messages move to the new mailbox, INBOX stays (empty).
    deliver(server, user, simple("one"))
    deliver(server, user, simple("two"))
    assert m.rename("INBOX", "Saved")[0] == "OK"
    assert m.select("INBOX")[1] == [b"0"]
    assert m.select("Saved")[1] == [b"2"]
    _, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"one" in data[0][1] and b"two" in data[2][1]


def test_subscriptions_and_lsub(user: str, connect, raw) -> None:
    m = connect(user)
    m.create("Lists/python")
    assert m.subscribe("Lists/python")[0] == "OK"
    assert m.subscribe("Ghost")[0] == "OK"  # allowed even if it does not exist
    defaults = ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]  # subscribed at creation
    typ, data = m.lsub('""', "*")
    assert sorted(names(data)) == sorted(defaults + ["Ghost", "Lists/python"])
    typ, data = m.lsub('""', "L%")
    assert data == [b'(\\Noselect) "/" "Lists"']
    typ, data = m.lsub('""', "G%")
    assert data == [b'() "/" "Ghost"']
    c = raw(user)
    listing = c.ok('LIST (SUBSCRIBED) "" "*"')
    assert b'* LIST (\\NonExistent \\Subscribed) "/" "Ghost"\r\n' in listing
    assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "Lists/python"\r\n' in listing
    listing = c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert b'* LIST (\\HasChildren) "/" "Lists" ("CHILDINFO" ("SUBSCRIBED"))\r\n' in listing
    listing = c.ok('LIST "" ("INBOX" "Lists/*") RETURN (SUBSCRIBED CHILDREN)')
    assert names(listing) == ["INBOX", "Lists/python"]
    assert b"\\Subscribed" in listing[1]
    assert m.unsubscribe("Ghost")[0] == "OK"
    assert "Ghost" not in names(m.lsub('""', "*")[1])


def test_list_status_and_status(server: Server, user: str, connect, raw) -> None:
    deliver(server, user, simple("a"))
    deliver(server, user, simple("b"))
    m = connect(user)
    m.select("INBOX")
    m.store("1", "+FLAGS", "(\\Seen \\Deleted)")
    typ, data = m.status("INBOX", "(MESSAGES UNSEEN DELETED UIDNEXT UIDVALIDITY SIZE RECENT HIGHESTMODSEQ APPENDLIMIT)")
    assert typ == "OK"
    text = data[0].decode()
    assert "MESSAGES 2" in text and "UNSEEN 1" in text and "DELETED 1" in text and "UIDNEXT 3" in text
    size = int(re.search(r"SIZE (\d+)", text).group(1))
    assert size == sum(len(b) for b in server.messages(user))
    assert re.search(r"HIGHESTMODSEQ \d+", text) and "APPENDLIMIT 52428800" in text
    typ, data = m.status("Nope", "(MESSAGES)")
    assert typ == "NO"
    c = raw(user)
    listing = c.ok('LIST "" "%" RETURN (STATUS (MESSAGES UNSEEN))')
    i = listing.index(b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n')
    assert listing[i + 1] == b'* STATUS "INBOX" (MESSAGES 2 UNSEEN 1)\r\n'
    assert sum(1 for line in listing if line.startswith(b"* STATUS")) == 6


def test_namespace(user: str, connect) -> None:
    m = connect(user)
    # personal, and the other users' namespace of shared mailboxes (access.py)
    assert m.namespace() == ("OK", [b'(("" "/")) (("Shared/" "/")) NIL'])


def test_international_names_utf7_and_utf8(user: str, raw) -> None:
    c = raw(user)
    c.ok('CREATE "Entw&APw-rfe"')  # modified UTF-7 for "Entwürfe"
    assert c.ok('LIST "" "Entw*"') == [b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"\r\n']
    _, done = c.cmd('CREATE "Bad&AGE-"')  # base64 for plain ASCII "a": not canonical
    assert done.split(b" ", 3)[1:3] == [b"NO", b"[CANNOT]"]
    c2 = raw(c_user := user)  # a second session speaking UTF-8
    untagged = c2.ok("ENABLE UTF8=ACCEPT")
    assert untagged == [b"* ENABLED UTF8=ACCEPT\r\n"]
    assert c2.ok('LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entwürfe"\r\n'.encode()]
    c2.ok('CREATE "日本語"'.encode())
    assert c.ok('LIST "" "&ZeVnLIqe-"') == [b'* LIST (\\HasNoChildren) "/" "&ZeVnLIqe-"\r\n']
    assert c_user == user


def test_name_attacks_are_names_not_paths(server: Server, user: str, raw) -> None:
    c = raw(user)
    for bad in ('"../etc"', '"/etc/passwd"', '"a//b"', '"a/../b"', '"."', '"x*y"'):
        _, done = c.cmd(f"CREATE {bad}")
        assert b" NO " in done and b"[CANNOT]" in done, (bad, done)
    _, done = c.cmd('CREATE ""')
    assert done.split(b" ", 3)[1:3] == [b"NO", b"[CANNOT]"]
    c.send(b'a CREATE {3}\r\n')
    assert c.line().startswith(b"+")
    c.send(b"a\x00b\r\n")
    assert c.line().startswith(b"a BAD")
    c.ok('CREATE "root~"')  # "~" elsewhere is an ordinary character
    c.ok('SELECT "root~"')
    _, done = c.cmd('SELECT "../../../etc/passwd"')
    assert b"NO" in done
    assert not (server.root / "etc").exists()
    listing = c.ok('LIST "" "*"')
    assert "root~" in names(listing)
    assert not any(n.startswith(("/", "~")) or ".." in n for n in names(listing))


def test_users_see_only_their_mailboxes(server: Server, user: str, connect) -> None:
    other = user.replace("@", "-other@")
    server.add_user(other)
    a = connect(user)
    b = connect(other)
    a.create("Private")
    assert "Private" not in names(b.list()[1])
    typ, _ = b.select("Private")
    assert typ == "NO"
    assert b.status("Private", "(MESSAGES)")[0] == "NO"
    assert b.delete("Private")[0] == "NO"
    assert "Private" in names(a.list()[1])
