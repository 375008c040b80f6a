"""Password hashing (argon2id), SCRAM credential derivation, generated passwords."""

from __future__ import annotations

import base64

import pytest

from postroom.auth import passwords
from postroom.auth.passwords import (
    generate_password,
    hash_password,
    needs_rehash,
    scram_credentials,
    verify_password,
)
from postroom.proto.sasl import SaslPrepError, ScramCredentials


@pytest.fixture(scope="module")
def hashed() -> str:
    return hash_password("correct horse battery staple")


def test_hash_is_argon2id_with_our_parameters(hashed: str) -> None:
    assert hashed.startswith("$argon2id$v=19$")
    assert f"m={passwords.ARGON2_MEMORY_KIB},t={passwords.ARGON2_TIME_COST}" in hashed
    assert f"p={passwords.ARGON2_PARALLELISM}$" in hashed
    assert "correct" not in hashed


def test_verify(hashed: str) -> None:
    assert verify_password(hashed, "correct horse battery staple")
    assert not verify_password(hashed, "correct horse battery stapler")
    assert not verify_password(hashed, "")


@pytest.mark.parametrize(
    "bad_hash",
    ["", "garbage", "$argon2id$v=19$m=1,t=1,p=1$xx$yy", "{SHA512-CRYPT}$6$abc", "$argon2id$"],
)
def test_verify_never_raises_on_bad_hashes(bad_hash: str) -> None:
    assert verify_password(bad_hash, "whatever") is False


def test_verify_unknown_user_runs_and_fails() -> None:
    assert verify_password(None, "postroom dummy password") is False
    assert verify_password(None, "") is False


def test_verify_odd_passwords(hashed: str) -> None:
    assert verify_password(hashed, "\udcff") is False  # lone surrogate: not encodable
    assert verify_password(hashed, "x" * 100_000) is False


def test_hash_prepares_with_saslprep() -> None:
    # U+00AD (soft hyphen) maps to nothing and U+2168 is NFKC "IX": same password.
    hashed = hash_password("I\u00adX\u2168")
    assert verify_password(hashed, "IXIX")


def test_empty_password_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("")
    with pytest.raises(ValueError):
        scram_credentials("")


def test_needs_rehash(hashed: str) -> None:
    assert not needs_rehash(hashed)
    weaker = hashed.replace(f"t={passwords.ARGON2_TIME_COST}", "t=1")
    assert needs_rehash(weaker)
    assert needs_rehash("not a hash")


def test_scram_credentials_rfc7677_vector() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    creds = scram_credentials("pencil", salt=salt, iterations=4096)
    assert creds == ScramCredentials.derive("pencil", salt, 4096)
    # StoredKey/ServerKey as derived from the RFC 7677 example (checked against the
    # exchange in tests/proto/test_sasl.py).
    assert creds.to_string() == (
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
        "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    )


def test_scram_credentials_defaults() -> None:
    a, b = scram_credentials("pw"), scram_credentials("pw")
    assert a.iterations == passwords.DEFAULT_SCRAM_ITERATIONS >= 4096
    assert len(a.salt) == 16 and a.salt != b.salt and a.stored_key != b.stored_key
    assert ScramCredentials.from_string(a.to_string()) == a
    assert "stored_key=" not in repr(a)


def test_scram_credentials_refusals() -> None:
    with pytest.raises(ValueError):
        scram_credentials("pw", iterations=1000)
    with pytest.raises(SaslPrepError):
        scram_credentials("bell\u0007")  # SASLprep prohibits control characters


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",  # keys of the wrong length
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-1$4096:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$4096:c2FsdA=$AAAA:AAAA",
    ],
)
def test_scram_from_string_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        ScramCredentials.from_string(text)


def test_generate_password() -> None:
    generated = {generate_password() for _ in range(50)}
    assert len(generated) == 50
    for password in generated:
        assert len(password) == 20
        assert set(password) <= set(passwords.PASSWORD_ALPHABET)
    assert not set(passwords.PASSWORD_ALPHABET) & set("0O1lI")
    assert len(generate_password(32)) == 32
    with pytest.raises(ValueError):
        generate_password(8)
