"""PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login), server and client side.

Both carry the password itself, so both are only offered under TLS unless the administrator
allows plaintext (``PLAINTEXT_MECHANISMS``); the server ends with a ``VerifyPassword`` step.
"""

from __future__ import annotations

from postroom.proto.sasl.base import (
    INVALID_CREDENTIALS,
    MALFORMED,
    Challenge,
    ClientMechanism,
    ClientStep,
    Failure,
    Response,
    ServerMechanism,
    ServerStep,
    Success,
    VerifyPassword,
    decode_field,
    prep_username,
)


class _PasswordMechanism(ServerMechanism):
    """PLAIN and LOGIN both end by asking the shell to check a password."""

    def __init__(self) -> None:
        super().__init__()
        self._verify: VerifyPassword | None = None

    def _verify_step(self, username: str, password: str, authzid: str) -> ServerStep:
        prepared = prep_username(username)
        if prepared is None or not password:
            return Failure(MALFORMED)
        if authzid and authzid not in (username, prepared):
            # We do not support acting as another user (proxy authorization).
            return Failure("proxy authorization not supported")
        self._verify = VerifyPassword(prepared, password, authzid)
        return self._verify

    def _on_password(self, ok: bool) -> ServerStep:
        assert self._verify is not None
        if not ok:
            return Failure(INVALID_CREDENTIALS)
        return Success(self._verify.username, self._verify.authzid)


class PlainServer(_PasswordMechanism):
    """PLAIN (RFC 4616): one message ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"

    def _on_start(self, initial_response: bytes | None) -> ServerStep:
        if initial_response is None:
            return Challenge(b"")  # RFC 4616 section 2: empty challenge, then the message
        return self._on_response(initial_response)

    def _on_response(self, data: bytes) -> ServerStep:
        parts = data.split(b"\x00")
        if len(parts) != 3:  # exactly two NULs
            return Failure(MALFORMED)
        authzid, authcid, passwd = (decode_field(p) for p in parts)
        if authzid is None or authcid is None or passwd is None or not authcid:
            return Failure(MALFORMED)
        return self._verify_step(authcid, passwd, authzid)


class LoginServer(_PasswordMechanism):
    """LOGIN (draft-murchison-sasl-login): prompts "Username:" then "Password:"."""

    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self._username: str | None = None

    def _on_start(self, initial_response: bytes | None) -> ServerStep:
        if initial_response is None:
            return Challenge(b"Username:")
        return self._on_response(initial_response)

    def _on_response(self, data: bytes) -> ServerStep:
        value = decode_field(data)
        if value is None or not value:
            return Failure(MALFORMED)
        if self._username is None:
            self._username = value
            return Challenge(b"Password:")
        return self._verify_step(self._username, value, "")


class PlainClient(ClientMechanism):
    name = "PLAIN"

    def __init__(self, username: str, password: str, authzid: str = "") -> None:
        super().__init__(username, password)
        self._authzid = authzid
        self._sent = False

    def _message(self) -> bytes:
        self._sent = True
        return b"\x00".join(
            s.encode("utf-8") for s in (self._authzid, self.username, self._password)
        )

    def _initial(self) -> bytes | None:
        return self._message()

    def _on_challenge(self, challenge: bytes) -> ClientStep:
        if self._sent or challenge:
            return Failure("unexpected challenge")
        return Response(self._message())


class LoginClient(ClientMechanism):
    """LOGIN: the username as initial response (when allowed), then answers by order."""

    name = "LOGIN"

    def __init__(self, username: str, password: str) -> None:
        super().__init__(username, password)
        self._answers = 0

    def _next(self) -> bytes | None:
        self._answers += 1
        if self._answers == 1:
            return self.username.encode("utf-8")
        if self._answers == 2:
            return self._password.encode("utf-8")
        return None

    def _initial(self) -> bytes | None:
        return self._next()

    def _on_challenge(self, challenge: bytes) -> ClientStep:
        answer = self._next()
        if answer is None:
            return Failure("unexpected challenge")
        return Response(answer)
