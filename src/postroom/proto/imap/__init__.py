"""IMAP4rev2/rev1 sans-IO core: command parser, response serializer, mailbox-name codec."""
