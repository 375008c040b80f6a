"""The network shell: the only code that awaits sockets."""
