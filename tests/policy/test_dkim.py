"""DKIM core: canonicalization, tag lists, key records, the RFC 8463 example, limits."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.policy import dkim
from support.registry_data import dkimpy_file


def _verify(data: bytes, keys: dict[str, str]) -> list[str]:
    fields, body = dkim.split_message(data)
    out = []
    for i, (name, _) in enumerate(fields):
        if name != b"dkim-signature":
            continue
        sig = dkim.prepare(fields, body, i)
        try:
            dkim.verify_prepared(sig, dkim.parse_key(keys[sig.key_name]))
            out.append("pass")
        except dkim.DkimError as e:
            out.append(e.result)
    return out


def test_rfc8463_example_verifies() -> None:
    """RFC 8463 appendix A: the same message signed with Ed25519 and RSA-SHA256 (keys as
    published there; the files come from the dkimpy sdist's test data)."""
    msg = dkimpy_file("dkim/tests/data/rfc6376.signed.msg").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    source = dkimpy_file("dkim/tests/test_dkim_ed25519.py").decode()
    brisbane = re.search(r"'brisbane\._domainkey\.football\.example\.com\.': \"\"\"(.*?)\"\"\"", source, re.S)
    assert brisbane is not None
    ed_record = brisbane.group(1).replace("\\\n", "")
    rsa_record = dkimpy_file("dkim/tests/data/test.txt").decode()
    keys = {
        "brisbane._domainkey.football.example.com": ed_record,
        "test._domainkey.football.example.com": rsa_record,
    }
    assert _verify(msg, keys) == ["pass", "pass"]
    tampered = msg.replace(b"We lost the game", b"We won the game")
    assert _verify(tampered, keys) == ["fail", "fail"]


@pytest.mark.parametrize(
    ("raw", "method", "expected"),
    [
        (b"Subject:  a \t b  \r\n", "relaxed", b"subject:a b\r\n"),
        (b"SUBJECT : x\r\n\tfolded  \r\n", "relaxed", b"subject:x folded\r\n"),
        (b"Subject:  a \r\n", "simple", b"Subject:  a \r\n"),
    ],
)
def test_header_canonicalization(raw: bytes, method: str, expected: bytes) -> None:
    assert dkim.canon_header(raw, method) == expected


def _relaxed_reference(raw: bytes) -> bytes:
    """RFC 6376 3.4.2 step by step, as slowly and literally as possible."""
    name, _, value = raw.partition(b":")
    name = name.lower().rstrip(b" \t")
    value = value.replace(b"\r\n", b"")  # unfold
    out = bytearray()
    for byte in value:
        if byte in b" \t":
            if not out or out[-1:] != b" ":
                out += b" "
        else:
            out.append(byte)
    return name + b":" + bytes(out).strip(b" ") + b"\r\n"


@given(st.lists(st.sampled_from([b"a", b"Z", b" ", b"\t", b"\r\n\t", b"\r\n ", b":", b"\x0b",
                                 b"\x0c", b"\r", b"\n", b"\xc3\xa9"]), max_size=30))
def test_relaxed_header_matches_the_rfc(parts: list[bytes]) -> None:
    """The fast path (split/join) and the exact one agree with the RFC's steps, including
    characters that are white space to bytes.split() but not WSP to RFC 6376."""
    raw = b"X-Test:" + b"".join(parts) + b"\r\n"
    assert dkim.canon_header(raw, "relaxed") == _relaxed_reference(raw)


def test_signing_fast_path_equals_the_general_one() -> None:
    """sign() selects and canonicalizes the over-signed header set in one pass; naming the
    same h= explicitly takes the general path: the fields must be byte-identical."""
    msg = (b"From: A <a@x.test>\r\nTo: b@y.test,\r\n  c@y.test\r\nSubject:  two \t spaces \r\n"
           b"Received: x\r\nCc: one\r\nCc: two\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
           b"MIME-Version: 1.0\r\n\r\nbody  text \r\n\r\n")
    fields, _ = dkim.split_message(msg)
    for algorithm in ("ed25519", "rsa"):
        key = dkim.PrivateKey("x.test", "s", algorithm, dkim.generate_key(algorithm))
        fast = dkim.sign(msg, key, timestamp=1)
        general = dkim.sign(msg, key, timestamp=1, names=dkim.signed_names(fields))
        if algorithm == "ed25519":  # deterministic signatures: the whole field must match
            assert fast == general
        assert fast.split(b"bh=")[0] == general.split(b"bh=")[0]
        assert _verify(fast + msg, {"s._domainkey.x.test": dkim.public_record(key.key)}) == ["pass"]
    assert dkim.parse_tags(fast.decode().partition(":")[2])["h"].replace("\r\n\t ", "").count("cc") == 3


@pytest.mark.parametrize(
    ("body", "method", "expected"),
    [
        (b"", "simple", b"\r\n"),
        (b"", "relaxed", b""),
        (b"a  b \t\r\n\r\n\r\n", "relaxed", b"a b\r\n"),
        (b"a  b \r\n\r\n", "simple", b"a  b \r\n"),
        (b" \r\n\r\n", "relaxed", b""),
        (b"x", "simple", b"x\r\n"),
    ],
)
def test_body_canonicalization(body: bytes, method: str, expected: bytes) -> None:
    assert dkim.canon_body(body, method) == expected


def test_sign_and_verify_both_algorithms_and_oversigning() -> None:
    msg = b"From: a@example.org\r\nSubject: hi\r\nTo: b@x.org\r\n\r\nbody\r\n"
    for alg in ("ed25519", "rsa"):
        key = dkim.generate_key(alg)
        pk = dkim.PrivateKey("example.org", "s", alg, key)
        signed = dkim.sign(msg, pk, timestamp=1) + msg
        keys = {"s._domainkey.example.org": dkim.public_record(key)}
        assert _verify(signed, keys) == ["pass"]
        h = dkim.parse_signature(signed.split(b"\r\nFrom:")[0] + b"\r\n")["h"]
        assert h.replace("\r\n", "").replace("\t", "").replace(" ", "").count("subject") == 2
        # An added From:/Subject: (header replay) or a changed body fails.
        assert _verify(b"Subject: spam\r\n" + signed, keys) == ["fail"]
        assert _verify(signed.replace(b"body", b"bodY"), keys) == ["fail"]


@pytest.mark.parametrize(
    ("field", "result"),
    [
        (b"DKIM-Signature: v=1; a=rsa-sha1; d=x.org; s=s; h=from; bh=AA==; b=AA==\r\n", "permerror"),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=x.org; s=s; h=to; bh=AA==; b=AA==\r\n", "permerror"),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=x.org; s=s; h=from; bh=AA==\r\n", "permerror"),
        (b"DKIM-Signature: v=1; v=1; a=rsa-sha256; d=x.org; s=s; h=from; bh=AA==; b=AA==\r\n", "permerror"),
        (b"DKIM-Signature: v=2; a=rsa-sha256; d=x.org; s=s; h=from; bh=AA==; b=AA==\r\n", "permerror"),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=x.org; i=@y.org; s=s; h=from; bh=AA==; b=AA==\r\n", "permerror"),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=x.org; s=s; h=from; bh=!!; b=AA==\r\n", "permerror"),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=x.org; s=s; h=from; bh=AA==; b=AA==; l=99\r\n", "permerror"),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=x.org; s=s; h=from; bh=AA==; b=AA==\r\n", "fail"),
        (b"DKIM-Signature: \xff\xfe\r\n", "permerror"),
        (b"DKIM-Signature: " + b"a=b;" * 5000 + b"\r\n", "permerror"),
    ],
)
def test_malformed_signatures(field: bytes, result: str) -> None:
    fields, body = dkim.split_message(field + b"From: a@x.org\r\n\r\nhi\r\n")
    sig = dkim.prepare(fields, body, 0)
    assert sig.error is not None and sig.error.result == result, sig.error


