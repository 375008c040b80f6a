"""Sans-IO protocol cores: bytes in, events and replies out; no sockets, clocks or storage."""
