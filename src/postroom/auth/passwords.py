"""Password storage: argon2id hashes for PLAIN/LOGIN/USER-PASS, SCRAM-SHA-256 keys for SCRAM.

Both are derived once, when a password is set, and stored side by side: the argon2id hash
verifies a password a client sends in clear (under TLS); the SCRAM credentials let the server
check a SCRAM proof without ever seeing the password (RFC 5802 section 3). Neither can be
turned back into the password.

Everything here is **blocking CPU work**: one argon2id hash or verify takes about 40 ms on
the 2-core development machine (parameters below, measured with ``PasswordHasher.verify``
in a loop: t=3/32 MiB/p=2 → 39 ms; RFC 9106's t=3/64 MiB/p=4 → 93 ms; t=2/19 MiB/p=1 → 18 ms).
A shell must run them off the event loop (``await asyncio.to_thread(verify_password, h, pw)``),
and should bound how many run at once, since each holds 32 MiB while it runs.

Passwords are prepared with SASLprep (RFC 4013) before hashing and verifying, so the same
password typed with a different Unicode composition verifies in both paths; text SASLprep
refuses is hashed as given (argon2) or refused (SCRAM, which requires it).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from typing import Final

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from postroom.proto.sasl import (
    DEFAULT_SCRAM_ITERATIONS,
    SCRAM_SALT_LEN,
    SaslPrepError,
    ScramCredentials,
    saslprep,
)

__all__ = [
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "DEFAULT_SCRAM_ITERATIONS",
    "PASSWORD_ALPHABET",
    "ScramCredentials",
    "app_password_digest",
    "generate_app_password",
    "generate_password",
    "secret_digest",
    "hash_password",
    "needs_rehash",
    "scram_credentials",
    "verify_password",
]

# ~40 ms per verify on 2 cores (see module docstring); raise these as hardware improves:
# needs_rehash() then tells the login path to re-hash old passwords transparently.
ARGON2_TIME_COST: Final = 3
ARGON2_MEMORY_KIB: Final = 32 * 1024
ARGON2_PARALLELISM: Final = 2

_HASHER: Final = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)

# No look-alikes (0/O/o, 1/l/I): 56 symbols, log2(56) * 20 ≈ 116 bits for 20 characters.
PASSWORD_ALPHABET: Final = "23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"


def _prepare(password: str) -> str:
    try:
        return saslprep(password)
    except SaslPrepError:
        return password


def hash_password(password: str) -> str:
    """An argon2id PHC string (``$argon2id$v=19$m=...``) for the database. Blocking, ~40 ms."""
    if not password:
        raise ValueError("empty password")
    return _HASHER.hash(_prepare(password))


@functools.cache
def _dummy_hash() -> str:
    return _HASHER.hash("postroom dummy password")


def verify_password(hashed: str | None, password: str) -> bool:
    """True when ``password`` matches ``hashed``. Blocking, ~40 ms. Never raises.

    Pass ``hashed=None`` for an unknown user: a full verify still runs (against a dummy
    hash) so that the reply takes as long as for a real user with a wrong password.
    Comparison is constant-time (argon2's own). A malformed or foreign hash is False.
    """
    try:
        if hashed is None:
            _HASHER.verify(_dummy_hash(), _prepare(password) + "\x00")
            return False
        return _HASHER.verify(hashed, _prepare(password))
    except (VerificationError, InvalidHashError, ValueError, TypeError, UnicodeError):
        return False


def needs_rehash(hashed: str) -> bool:
    """True when ``hashed`` was made with other parameters (or is not ours): after a
    successful login the shell re-hashes the password it just verified and stores it."""
    try:
        return _HASHER.check_needs_rehash(hashed)
    except (InvalidHashError, ValueError, TypeError):
        return True


def scram_credentials(
    password: str,
    salt: bytes | None = None,
    iterations: int = DEFAULT_SCRAM_ITERATIONS,
) -> ScramCredentials:
    """SCRAM-SHA-256 keys for ``password`` (a random 16-byte salt unless given). ~2 ms.

    The password is SASLprep'd as a stored string (RFC 5802 section 2.2, RFC 4013):
    raises ``SaslPrepError`` (a ValueError) for text SASLprep prohibits, so set-password
    can refuse it. Store ``.to_string()``; read back with ``ScramCredentials.from_string``.
    """
    if not password:
        raise ValueError("empty password")
    if iterations < 4096:  # RFC 7677 section 4
        raise ValueError("SCRAM-SHA-256 needs at least 4096 iterations")
    return ScramCredentials.derive(
        password, os.urandom(SCRAM_SALT_LEN) if salt is None else salt, iterations
    )


def generate_password(length: int = 20) -> str:
    """A strong random password from an unambiguous alphabet (~116 bits at 20 chars)."""
    if length < 12:
        raise ValueError("generated passwords are at least 12 characters")
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


# -- generated secrets: app passwords, API tokens, session ids -----------------------------
#
# These are never chosen by people: postroom generates them with >= 116 bits of entropy,
# so a fast hash is as safe as argon2 (nobody can enumerate 2**116 candidates), and a
# digest can be looked up in the store directly instead of verified row by row.


def secret_digest(secret: str) -> str:
    """The SHA-256 hex digest stored in place of a generated secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


APP_PASSWORD_GROUPS: Final = 4
APP_PASSWORD_GROUP_LEN: Final = 5


def generate_app_password() -> str:
    """A per-device password shown once, in groups for typing on a phone: ``ab3de-...``
    (20 symbols of :data:`PASSWORD_ALPHABET`, about 116 bits)."""
    raw = generate_password(APP_PASSWORD_GROUPS * APP_PASSWORD_GROUP_LEN)
    n = APP_PASSWORD_GROUP_LEN
    return "-".join(raw[i : i + n] for i in range(0, len(raw), n))


def app_password_digest(password: str) -> str | None:
    """The digest to look up for a password a client sent, or None when it cannot be an
    app password (so ordinary passwords cost no store read). Dashes and spaces are
    ignored: people type the groups with or without them."""
    raw = password.replace("-", "").replace(" ", "")
    if len(raw) != APP_PASSWORD_GROUPS * APP_PASSWORD_GROUP_LEN:
        return None
    if any(c not in PASSWORD_ALPHABET for c in raw):
        return None
    return secret_digest(raw)
