"""SCRAM-SHA-256 (RFC 5802, RFC 7677): stored credentials, server side and client side.

Without channel binding: we do not offer SCRAM-SHA-256-PLUS, so a client's "p=" is refused
and "y" (client could bind, thinks we cannot) is accepted (RFC 5802 section 6).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from postroom.proto.sasl.base import (
    DEFAULT_SCRAM_ITERATIONS,
    INVALID_CREDENTIALS,
    MALFORMED,
    MAX_FIELD,
    MAX_SCRAM_ITERATIONS,
    MAX_SCRAM_MESSAGE,
    SCRAM_NAME,
    SCRAM_SALT_LEN,
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
    prep_username,
)
from postroom.proto.sasl.saslprep import saslprep


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    # RFC 5802 section 3: SaltedPassword := Hi(Normalize(password), salt, i), Hi = PBKDF2.
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server stores for SCRAM-SHA-256: never the password (RFC 5802 section 3).

    ``to_string`` gives the database form
    ``SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>``.
    """

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def derive(cls, password: str, salt: bytes, iterations: int) -> ScramCredentials:
        """Compute the keys from a password (SASLprep'd as a stored string). CPU-bound.

        Raises :class:`SaslPrepError` when the password is not allowed by SASLprep.
        """
        if iterations < 1 or not salt:
            raise ValueError("SCRAM needs a salt and a positive iteration count")
        salted = _salted_password(saslprep(password, allow_unassigned=False), salt, iterations)
        return cls(
            salt=salt,
            iterations=iterations,
            stored_key=_sha256(_hmac(salted, b"Client Key")),
            server_key=_hmac(salted, b"Server Key"),
        )

    def to_string(self) -> str:
        return (
            f"{SCRAM_NAME}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )

    @classmethod
    def from_string(cls, text: str) -> ScramCredentials:
        """Parse :meth:`to_string` output; raises ValueError on anything else."""
        match = _SCRAM_STORED.fullmatch(text)
        if match is None:
            raise ValueError("not a SCRAM-SHA-256 credential string")
        salt, stored, server = (_unb64(match.group(g)) for g in (2, 3, 4))
        iterations = int(match.group(1))
        if not salt or stored is None or server is None or iterations < 1:
            raise ValueError("invalid SCRAM-SHA-256 credential string")
        if len(stored) != 32 or len(server) != 32:
            raise ValueError("SCRAM-SHA-256 keys must be 32 bytes")
        return cls(salt=salt, iterations=iterations, stored_key=stored, server_key=server)


_B64_RE = r"[A-Za-z0-9+/]+={0,2}"
_SCRAM_STORED = re.compile(rf"SCRAM-SHA-256\$([0-9]{{1,9}}):({_B64_RE})\$({_B64_RE}):({_B64_RE})")

# RFC 5802 section 7:  printable = %x21-2B / %x2D-7E  (no comma);  nonce = "r=" c-nonce.
_NONCE_RE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# saslname: "=" only as "=2C" (",") or "=3D" ("="); no "," at all.
_BAD_SASLNAME = re.compile(r"=(?!2C|3D)")
# gs2-header = gs2-cbind-flag "," [ authzid ] ","
_GS2_HEADER = re.compile(r"(n|y|p=[A-Za-z0-9.-]+),(a=[^,]*)?,")
_ATTR = re.compile(r"[A-Za-z]=")


def _decode_saslname(value: str) -> str | None:
    if _BAD_SASLNAME.search(value):
        return None
    return value.replace("=2C", ",").replace("=3D", "=")


def _encode_saslname(value: str) -> str:
    return value.replace("=", "=3D").replace(",", "=2C")


def urandom_nonce() -> str:
    """A fresh 144-bit nonce from the OS: the ``nonce_source`` a shell passes in production."""
    return _b64(os.urandom(18))


def _checked_nonce(source: Callable[[], str]) -> str:
    nonce = source()
    if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        raise SaslUsageError("nonce_source must return printable ASCII without ','")
    return nonce


class ScramSha256Server(ServerMechanism):
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) server side, without channel binding (-PLUS)."""

    name = SCRAM_NAME

    def __init__(
        self,
        *,
        nonce_source: Callable[[], str],
        secret: bytes,
        iterations: int = DEFAULT_SCRAM_ITERATIONS,
        success_data: bool = False,
    ) -> None:
        super().__init__()
        if not secret:
            raise SaslUsageError("SCRAM needs a server secret to hide unknown users")
        self._nonce_source = nonce_source
        self._secret = secret
        self._iterations = iterations
        self._success_data = success_data
        self._gs2_header = ""
        self._client_first_bare = ""
        self._client_nonce = ""
        self._username = ""
        self._authzid = ""
        self._server_first = ""
        self._nonce = ""
        self._credentials: ScramCredentials | None = None
        self._unknown_user = False
        self._awaiting_final_ack = False

    def _on_start(self, initial_response: bytes | None) -> ServerStep:
        if initial_response is None:
            return Challenge(b"")
        return self._on_response(initial_response)

    def _on_response(self, data: bytes) -> ServerStep:
        if self._awaiting_final_ack:
            # RFC 5802 section 5: after server-final the client sends an empty response.
            if data:
                return Failure(MALFORMED)
            return Success(self._username, self._authzid)
        if len(data) > MAX_SCRAM_MESSAGE:
            return Failure("message too long")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("invalid encoding")
        if not self._client_first_bare:
            return self._client_first(text)
        return self._client_final(text)

    def _client_first(self, text: str) -> ServerStep:
        # client-first-message = gs2-header client-first-message-bare
        header = _GS2_HEADER.match(text)
        if header is None:
            return Failure(MALFORMED)
        if header.group(1).startswith("p="):
            return Failure("channel binding not supported")  # we offer no -PLUS variant
        authzid = ""
        if header.group(2):
            decoded = _decode_saslname(header.group(2)[2:])
            if decoded is None:
                return Failure("invalid authzid encoding")
            authzid = decoded
        bare = text[header.end() :]
        # client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            return Failure("mandatory extensions not supported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            return Failure(MALFORMED)
        if not all(_ATTR.match(a) for a in attrs[2:]):
            return Failure(MALFORMED)
        raw_name = _decode_saslname(attrs[0][2:])
        if raw_name is None or len(raw_name.encode("utf-8")) > MAX_FIELD:
            return Failure("invalid username encoding")
        username = prep_username(raw_name)
        if username is None:
            return Failure("invalid username encoding")
        if authzid and authzid not in (raw_name, username):
            return Failure("proxy authorization not supported")
        nonce = attrs[1][2:]
        if not _NONCE_RE.fullmatch(nonce):
            return Failure(MALFORMED)
        self._gs2_header = header.group(0)
        self._client_first_bare = bare
        self._client_nonce = nonce
        self._username = username
        self._authzid = authzid
        return NeedCredentials(username)

    def _fake_credentials(self) -> ScramCredentials:
        # Deterministic per username, unguessable without the secret: an attacker sees the
        # same salt on every try for a user that does not exist, as for one that does.
        seed = _hmac(self._secret, b"postroom scram fake\x00" + self._username.encode("utf-8"))
        return ScramCredentials(
            salt=seed[:SCRAM_SALT_LEN],
            iterations=self._iterations,
            stored_key=_hmac(seed, b"stored"),
            server_key=_hmac(seed, b"server"),
        )

    def _on_credentials(self, credentials: ScramCredentials | None) -> ServerStep:
        if credentials is None:
            self._unknown_user = True
            credentials = self._fake_credentials()
        self._credentials = credentials
        self._nonce = self._client_nonce + _checked_nonce(self._nonce_source)
        # server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count
        self._server_first = (
            f"r={self._nonce},s={_b64(credentials.salt)},i={credentials.iterations}"
        )
        return Challenge(self._server_first.encode("ascii"))

    def _client_final(self, text: str) -> ServerStep:
        # client-final-message = client-final-message-without-proof "," proof
        cut = text.rfind(",p=")
        if cut < 0:
            return Failure(MALFORMED)
        without_proof, proof_b64 = text[:cut], text[cut + 3 :]
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            return Failure(MALFORMED, b"e=invalid-encoding")
        cbind = _unb64(attrs[0][2:])
        if cbind != self._gs2_header.encode("utf-8"):
            # Without channel binding, c= must be exactly our gs2 header (e.g. "biws").
            return Failure("channel bindings don't match", b"e=channel-bindings-dont-match")
        if not hmac.compare_digest(attrs[1][2:].encode("utf-8"), self._nonce.encode("ascii")):
            return Failure("nonce mismatch", b"e=other-error")
        proof = _unb64(proof_b64)
        if proof is None or len(proof) != 32:
            return Failure(MALFORMED, b"e=invalid-encoding")
        assert self._credentials is not None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}"
        auth_bytes = auth_message.encode("utf-8")
        # RFC 5802 section 3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage);
        # the proof is good when H(ClientKey) == StoredKey.
        client_key = _xor(proof, _hmac(self._credentials.stored_key, auth_bytes))
        good = hmac.compare_digest(_sha256(client_key), self._credentials.stored_key)
        if not good or self._unknown_user:
            # Same answer for an unknown user as for a wrong password (no enumeration).
            return Failure(INVALID_CREDENTIALS, b"e=invalid-proof")
        signature = _hmac(self._credentials.server_key, auth_bytes)
        server_final = b"v=" + _b64(signature).encode("ascii")
        if self._success_data:
            return Success(self._username, self._authzid, server_final)
        self._awaiting_final_ack = True
        return Challenge(server_final)


class ScramSha256Client(ClientMechanism):
    """SCRAM-SHA-256 client: proves the password and checks the server's signature."""

    name = SCRAM_NAME

    def __init__(
        self,
        username: str,
        password: str,
        *,
        nonce_source: Callable[[], str],
        authzid: str = "",
        min_iterations: int = 4096,
    ) -> None:
        # RFC 5802 section 5.1: names and passwords are SASLprep'd "query" strings.
        super().__init__(saslprep(username), saslprep(password))
        self._nonce_source = nonce_source
        self._min_iterations = min_iterations
        authz = f"a={_encode_saslname(authzid)}" if authzid else ""
        self._gs2_header = f"n,{authz},"
        self._client_first_bare = ""
        self._nonce = ""
        self._server_signature: bytes | None = None
        self._verified = False
        self._stage = 0  # 0: client-first not sent, 1: sent, 2: client-final sent, 3: done

    def _client_first(self) -> bytes:
        self._nonce = _checked_nonce(self._nonce_source)
        self._client_first_bare = f"n={_encode_saslname(self.username)},r={self._nonce}"
        self._stage = 1
        return (self._gs2_header + self._client_first_bare).encode("utf-8")

    def _initial(self) -> bytes | None:
        return self._client_first()

    def _on_challenge(self, challenge: bytes) -> ClientStep:
        if self._stage == 0:
            if challenge:
                return Failure("unexpected challenge")
            return Response(self._client_first())
        try:
            text = challenge.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("invalid server message encoding")
        if self._stage == 1:
            return self._server_first(text)
        if self._stage == 2:
            return self._server_final(text)
        return Failure("unexpected challenge")

    def _server_first(self, text: str) -> ClientStep:
        attrs: dict[str, str] = {}
        for attr in text.split(","):
            key, eq, value = attr.partition("=")
            if eq:
                attrs.setdefault(key, value)
        if text.startswith("m=") or not {"r", "s", "i"} <= attrs.keys():
            return Failure("invalid server-first message")
        nonce, salt = attrs["r"], _unb64(attrs["s"])
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            return Failure("server nonce does not extend ours")
        if not _NONCE_RE.fullmatch(nonce) or not salt or not attrs["i"].isdigit():
            return Failure("invalid server-first message")
        iterations = int(attrs["i"]) if len(attrs["i"]) < 10 else 0
        if not self._min_iterations <= iterations <= MAX_SCRAM_ITERATIONS:
            return Failure("unacceptable iteration count")
        salted = _salted_password(self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c={_b64(self._gs2_header.encode('utf-8'))},r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        self._stage = 2
        return Response(f"{without_proof},p={_b64(proof)}".encode("ascii"))

    def _server_final(self, text: str) -> ClientStep:
        self._stage = 3
        if text.startswith("e="):
            return Failure(f"server error: {text[2:].split(',')[0]}")
        assert self._server_signature is not None
        signature = _unb64(text[2:].split(",")[0]) if text.startswith("v=") else None
        if signature is None or not hmac.compare_digest(signature, self._server_signature):
            return Failure("server signature mismatch")
        self._verified = True
        return Response(b"")

    def finish(self, data: bytes | None = None) -> Success | Failure:
        if data and self._stage == 2:
            step = self._on_challenge(data)
            if isinstance(step, Failure):
                return step
        if not self._verified:
            return Failure("server did not prove knowledge of the password")
        return Success(self.username)
