"""Building blocks shared by every SASL mechanism: limits, errors, steps, base classes.

See the package docstring (``postroom.proto.sasl``) for how a shell drives a mechanism.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final

from postroom.proto.sasl.saslprep import SaslPrepError, saslprep

if TYPE_CHECKING:
    from postroom.proto.sasl.scram import ScramCredentials

# Mechanisms this module implements, strongest first (the order to advertise them in).
SERVER_MECHANISMS: Final = ("SCRAM-SHA-256", "PLAIN", "LOGIN")
# Mechanisms that send the password itself: only offered under TLS (RFC 4616 section 4,
# RFC 2595 section 2.2) unless the administrator allows plaintext.
PLAINTEXT_MECHANISMS: Final = frozenset({"PLAIN", "LOGIN"})

# RFC 4616 section 2: authzid, authcid and passwd "MUST accept up to 255 octets"; we accept
# exactly that much, so nothing unbounded reaches the password hasher.
MAX_FIELD: Final = 255
# A SCRAM client message is a few attributes; 2 KiB leaves room for long nonces/extensions.
MAX_SCRAM_MESSAGE: Final = 2048
# RFC 7677 section 4: at least 4096; the lookup-and-HMAC cost is on the client, so double it.
DEFAULT_SCRAM_ITERATIONS: Final = 8192
# Clients refuse servers asking for absurd PBKDF2 work (a malicious server could stall us).
MAX_SCRAM_ITERATIONS: Final = 10_000_000
SCRAM_SALT_LEN: Final = 16

SCRAM_NAME: Final = "SCRAM-SHA-256"


class SaslUsageError(Exception):
    """We misused the API (wrong call order, missing nonce source): a bug, not the peer."""


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``data`` (raw bytes; the protocol base64-encodes) and feed back the answer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """Look up the SCRAM credentials of ``username`` (SASLprep'd) and provide them."""

    username: str


@dataclass(frozen=True, slots=True)
class VerifyPassword:
    """Check ``password`` for ``username``; report with ``password_verified(ok)``.

    ``username`` has been SASLprep'd (RFC 4616 section 2); ``password`` is as the client
    sent it (``auth.passwords`` prepares it the same way on hashing and verifying).
    """

    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated as ``username``. ``data``: additional data with success, if enabled."""

    username: str
    authzid: str = ""
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """Authentication failed. ``data``: an RFC 5802 ``e=`` server-final message, if any."""

    reason: str
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """Client side: send ``data`` (None: no initial response). Secret-bearing, so no repr."""

    data: bytes | None = field(repr=False)


ServerStep = Challenge | NeedCredentials | VerifyPassword | Success | Failure
ClientStep = Response | Failure

INVALID_CREDENTIALS: Final = "invalid credentials"
MALFORMED: Final = "malformed message"


def decode_field(data: bytes) -> str | None:
    """UTF-8 decode a field of at most MAX_FIELD octets, or None."""
    if len(data) > MAX_FIELD:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def prep_username(name: str) -> str | None:
    try:
        prepared = saslprep(name)
    except SaslPrepError:
        return None
    return prepared or None


# --------------------------------------------------------------------------------------
# Server mechanisms
# --------------------------------------------------------------------------------------


class _Expect(enum.Enum):
    START = "start"
    RESPONSE = "respond"
    CREDENTIALS = "provide_credentials"
    PASSWORD = "password_verified"
    DONE = "nothing (the exchange is over)"


_NEXT: Final[dict[type, _Expect]] = {
    Challenge: _Expect.RESPONSE,
    NeedCredentials: _Expect.CREDENTIALS,
    VerifyPassword: _Expect.PASSWORD,
    Success: _Expect.DONE,
    Failure: _Expect.DONE,
}


class ServerMechanism:
    """Base of the server mechanisms: enforces the call order from the steps it returned."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._expect = _Expect.START

    @property
    def finished(self) -> bool:
        """True once Success or Failure has been returned."""
        return self._expect is _Expect.DONE

    def _call(self, expected: _Expect) -> None:
        if self._expect is not expected:
            raise SaslUsageError(
                f"{self.name}: called {expected.value}() but expected {self._expect.value}()"
            )

    def _advance(self, step: ServerStep) -> ServerStep:
        self._expect = _NEXT[type(step)]
        return step

    def start(self, initial_response: bytes | None = None) -> ServerStep:
        """Begin. ``None``: no initial response; ``b""``: an empty one (treated the same)."""
        self._call(_Expect.START)
        return self._advance(self._on_start(initial_response or None))

    def respond(self, data: bytes) -> ServerStep:
        """The client's (decoded) answer to the last :class:`Challenge`."""
        self._call(_Expect.RESPONSE)
        return self._advance(self._on_response(data))

    def provide_credentials(self, credentials: ScramCredentials | None) -> ServerStep:
        """Answer :class:`NeedCredentials`: the stored credentials, or None (unknown user)."""
        self._call(_Expect.CREDENTIALS)
        return self._advance(self._on_credentials(credentials))

    def password_verified(self, ok: bool) -> ServerStep:
        """Answer :class:`VerifyPassword` with the outcome of the check."""
        self._call(_Expect.PASSWORD)
        return self._advance(self._on_password(ok))

    def _on_start(self, initial_response: bytes | None) -> ServerStep:
        raise NotImplementedError

    def _on_response(self, data: bytes) -> ServerStep:
        raise NotImplementedError

    def _on_credentials(self, credentials: ScramCredentials | None) -> ServerStep:
        raise SaslUsageError(f"{self.name} does not ask for credentials")

    def _on_password(self, ok: bool) -> ServerStep:
        raise SaslUsageError(f"{self.name} does not ask for password checks")


# --------------------------------------------------------------------------------------
# Client mechanisms
# --------------------------------------------------------------------------------------


class ClientMechanism:
    """Base of the client mechanisms (outbound SMTP AUTH, tests)."""

    name: ClassVar[str] = ""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password
        self._started = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} username={self.username!r}>"

    def start(self, initial: bool = True) -> Response:
        """The initial response; ``initial=False`` (or a mechanism without one): data None."""
        if self._started:
            raise SaslUsageError("start() called twice")
        self._started = True
        return Response(self._initial() if initial else None)

    def respond(self, challenge: bytes) -> ClientStep:
        """Answer one server challenge (raw bytes)."""
        if not self._started:
            raise SaslUsageError("respond() before start()")
        return self._on_challenge(challenge)

    def finish(self, data: bytes | None = None) -> Success | Failure:
        """The protocol reported success (``data``: additional data with success, if any)."""
        if data:
            return Failure("unexpected additional data with success")
        return Success(self.username)

    def _initial(self) -> bytes | None:
        return None

    def _on_challenge(self, challenge: bytes) -> ClientStep:
        raise NotImplementedError
