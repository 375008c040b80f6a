"""SASL mechanisms: RFC test vectors, edge cases, client<->server round trips, fuzzing."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.proto.sasl import (
    Challenge,
    ClientMechanism,
    Failure,
    NeedCredentials,
    Response,
    SaslPrepError,
    SaslUsageError,
    ScramCredentials,
    ServerMechanism,
    ServerStep,
    Success,
    VerifyPassword,
    client_mechanism,
    saslprep,
    server_mechanism,
    urandom_nonce,
)

# RFC 7677 section 3: the SCRAM-SHA-256 example exchange (user "user", password "pencil").
RFC7677_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_C1 = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_S1 = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_C2 = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_S2 = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

SECRET = b"server secret for fake salts"


def fixed(nonce: str) -> Callable[[], str]:
    return lambda: nonce


def counter_nonces() -> Callable[[], str]:
    counter: Iterator[int] = iter(range(1_000_000))
    return lambda: f"srv{next(counter):08d}"


def rfc_credentials() -> ScramCredentials:
    return ScramCredentials.derive("pencil", RFC7677_SALT, 4096)


def scram_server(**kwargs: object) -> ServerMechanism:
    options: dict[str, object] = {"nonce_source": fixed(RFC7677_SERVER_NONCE), "secret": SECRET}
    options.update(kwargs)
    return server_mechanism("SCRAM-SHA-256", **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------ SCRAM-SHA-256 vectors


def test_rfc7677_server_side_exact() -> None:
    mech = scram_server()
    assert mech.start(RFC7677_C1) == NeedCredentials("user")
    assert mech.provide_credentials(rfc_credentials()) == Challenge(RFC7677_S1)
    assert mech.respond(RFC7677_C2) == Challenge(RFC7677_S2)
    assert mech.respond(b"") == Success("user")
    assert mech.finished


def test_rfc7677_client_side_exact() -> None:
    mech = client_mechanism(
        "SCRAM-SHA-256", "user", "pencil", nonce_source=fixed(RFC7677_CLIENT_NONCE)
    )
    assert mech.start() == Response(RFC7677_C1)
    assert mech.respond(RFC7677_S1) == Response(RFC7677_C2)
    assert mech.respond(RFC7677_S2) == Response(b"")
    assert mech.finish() == Success("user")


def test_rfc7677_stored_keys() -> None:
    creds = rfc_credentials()
    text = creds.to_string()
    assert text.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert ScramCredentials.from_string(text) == creds
    assert "stored_key" not in repr(creds) and "server_key" not in repr(creds)


def test_scram_without_initial_response_sends_empty_challenge() -> None:
    mech = scram_server()
    assert mech.start(None) == Challenge(b"")
    assert mech.respond(RFC7677_C1) == NeedCredentials("user")


def test_scram_success_data_mode() -> None:
    mech = scram_server(success_data=True)
    mech.start(RFC7677_C1)
    mech.provide_credentials(rfc_credentials())
    assert mech.respond(RFC7677_C2) == Success("user", "", RFC7677_S2)
    client = client_mechanism(
        "SCRAM-SHA-256", "user", "pencil", nonce_source=fixed(RFC7677_CLIENT_NONCE)
    )
    client.start()
    client.respond(RFC7677_S1)
    assert client.finish(RFC7677_S2) == Success("user")


def test_scram_wrong_password_fails_with_invalid_proof() -> None:
    mech = scram_server()
    mech.start(RFC7677_C1)
    mech.provide_credentials(ScramCredentials.derive("not pencil", RFC7677_SALT, 4096))
    step = mech.respond(RFC7677_C2)
    assert isinstance(step, Failure) and step.data == b"e=invalid-proof"
    assert mech.finished


def _server_first(mech: ServerMechanism, user: str, creds: ScramCredentials | None) -> bytes:
    assert mech.start(f"n,,n={user},r=abc".encode()) == NeedCredentials(user)
    step = mech.provide_credentials(creds)
    assert isinstance(step, Challenge)
    return step.data


def test_scram_unknown_user_is_indistinguishable_until_the_end() -> None:
    first = _server_first(scram_server(iterations=8192), "ghost", None)
    again = _server_first(scram_server(iterations=8192), "ghost", None)
    other = _server_first(scram_server(iterations=8192), "spook", None)
    other_secret = _server_first(scram_server(secret=b"another"), "ghost", None)
    def salt_of(data: bytes) -> bytes:
        return data.split(b",")[1]

    assert salt_of(first) == salt_of(again)  # stable: repeated probes see the same salt
    assert salt_of(first) != salt_of(other) != salt_of(other_secret)
    assert len(base64.b64decode(salt_of(first)[2:])) == 16  # as long as real salts
    assert first.endswith(b",i=8192")
    # A client that guesses a password gets the same failure as for a wrong password.
    client = client_mechanism("SCRAM-SHA-256", "ghost", "guess", nonce_source=fixed("abc"))
    client.start()
    mech = scram_server()
    _server_first(mech, "ghost", None)
    proof = client.respond(first)
    assert isinstance(proof, Response) and proof.data is not None
    step = mech.respond(proof.data)
    assert step == Failure("invalid credentials", b"e=invalid-proof")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"p=tls-unique,,n=user,r=abc", "channel binding not supported"),
        (b"n,,m=ext,n=user,r=abc", "mandatory extensions not supported"),
        (b"n,,n=us=2Xer,r=abc", "invalid username encoding"),
        (b"n,,n=,r=abc", "invalid username encoding"),
        (b"n,,n=user\x07,r=abc", "invalid username encoding"),  # SASLprep prohibits
        (b"n,a=admin,n=user,r=abc", "proxy authorization not supported"),
        (b"n,,r=abc,n=user", "malformed message"),
        (b"n,,n=user", "malformed message"),
        (b"n,,n=user,r=", "malformed message"),
        (b"n,,n=user,r=a\x01b", "malformed message"),
        (b"n,,n=user,r=abc,bad", "malformed message"),
        (b"x,,n=user,r=abc", "malformed message"),
        (b"n,n=user,r=abc", "malformed message"),
        (b"n,,n=\xff,r=abc", "invalid encoding"),
        (b"n,,n=user,r=" + b"a" * 3000, "message too long"),
    ],
)
def test_scram_client_first_refusals(message: bytes, reason: str) -> None:
    assert scram_server().start(message) == Failure(reason)


@pytest.mark.parametrize(
    "message", [b"y,,n=user,r=abc", b"n,a=user,n=user,r=abc", b"n,,n=user,r=abc,x=ext"]
)
def test_scram_client_first_accepted(message: bytes) -> None:
    assert scram_server().start(message) == NeedCredentials("user")


def test_scram_saslname_escapes_and_saslprep() -> None:
    assert scram_server().start(b"n,,n=a=2Cb=3Dc,r=x") == NeedCredentials("a,b=c")
    # U+00AD SOFT HYPHEN maps to nothing; U+2168 ROMAN NUMERAL NINE is NFKC "IX".
    assert scram_server().start("n,,n=I\u00adX\u2168,r=x".encode()) == NeedCredentials("IXIX")


def _after_server_first(gs2: bytes = b"n,,") -> ServerMechanism:
    mech = scram_server()
    mech.start(gs2 + b"n=user,r=" + RFC7677_CLIENT_NONCE.encode())
    mech.provide_credentials(rfc_credentials())
    return mech


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (RFC7677_C2.replace(b"c=biws", b"c=eSws"), b"e=channel-bindings-dont-match"),
        (RFC7677_C2.replace(b"c=biws", b"c=!!!"), b"e=channel-bindings-dont-match"),
        (RFC7677_C2.replace(b"$k0,", b"$k1,"), b"e=other-error"),
        (RFC7677_C2.replace(b"p=dHzb", b"p=*Hzb"), b"e=invalid-encoding"),
        (RFC7677_C2[:-8] + b"AAAA", b"e=invalid-encoding"),  # proof of the wrong length
        (b"r=x,c=biws,p=AAAA", b"e=invalid-encoding"),
        (RFC7677_C2.replace(b"p=dHzbZ", b"p=AHzbZ"), b"e=invalid-proof"),
    ],
)
def test_scram_client_final_refusals(final: bytes, expected: bytes) -> None:
    step = _after_server_first().respond(final)
    assert isinstance(step, Failure) and step.data == expected


def test_scram_client_final_without_proof() -> None:
    step = _after_server_first().respond(b"c=biws,r=x")
    assert isinstance(step, Failure) and step.data is None


def test_scram_y_flag_needs_matching_channel_binding() -> None:
    mech = _after_server_first(b"y,,")
    assert isinstance(mech.respond(RFC7677_C2), Failure)  # c=biws is "n,,", not "y,,"


def test_scram_nonempty_final_ack_fails() -> None:
    mech = _after_server_first()
    assert mech.respond(RFC7677_C2) == Challenge(RFC7677_S2)
    assert mech.respond(b"v=whatever") == Failure("malformed message")


# ------------------------------------------------------------------ PLAIN


def test_plain_with_initial_response() -> None:
    mech = server_mechanism("plain")
    step = mech.start(b"\x00tim\x00tanstaaftanstaaf")
    assert step == VerifyPassword("tim", "tanstaaftanstaaf", "")
    assert "tanstaaf" not in repr(step)
    assert mech.password_verified(True) == Success("tim")


@pytest.mark.parametrize("initial", [None, b""])
def test_plain_without_initial_response(initial: bytes | None) -> None:
    mech = server_mechanism("PLAIN")
    assert mech.start(initial) == Challenge(b"")
    assert mech.respond(b"tim\x00tim\x00pw") == VerifyPassword("tim", "pw", "tim")
    assert mech.password_verified(False) == Failure("invalid credentials")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"admin\x00tim\x00pw", "proxy authorization not supported"),
        (b"tim\x00pw", "malformed message"),
        (b"\x00tim\x00pw\x00", "malformed message"),
        (b"\x00\x00pw", "malformed message"),
        (b"\x00tim\x00", "malformed message"),
        (b"\x00tim\xff\x00pw", "malformed message"),
        (b"\x00" + b"u" * 256 + b"\x00pw", "malformed message"),
        (b"\x00tim\x00" + b"p" * 256, "malformed message"),
        (b"\x00tim\x07\x00pw", "malformed message"),  # SASLprep prohibits controls
    ],
)
def test_plain_refusals(message: bytes, reason: str) -> None:
    assert server_mechanism("PLAIN").start(message) == Failure(reason)


def test_plain_accepts_255_octet_fields() -> None:
    user, password = "u" * 255, "p" * 255
    step = server_mechanism("PLAIN").start(f"\x00{user}\x00{password}".encode())
    assert step == VerifyPassword(user, password)


def test_plain_username_is_saslprepped() -> None:
    step = server_mechanism("PLAIN").start("\x00I\u00adX\x00pw".encode())
    assert step == VerifyPassword("IX", "pw")


# ------------------------------------------------------------------ LOGIN


def test_login_prompts() -> None:
    mech = server_mechanism("LOGIN")
    assert mech.start(None) == Challenge(b"Username:")
    assert mech.respond(b"tim") == Challenge(b"Password:")
    assert mech.respond(b"secret pw") == VerifyPassword("tim", "secret pw")
    assert mech.password_verified(True) == Success("tim")


def test_login_with_initial_username() -> None:
    mech = server_mechanism("LOGIN")
    assert mech.start(b"tim") == Challenge(b"Password:")
    assert mech.respond(b"pw") == VerifyPassword("tim", "pw")
    assert mech.password_verified(False) == Failure("invalid credentials")


@pytest.mark.parametrize(
    "answers", [[b""], [b"tim", b""], [b"\xff"], [b"u" * 256], [b"tim", b"p" * 256]]
)
def test_login_refusals(answers: list[bytes]) -> None:
    mech = server_mechanism("LOGIN")
    mech.start(None)
    for answer in answers[:-1]:
        mech.respond(answer)
    assert mech.respond(answers[-1]) == Failure("malformed message")


# ------------------------------------------------------------------ API misuse


def test_call_order_is_enforced() -> None:
    mech = server_mechanism("PLAIN")
    with pytest.raises(SaslUsageError):
        mech.respond(b"x")
    mech.start(b"\x00a\x00b")
    with pytest.raises(SaslUsageError):
        mech.respond(b"x")
    with pytest.raises(SaslUsageError):
        mech.provide_credentials(None)
    mech.password_verified(True)
    with pytest.raises(SaslUsageError):
        mech.password_verified(True)
    with pytest.raises(SaslUsageError):
        mech.start(None)


def test_factory_errors() -> None:
    with pytest.raises(SaslUsageError):
        server_mechanism("CRAM-MD5")
    with pytest.raises(SaslUsageError):
        server_mechanism("SCRAM-SHA-256")  # no nonce source / secret
    with pytest.raises(SaslUsageError):
        server_mechanism("SCRAM-SHA-256", nonce_source=urandom_nonce, secret=b"")
    with pytest.raises(SaslUsageError):
        client_mechanism("SCRAM-SHA-256", "u", "p")
    with pytest.raises(SaslUsageError):
        client_mechanism("GSSAPI", "u", "p")


def test_bad_nonce_source_is_a_usage_error() -> None:
    mech = scram_server(nonce_source=fixed("has,comma"))
    mech.start(RFC7677_C1)
    with pytest.raises(SaslUsageError):
        mech.provide_credentials(None)


def test_urandom_nonce_is_fresh_and_printable() -> None:
    a, b = urandom_nonce(), urandom_nonce()
    assert a != b and len(a) == 24 and "," not in a


# ------------------------------------------------------------------ SASLprep (RFC 4013 3)


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),  # case preserved
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to space
        ("\u0627\u0628", "\u0627\u0628"),  # all right-to-left is fine
    ],
)
def test_saslprep_examples(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031", "a\ue000", "\u0627a\u0628"])
def test_saslprep_prohibited(text: str) -> None:
    with pytest.raises(SaslPrepError):
        saslprep(text)


def test_saslprep_unassigned_only_in_queries() -> None:
    unassigned = "a\u0221"  # unassigned in Unicode 3.2
    assert saslprep(unassigned) == unassigned
    with pytest.raises(SaslPrepError):
        saslprep(unassigned, allow_unassigned=False)


# ------------------------------------------------------------------ round trips


def run_exchange(
    server: ServerMechanism,
    client: ClientMechanism,
    store: dict[str, tuple[str, ScramCredentials]],
    initial: bool = True,
) -> tuple[ServerStep, Success | Failure | None]:
    """Drive a client against a server as a protocol core would; return both outcomes."""
    step = server.start(client.start(initial).data)
    for _ in range(10):
        if isinstance(step, Challenge):
            answer = client.respond(step.data)
            if isinstance(answer, Failure):
                return step, answer
            assert answer.data is not None
            step = server.respond(answer.data)
        elif isinstance(step, NeedCredentials):
            entry = store.get(step.username)
            step = server.provide_credentials(entry[1] if entry else None)
        elif isinstance(step, VerifyPassword):
            entry = store.get(step.username)
            step = server.password_verified(entry is not None and entry[0] == step.password)
        elif isinstance(step, Success):
            return step, client.finish(step.data)
        else:
            return step, None
    raise AssertionError("exchange did not end")


NAMES = ["alice", "b,o=b", "Jürgen", "\u0627\u0644\u0639"]


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
@pytest.mark.parametrize("user", NAMES)
@pytest.mark.parametrize("initial", [True, False])
def test_round_trip(name: str, user: str, initial: bool) -> None:
    password = "pässwörd \u2168"
    store = {saslprep(user): (password, ScramCredentials.derive(password, b"salt", 4096))}
    server = server_mechanism(name, nonce_source=counter_nonces(), secret=SECRET)
    client = client_mechanism(name, user, password, nonce_source=counter_nonces())
    server_end, client_end = run_exchange(server, client, store, initial)
    assert server_end == Success(saslprep(user))
    assert client_end == Success(client.username)


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
def test_round_trip_wrong_password(name: str) -> None:
    store = {"alice": ("right", ScramCredentials.derive("right", b"salt", 4096))}
    server = server_mechanism(name, nonce_source=counter_nonces(), secret=SECRET)
    client = client_mechanism(name, "alice", "wrong", nonce_source=counter_nonces())
    server_end, _ = run_exchange(server, client, store)
    assert isinstance(server_end, Failure)


def test_scram_client_detects_a_fake_server() -> None:
    """A server that does not know the password cannot produce ServerSignature."""
    store = {"alice": ("pw", ScramCredentials.derive("pw", b"salt", 4096))}
    client = client_mechanism("SCRAM-SHA-256", "alice", "pw", nonce_source=counter_nonces())
    server = server_mechanism("SCRAM-SHA-256", nonce_source=counter_nonces(), secret=SECRET)
    step = server.start(client.start().data)
    step = server.provide_credentials(store["alice"][1])
    assert isinstance(step, Challenge)
    final = client.respond(step.data)
    assert isinstance(final, Response)
    assert client.respond(b"v=" + base64.b64encode(b"x" * 32)) == Failure(
        "server signature mismatch"
    )
    assert isinstance(client.finish(), Failure)


@pytest.mark.parametrize(
    ("server_first", "reason"),
    [
        (b"r=other,s=c2FsdA==,i=4096", "server nonce does not extend ours"),
        (b"r=cli,s=c2FsdA==,i=4096", "server nonce does not extend ours"),
        (b"r=cliX,s=c2FsdA==,i=1000", "unacceptable iteration count"),
        (b"r=cliX,s=c2FsdA==,i=99999999999", "unacceptable iteration count"),
        (b"r=cliX,s=!!,i=4096", "invalid server-first message"),
        (b"r=cliX,i=4096", "invalid server-first message"),
        (b"m=x,r=cliX,s=c2FsdA==,i=4096", "invalid server-first message"),
        (b"\xff", "invalid server message encoding"),
    ],
)
def test_scram_client_refuses_bad_server_first(server_first: bytes, reason: str) -> None:
    client = client_mechanism("SCRAM-SHA-256", "u", "p", nonce_source=fixed("cli"))
    client.start()
    assert client.respond(server_first) == Failure(reason)


def test_scram_client_reports_server_error() -> None:
    client = client_mechanism("SCRAM-SHA-256", "u", "p", nonce_source=fixed("cli"))
    client.start()
    client.respond(b"r=cliX,s=c2FsdA==,i=4096")
    assert client.respond(b"e=invalid-proof") == Failure("server error: invalid-proof")
    assert isinstance(client.finish(), Failure)


def test_client_plain_login_details() -> None:
    plain = client_mechanism("PLAIN", "tim", "pw", authzid="tim")
    assert plain.start() == Response(b"tim\x00tim\x00pw")
    assert isinstance(plain.respond(b""), Failure)  # already sent
    assert isinstance(plain.finish(b"extra"), Failure)
    assert "pw" not in repr(plain) and "pw" not in repr(Response(b"tim\x00pw"))
    login = client_mechanism("LOGIN", "tim", "pw")
    assert login.start(initial=False) == Response(None)
    assert login.respond(b"Username:") == Response(b"tim")
    assert login.respond(b"Password:") == Response(b"pw")
    assert isinstance(login.respond(b"More?"), Failure)
    with pytest.raises(SaslUsageError):
        login.start()


# ------------------------------------------------------------------ fuzz


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(["PLAIN", "LOGIN", "SCRAM-SHA-256"]),
    initial=st.none() | st.binary(max_size=300),
    answers=st.lists(st.binary(max_size=300), max_size=4),
    known=st.booleans(),
)
def test_server_mechanisms_never_raise_on_peer_input(
    name: str, initial: bytes | None, answers: list[bytes], known: bool
) -> None:
    mech = server_mechanism(name, nonce_source=counter_nonces(), secret=SECRET)
    step = mech.start(initial)
    feed = iter(answers)
    while not mech.finished:
        if isinstance(step, Challenge):
            answer = next(feed, None)
            if answer is None:
                return
            step = mech.respond(answer)
        elif isinstance(step, NeedCredentials):
            step = mech.provide_credentials(rfc_credentials() if known else None)
        elif isinstance(step, VerifyPassword):
            step = mech.password_verified(known)
    assert isinstance(step, Success | Failure)
    if name == "SCRAM-SHA-256":
        assert isinstance(step, Failure)  # random bytes never prove a password


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_saslprep_total(text: str) -> None:
    """SASLprep returns a string or raises SaslPrepError, and is idempotent."""
    try:
        prepared = saslprep(text)
    except SaslPrepError:
        return
    assert saslprep(prepared) == prepared
