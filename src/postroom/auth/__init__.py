"""Authentication: password hashing and SCRAM keys (passwords.py), the user directory."""
