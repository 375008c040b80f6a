"""Submission: the header ``From:`` must name one address the login owns.

Why: the envelope sender is checked at MAIL (``553 5.7.1``), but what a recipient sees is
the header ``From:``. Without this check any user could submit a message "From:" the
boss, a bank or another user, and our DKIM signature would vouch for it. RFC 6409 8 lets a
submission server enforce its policy on the message; RFC 5322 3.6 asks for exactly one
``From:`` field.

The rule (also in docs/operations.md, "Who may send as whom"):

* at most one ``From:`` field, holding exactly one address (no second mailbox, no group,
  no field without an address): otherwise ``550 5.7.1``. A message with no ``From:`` at
  all gets ``From: <envelope sender>`` added (``deliver.submission_fixups``), which the
  MAIL check has already found owned;
* that address must be owned by the login as :meth:`Directory.may_send_as` decides (own
  address and ``+tag``, an alias that reaches the user, a send-as grant): otherwise
  ``550 5.7.1``.

This is one small function on purpose: the end of data also runs the message checks of
other policies (DKIM signing, inbound SPF/DKIM/DMARC), and each stays separate.
"""

from __future__ import annotations

from postroom.auth.directory import Directory
from postroom.deliver import header_fields
from postroom.message.address import parse_address_list
from postroom.message.headers import unfold
from postroom.proto.smtp import replies as R
from postroom.proto.smtp.replies import Reply
from postroom.store.api import User


def from_addresses(message: bytes) -> list[str] | None:
    """The addresses of the message's ``From:`` fields (``[]``: there is none); None when
    a field holds no address, a group, or an address without a domain (never acceptable
    as an author)."""
    out: list[str] = []
    for name, start, end in header_fields(message):
        if name != b"from":
            continue
        value = message[start:end]
        addresses = parse_address_list(unfold(value[value.index(b":") + 1 :]))
        if not addresses:
            return None
        for addr in addresses:
            if addr.is_group_marker or not addr.mailbox or not addr.host:
                return None
            out.append((addr.mailbox + b"@" + addr.host).decode("utf-8", "replace"))
    return out


async def from_header_refusal(message: bytes, user: User, directory: Directory) -> Reply | None:
    """None when ``user`` may submit ``message`` as far as its ``From:`` goes, else the
    reply to refuse it with (see the module docstring)."""
    addresses = from_addresses(message)
    if addresses == []:
        return None  # no From: field at all: submission_fixups adds the sender's
    if addresses is None or len(addresses) != 1:
        return R.FROM_NOT_SINGLE
    if not await directory.may_send_as(user, addresses[0]):
        return R.FROM_NOT_OWNED
    return None