def test_key_records() -> None:
    with pytest.raises(dkim.DkimError, match="revoked"):
        dkim.parse_key("v=DKIM1; k=rsa; p=")
    with pytest.raises(dkim.DkimError):
        dkim.parse_key("v=DKIM1; k=ed25519; p=AAAA")
    with pytest.raises(dkim.DkimError):
        dkim.parse_key("v=DKIM1; k=dsa; p=AAAA")
    with pytest.raises(dkim.DkimError):
        dkim.parse_key("v=DKIM1; k=rsa; s=tlsrpt; p=AAAA")
    assert dkim.parse_key(dkim.public_record(dkim.generate_key("rsa", bits=1024))).algorithm == "rsa"


def test_l_tag_pass_is_partial() -> None:
    """A dkimpy signature with l=: appended content keeps it valid but marks it partial."""
    import dkim as dkimpy

    key = dkim.generate_key("rsa")
    msg = b"From: a@x.org\r\nSubject: s\r\n\r\nsigned part\r\n"
    sig = dkimpy.sign(msg, b"s", b"x.org", dkim.private_pem(key), length=True)
    signed = sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + msg + b"appended by a list\r\n"
    fields, body = dkim.split_message(signed)
    prepared = dkim.prepare(fields, body, 0)
    dkim.verify_prepared(prepared, dkim.parse_key(dkim.public_record(key)))
    assert prepared.partial
