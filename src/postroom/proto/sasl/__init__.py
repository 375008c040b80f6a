"""SASL mechanisms (RFC 4422) as challenge/response objects shared by SMTP, IMAP and POP3.

Theory of operation
-------------------
A mechanism object knows one SASL mechanism's messages and nothing about the protocol that
carries them: the protocol core does the framing (base64, ``334 `` / ``+ `` prefixes, the
``*`` cancel line, ``=`` for an empty initial response) and hands the mechanism raw, decoded
bytes. Every call returns a *step* telling the caller what to do next:

``Challenge(data)``
    send ``data`` to the client as a challenge and pass its answer to :meth:`respond`.
``NeedCredentials(username)``
    (SCRAM) look up the user's stored :class:`ScramCredentials` (a store read, so I/O the
    mechanism must not do) and pass them, or ``None`` for an unknown user, to
    :meth:`provide_credentials`. An unknown user is not revealed: the exchange goes on with
    a fake salt derived from the username and a server secret, and fails at the end exactly
    like a wrong password does.
``VerifyPassword(username, password, authzid)``
    (PLAIN, LOGIN) check the password (``auth.passwords.verify_password`` in a thread) and
    report with :meth:`password_verified`.
``Success(username, authzid, data)`` / ``Failure(reason, data)``
    the end. ``Failure.data`` is an optional RFC 5802 ``e=`` server-final message, for shells
    that want to show it; ``Success.data`` is only set when the mechanism was built with
    ``success_data=True`` (protocols that carry "additional data with success", RFC 4422
    section 5). By default SCRAM's server-final ``v=`` message is sent as one more
    challenge, answered by an empty response, which every protocol supports.

A shell (or a protocol core) drives a server mechanism like this::

    mech = server_mechanism("SCRAM-SHA-256", nonce_source=urandom_nonce, secret=key)
    step = mech.start(initial_response)           # bytes, or None when absent
    while True:
        match step:
            case Challenge(data):
                step = mech.respond(read_client_answer(data))
            case NeedCredentials(username):
                step = mech.provide_credentials(store.scram_credentials(username))
            case VerifyPassword(username, password):
                step = mech.password_verified(check(username, password))
            case Success(username):
                break                              # logged in as username
            case Failure(reason):
                break                              # answer "authentication failed"

Mechanisms never raise for anything the peer sent: malformed input is a ``Failure``. Calling
a method in the wrong order (a bug in the caller) raises :class:`SaslUsageError`.

Client mechanisms (outbound SMTP to a smarthost, and tests) use the same style: ``start()``
returns the initial :class:`Response` (``data=None`` when there is none), ``respond(challenge)``
the next one, and ``finish(data)`` is called when the protocol reports success: for SCRAM it
fails unless the server proved that it knows the password too (mutual authentication).

No clock, socket, storage or randomness in here: SCRAM nonces come from the
``nonce_source`` callable the caller passes (:func:`urandom_nonce` in production, a fixed
string in tests). Secrets are never part of a ``repr``.

Layout: ``base.py`` (limits, steps, base classes), ``saslprep.py`` (RFC 4013),
``plain.py`` (PLAIN and LOGIN), ``scram.py`` (SCRAM-SHA-256 and its stored credentials);
this file holds the two factories and re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Callable

from postroom.proto.sasl.base import (
    DEFAULT_SCRAM_ITERATIONS,
    MAX_FIELD,
    PLAINTEXT_MECHANISMS,
    SCRAM_NAME,
    SCRAM_SALT_LEN,
    SERVER_MECHANISMS,
    Challenge,
    ClientMechanism,
    ClientStep,
    Failure,
    NeedCredentials,
    Response,
    SaslUsageError,
    ServerMechanism,
    ServerStep,
    Success,
    VerifyPassword,
)
from postroom.proto.sasl.plain import LoginClient, LoginServer, PlainClient, PlainServer
from postroom.proto.sasl.saslprep import SaslPrepError, saslprep
from postroom.proto.sasl.scram import (
    ScramCredentials,
    ScramSha256Client,
    ScramSha256Server,
    urandom_nonce,
)

__all__ = [
    "DEFAULT_SCRAM_ITERATIONS",
    "MAX_FIELD",
    "PLAINTEXT_MECHANISMS",
    "SCRAM_SALT_LEN",
    "SERVER_MECHANISMS",
    "Challenge",
    "ClientMechanism",
    "ClientStep",
    "Failure",
    "LoginClient",
    "LoginServer",
    "NeedCredentials",
    "PlainClient",
    "PlainServer",
    "Response",
    "SaslPrepError",
    "SaslUsageError",
    "ScramCredentials",
    "ScramSha256Client",
    "ScramSha256Server",
    "ServerMechanism",
    "ServerStep",
    "Success",
    "VerifyPassword",
    "client_mechanism",
    "saslprep",
    "server_mechanism",
    "urandom_nonce",
]


def server_mechanism(
    name: str,
    *,
    nonce_source: Callable[[], str] | None = None,
    secret: bytes | None = None,
    iterations: int = DEFAULT_SCRAM_ITERATIONS,
    success_data: bool = False,
) -> ServerMechanism:
    """A fresh server mechanism for one exchange; ``name`` is case-insensitive.

    SCRAM needs ``nonce_source`` (e.g. :func:`urandom_nonce`) and ``secret`` (a stable
    server key, used to fake salts for unknown users); ``iterations`` must be the count new
    credentials get (``auth.passwords.scram_credentials``), so fake and real ones look alike.
    The caller checks ``name`` against the mechanisms it offers first: an unknown name here
    is a :class:`SaslUsageError`.
    """
    upper = name.upper()
    if upper == "PLAIN":
        return PlainServer()
    if upper == "LOGIN":
        return LoginServer()
    if upper == SCRAM_NAME:
        if nonce_source is None or secret is None:
            raise SaslUsageError("SCRAM-SHA-256 needs nonce_source and secret")
        return ScramSha256Server(
            nonce_source=nonce_source,
            secret=secret,
            iterations=iterations,
            success_data=success_data,
        )
    raise SaslUsageError(f"unsupported SASL mechanism {name!r}")


# --------------------------------------------------------------------------------------


def client_mechanism(
    name: str,
    username: str,
    password: str,
    *,
    authzid: str = "",
    nonce_source: Callable[[], str] | None = None,
) -> ClientMechanism:
    """A client mechanism for one exchange. SCRAM needs ``nonce_source``."""
    upper = name.upper()
    if upper == "PLAIN":
        return PlainClient(username, password, authzid)
    if upper == "LOGIN":
        return LoginClient(username, password)
    if upper == SCRAM_NAME:
        if nonce_source is None:
            raise SaslUsageError("SCRAM-SHA-256 needs nonce_source")
        return ScramSha256Client(username, password, nonce_source=nonce_source, authzid=authzid)
    raise SaslUsageError(f"unsupported SASL mechanism {name!r}")
