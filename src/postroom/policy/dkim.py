"""DKIM (RFC 6376, RFC 8463, RFC 8301): signing and verification without I/O.

Theory of operation
-------------------
Everything here is a pure function of bytes and keys; DNS and the decision to run heavy
work off the event loop belong to ``policy.inbound`` and ``policy.signing``.

* :func:`parse_tags` reads the tag=value lists that signatures and key records are made of
  (RFC 6376 3.2), with limits.
* :func:`canon_header` / :func:`body_hash` implement the ``simple`` and ``relaxed``
  canonicalizations (RFC 6376 3.4).
* :func:`sign` builds a ``DKIM-Signature`` field for a message; :func:`prepare` parses one
  signature and computes everything a verifier needs except the key (the body hash check
  and the header hash); :func:`verify_prepared` checks the cryptographic signature once the
  key record was fetched (:func:`parse_key`).

Why our own code rather than dkimpy: dkimpy's RSA is pure Python (about 30 ms per 2048-bit
signature on the development machine against well under 1 ms with ``cryptography``) and its
DNS lookups block unless replaced; the canonicalization and tag syntax are small and are
checked against dkimpy and OpenDKIM in the test suite (``tests/e2e/test_mail_auth.py``,
``tests/e2e/test_opendkim_milter.py``).

Decisions:
* ``rsa-sha1`` signatures are not accepted (RFC 8301 3.1: verifiers MUST NOT); RSA keys under
  1024 bits are refused (RFC 8301 3.2); we sign with RSA-2048 and Ed25519.
* ``l=`` is honoured for the body hash, but a signature whose ``l=`` leaves body content
  unsigned is reported as ``dkim=pass`` with ``partial=True``: DMARC does not count it.
* Header fields named in ``h=`` are taken bottom-up (RFC 6376 5.4.2); a name listed once more
  than the message has fields ("over-signing") hashes as empty, which is what makes an added
  From:/Subject: break the signature.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

MAX_TAGS = 64
MAX_TAG_LIST = 16384  # bytes of one signature field or key record
MAX_H_FIELDS = 128  # names in h=
MIN_RSA_BITS = 1024  # RFC 8301 3.2
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")

# Signed and over-signed: one more instance of each than the message has, so a field of
# these names added in transit breaks the signature (RFC 6376 8.15). Fields absent from the
# message are signed as absent for the same reason.
SIGNED_FIELDS = (
    "from", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
    "list-id", "list-unsubscribe", "list-unsubscribe-post", "sender",
)


class DkimError(Exception):
    """A signature or key record that can not be used: ``result`` is the RFC 8601 result
    to report ("permerror" for syntax, "fail" for a wrong hash or signature)."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


# --- tag lists (RFC 6376 3.2) ------------------------------------------------------------

_WSP = re.compile(rb"[ \t]+")
_FWS = re.compile(r"[ \t\r\n]+")
_TAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def parse_tags(text: str) -> dict[str, str]:
    """``tag=value; ...`` into a dict (values with folding white space removed at the
    ends). Duplicate tags, bad names and oversize input raise ``DkimError("permerror")``."""
    if len(text) > MAX_TAG_LIST:
        raise DkimError("permerror", "tag list too long")
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip(" \t\r\n"):
            continue
        name, eq, value = part.partition("=")
        name = name.strip(" \t\r\n")
        if not eq or not _TAG_NAME.match(name):
            raise DkimError("permerror", f"bad tag {part.strip()[:40]!r}")
        if name in out:
            raise DkimError("permerror", f"tag {name}= given twice")
        if len(out) >= MAX_TAGS:
            raise DkimError("permerror", "too many tags")
        out[name] = value.strip(" \t\r\n")
    return out


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(_FWS.sub("", value), validate=True)
    except (ValueError, TypeError):
        raise DkimError("permerror", "bad base64") from None


# --- canonicalization (RFC 6376 3.4) -----------------------------------------------------


def split_message(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (lower-case name, raw bytes with CRLFs), body). ``data`` has CRLF
    line endings; a message without a blank line has an empty body."""
    if data.startswith(b"\r\n"):
        return [], data[2:]
    end = data.find(b"\r\n\r\n")
    head, body = (data, b"") if end < 0 else (data[: end + 2], data[end + 4 :])
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line + b"\r\n")
        else:
            name = line.partition(b":")[0].strip().lower()
            fields.append((name, line + b"\r\n"))
    return fields, body


def canon_header(raw: bytes, method: str) -> bytes:
    """One header field, canonicalized; ``raw`` ends with CRLF and the result does too."""
    if method == "simple":
        return raw
    name, _, value = raw.partition(b":")
    value = value.replace(b"\r\n", b"")
    if b"\r" in value or b"\n" in value or b"\x0b" in value or b"\x0c" in value:
        # bytes.split() would also eat these, which are not WSP: the exact rule
        value = _WSP.sub(b" ", value).strip(b" ")
    else:
        # Unfolded, every run of SP/HTAB becomes one SP, none at either end (RFC 6376
        # 3.4.2): split() and join() do that in C, several times faster than the regex.
        value = b" ".join(value.split())
    return name.strip(b" \t").lower() + b":" + value + b"\r\n"


def canon_body(body: bytes, method: str) -> bytes:
    if method == "relaxed":
        # Whole-body passes (memchr/regex over the bytes) rather than one per line: the
        # per-line version was most of the signing time of a 5 KB message.
        if b"\t" in body or b"  " in body:
            body = _WSP.sub(b" ", body)
        if b" \r\n" in body:
            body = body.replace(b" \r\n", b"\r\n")
        if body.endswith(b" "):
            body = body.rstrip(b" ")
    # Both: no trailing empty lines; simple keeps one CRLF for an empty body.
    stripped = body.rstrip(b"\r\n")
    # rstrip removed the final CRLF too (and maybe stray CRs of empty lines: none remain in
    # CRLF-normalized data since each is paired)
    if not stripped:
        return b"" if method == "relaxed" else b"\r\n"
    return stripped + b"\r\n"


def body_hash(body: bytes, method: str, length: int | None = None) -> tuple[bytes, int]:
    """(SHA-256 of the canonical body, possibly cut at ``length``; canonical length)."""
    canon = canon_body(body, method)
    data = canon if length is None else canon[:length]
    return hashlib.sha256(data).digest(), len(canon)


def select_fields(fields: Sequence[tuple[bytes, bytes]], names: Iterable[str]) -> list[bytes | None]:
    """RFC 6376 5.4.2: for each name, the last not-yet-used instance (None if none left)."""
    positions: dict[bytes, list[int]] = {}
    for i, (n, _) in enumerate(fields):
        positions.setdefault(n, []).append(i)
    out: list[bytes | None] = []
    for name in names:
        stack = positions.get(name.strip().lower().encode())
        out.append(fields[stack.pop()][1] if stack else None)
    return out


_B_TAG = re.compile(rb"((?:^|;)[ \t\r\n]*b[ \t\r\n]*=)[^;]*")


def strip_b(raw: bytes) -> bytes:
    """The signature field with the value of its ``b=`` tag emptied (RFC 6376 3.7)."""
    name, colon, value = raw.partition(b":")
    return name + colon + _B_TAG.sub(rb"\1", value, count=1)


def header_hash_input(
    fields: Sequence[tuple[bytes, bytes]], names: Sequence[str], sig_field: bytes, method: str
) -> bytes:
    """The bytes the header hash covers: each selected field canonicalized, then the
    signature field itself with ``b=`` empty and without its final CRLF (RFC 6376 3.7)."""
    parts = [canon_header(f, method) for f in select_fields(fields, names) if f is not None]
    last = canon_header(strip_b(sig_field), method)
    parts.append(last[:-2] if last.endswith(b"\r\n") else last)
    return b"".join(parts)


# --- keys --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    algorithm: str  # "rsa" | "ed25519"
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey = field(repr=False)
    testing: bool = False  # t=y (RFC 6376 3.6.1)
    strict: bool = False  # t=s: i= must be d= exactly
    hashes: tuple[str, ...] = ()


def parse_key(record: str) -> PublicKey:
    """A DKIM key record (RFC 6376 3.6.1). Empty ``p=`` means revoked (fail)."""
    tags = parse_tags(record)
    if tags.get("v", "DKIM1") != "DKIM1":
        raise DkimError("permerror", "key record v= is not DKIM1")
    k = tags.get("k", "rsa").lower()
    if "p" not in tags:
        raise DkimError("permerror", "key record without p=")
    raw = _b64(tags["p"])
    if not raw:
        raise DkimError("fail", "key revoked")
    flags = {f.strip() for f in tags.get("t", "").split(":")}
    hs = tuple(h.strip().lower() for h in tags["h"].split(":")) if "h" in tags else ()
    if hs and "sha256" not in hs:
        raise DkimError("permerror", "key does not allow sha256")
    if "s" in tags and not ({s.strip() for s in tags["s"].split(":")} & {"*", "email"}):
        raise DkimError("permerror", "key not for email")
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    if k == "rsa":
        try:
            loaded = serialization.load_der_public_key(raw)
        except ValueError:
            raise DkimError("permerror", "bad RSA key") from None
        if not isinstance(loaded, rsa.RSAPublicKey):
            raise DkimError("permerror", "key is not RSA")
        if loaded.key_size < MIN_RSA_BITS:
            raise DkimError("permerror", f"RSA key of {loaded.key_size} bits (< {MIN_RSA_BITS})")
        key = loaded
    elif k == "ed25519":
        if len(raw) != 32:
            raise DkimError("permerror", "bad Ed25519 key")
        key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    else:
        raise DkimError("permerror", f"unknown key type {k!r}")
    return PublicKey(k, key, "y" in flags, "s" in flags, hs)


@dataclass(frozen=True)
class PrivateKey:
    """A signing key: ``domain``, ``selector``, algorithm "ed25519" or "rsa"."""

    domain: str
    selector: str
    algorithm: str
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_pem(cls, domain: str, selector: str, pem: bytes) -> PrivateKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            return cls(domain, selector, "rsa", key)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(domain, selector, "ed25519", key)
        raise ValueError("not an RSA or Ed25519 key")


def generate_key(algorithm: str, bits: int = 2048) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown algorithm {algorithm!r}")


def private_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_record(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The TXT record value publishing ``key`` (RFC 6376 3.6.1, RFC 8463 4)."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()


# --- signing -----------------------------------------------------------------------------


def _fold_tag(lines: list[str], line: str, name: str, value: str, last: bool) -> str:
    """Add ``name=value`` to a field being folded near 78 columns: full lines go to
    ``lines``, the open line is returned. Long values (b=, bh=, h=) are broken with FWS
    where the syntax allows it (base64 and colon-separated lists)."""
    piece = f"{name}={value}" + ("" if last else ";")
    if len(line) + 1 + len(piece) <= 78:
        return line + " " + piece
    lines.append(line)
    line = "\t"
    if name in ("b", "bh"):
        chunk = f"{name}="
        rest = piece[len(chunk) :]
        line += chunk
        while rest:
            room = max(8, 78 - len(line))
            line += rest[:room]
            rest = rest[room:]
            if rest:
                lines.append(line)
                line = "\t "
    elif name == "h" and len(piece) > 76:
        words = piece.split(":")
        line += words[0]
        for w in words[1:]:
            if len(line) + 1 + len(w) > 78:
                lines.append(line + ":")
                line = "\t " + w
            else:
                line += ":" + w
    else:
        line += piece
    return line


def _folded(lines: list[str], line: str) -> bytes:
    return ("\r\n".join([*lines, line]) + "\r\n").encode()


def fold_tags(prefix: str, tags: Sequence[tuple[str, str]]) -> bytes:
    """``Name: t=v; t=v`` folded near 78 columns (see :func:`_fold_tag`)."""
    lines: list[str] = []
    line = prefix
    for i, (name, value) in enumerate(tags):
        line = _fold_tag(lines, line, name, value, i == len(tags) - 1)
    return _folded(lines, line)


def signed_names(fields: Sequence[tuple[bytes, bytes]], names: Sequence[str] = SIGNED_FIELDS) -> list[str]:
    """``h=`` for a message: each name once per instance present, plus once more."""
    counts: dict[bytes, int] = {}
    for n, _ in fields:
        counts[n] = counts.get(n, 0) + 1
    out: list[str] = []
    for name in names:
        out.extend([name] * (counts.get(name.encode(), 0) + 1))
    return out


def sign_digest(key: PrivateKey, data: bytes) -> bytes:
    """RFC 6376 3.3.1 (RSASSA-PKCS1-v1_5 over SHA-256) / RFC 8463 3 (Ed25519 over the
    SHA-256 hash of the data)."""
    if isinstance(key.key, rsa.RSAPrivateKey):
        return key.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.key.sign(hashlib.sha256(data).digest())


def verify_digest(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key.key, rsa.RSAPublicKey):
            key.key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.key.verify(signature, hashlib.sha256(data).digest())
    except (InvalidSignature, ValueError):
        return False
    return True


_SIGNED_BYTES = tuple((name, name.encode()) for name in SIGNED_FIELDS)


def _signed_headers(fields: Sequence[tuple[bytes, bytes]]) -> tuple[list[str], list[bytes]]:
    """``h=`` (over-signed, :data:`SIGNED_FIELDS`) and the relaxed canonical form of the
    fields it selects, in one pass: the same result as :func:`signed_names` followed by
    :func:`select_fields` and :func:`canon_header`, which the signing of every submitted
    message would otherwise pay for separately."""
    present: dict[bytes, list[bytes]] = {}
    for n, raw in fields:
        present.setdefault(n, []).append(raw)
    names: list[str] = []
    canon: list[bytes] = []
    for name, key in _SIGNED_BYTES:
        instances = present.get(key)
        if instances:
            for raw in reversed(instances):  # bottom-up (RFC 6376 5.4.2)
                names.append(name)
                canon.append(canon_header(raw, "relaxed"))
        names.append(name)  # once more: a field of this name added later breaks it
    return names, canon


def sign(
    data: bytes,
    key: PrivateKey,
    *,
    timestamp: int | None = None,
    names: Sequence[str] | None = None,
    field_name: str = "DKIM-Signature",
    extra: Sequence[tuple[str, str]] = (),
    version: bool = True,
) -> bytes:
    """The ``DKIM-Signature`` field (with CRLF) to prepend to ``data`` (CRLF-normalized),
    ``relaxed/relaxed``, over-signed (see :data:`SIGNED_FIELDS`).

    Cost matters here (every submitted message, goal < 0.2 ms with Ed25519): the header
    fields are selected and canonicalized in one pass, and the field is folded once up to
    ``b=``; the hashed form and the final field share that prefix."""
    fields, body = split_message(data)
    bh, _ = body_hash(body, "relaxed")
    if names is None:
        h, parts = _signed_headers(fields)
    else:
        h = list(names)
        parts = [canon_header(f, "relaxed") for f in select_fields(fields, h) if f is not None]
    algorithm = "ed25519-sha256" if key.algorithm == "ed25519" else "rsa-sha256"
    tags: list[tuple[str, str]] = [*([("v", "1")] if version else []), *extra, ("a", algorithm),
                                   ("c", "relaxed/relaxed"), ("d", key.domain), ("s", key.selector)]
    if timestamp is not None:
        tags.append(("t", str(timestamp)))
    tags += [("h", ":".join(h)), ("bh", base64.b64encode(bh).decode())]
    lines: list[str] = []
    line = f"{field_name}:"
    for name, value in tags:
        line = _fold_tag(lines, line, name, value, False)
    open_lines = list(lines)
    unsigned = _folded(open_lines, _fold_tag(open_lines, line, "b", "", True))
    # RFC 6376 3.7: the signature field itself, b= empty, without its final CRLF.
    parts.append(canon_header(unsigned, "relaxed")[:-2])
    signature = sign_digest(key, b"".join(parts))
    return _folded(lines, _fold_tag(lines, line, "b", base64.b64encode(signature).decode(), True))


# --- verification ------------------------------------------------------------------------


@dataclass
class Signature:
    """One parsed, body-checked signature waiting for its key (see :func:`prepare`)."""

    raw: bytes = field(repr=False)
    domain: str
    selector: str
    algorithm: str
    identity: str  # i= (or @d)
    header_method: str
    names: tuple[str, ...]
    signature: bytes = field(repr=False)
    header_data: bytes = field(repr=False)
    partial: bool = False  # l= left body content unsigned
    timestamp: int | None = None
    expires: int | None = None
    error: DkimError | None = None  # set when the signature failed before the key lookup

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def parse_signature(raw: bytes, *, now: int | None = None, arc: bool = False) -> dict[str, str]:
    """The tags of one signature field, checked for required tags and consistency
    (RFC 6376 3.5, 6.1.1). ``arc``: an ARC-Message-Signature (no ``v=``, has ``i=N``)."""
    try:
        text = raw.partition(b":")[2].decode("ascii")
    except UnicodeDecodeError:
        raise DkimError("permerror", "non-ASCII signature") from None
    tags = parse_tags(text)
    required = ("a", "b", "bh", "d", "h", "s") + (("i",) if arc else ("v",))
    missing = [t for t in required if t not in tags]
    if missing:
        raise DkimError("permerror", f"signature without {', '.join(t + '=' for t in missing)}")
    if not arc and tags["v"] != "1":
        raise DkimError("permerror", f"unknown version v={tags['v']}")
    if tags["a"].lower() not in ALGORITHMS:
        raise DkimError("permerror", f"algorithm {tags['a']} not accepted")
    names = [n.strip().lower() for n in _FWS.sub("", tags["h"]).split(":")]
    if "from" not in names:
        raise DkimError("permerror", "h= does not include From")
    if len(names) > MAX_H_FIELDS or not all(names):
        raise DkimError("permerror", "bad h=")
    d = tags["d"].lower().rstrip(".")
    if not arc:
        identity = tags.get("i", "@" + d).lower()
        idomain = identity.rpartition("@")[2]
        if "@" not in identity or not (idomain == d or idomain.endswith("." + d)):
            raise DkimError("permerror", "i= is not in d=")
    if now is not None and "x" in tags:
        try:
            if int(tags["x"]) < now:
                raise DkimError("fail", "signature expired")
        except ValueError:
            raise DkimError("permerror", "bad x=") from None
    return tags


def prepare(
    fields: Sequence[tuple[bytes, bytes]], body: bytes, index: int, *, now: int | None = None,
    body_cache: dict[tuple[str, int | None], tuple[bytes, int]] | None = None,
    arc: bool = False,
) -> Signature:
    """Check the signature at ``fields[index]`` as far as possible without its key: syntax,
    expiry, body hash; compute the header hash input. Problems are recorded in ``error``."""
    raw = fields[index][1]
    sig = Signature(raw, "", "", "", "", "relaxed", (), b"", b"")
    try:
        tags = parse_signature(raw, now=now, arc=arc)
        sig.domain = tags["d"].lower().rstrip(".")
        sig.selector = tags["s"].lower()
        sig.algorithm = tags["a"].lower()
        sig.identity = "@" + sig.domain if arc else tags.get("i", "@" + sig.domain)
        canon = tags.get("c", "simple/simple").lower()
        header_method, _, body_method = canon.partition("/")
        body_method = body_method or "simple"
        if header_method not in ("simple", "relaxed") or body_method not in ("simple", "relaxed"):
            raise DkimError("permerror", f"unknown canonicalization {canon}")
        sig.header_method = header_method
        sig.names = tuple(n.strip() for n in _FWS.sub("", tags["h"]).split(":"))
        length: int | None = None
        if "l" in tags:
            if not tags["l"].isdigit() or len(tags["l"]) > 76:
                raise DkimError("permerror", "bad l=")
            length = int(tags["l"])
        if "t" in tags and tags["t"].isdigit():
            sig.timestamp = int(tags["t"])
        sig.signature = _b64(tags["b"])
        expected = _b64(tags["bh"])
        key = (body_method, length)
        if body_cache is not None and key in body_cache:
            digest, total = body_cache[key]
        else:
            digest, total = body_hash(body, body_method, length)
            if body_cache is not None:
                body_cache[key] = (digest, total)
        if length is not None:
            if length > total:
                raise DkimError("permerror", "l= is longer than the body")
            sig.partial = length < total
        if digest != expected:
            raise DkimError("fail", "body hash does not verify")
        sig.header_data = header_hash_input(
            [f for i, f in enumerate(fields) if i != index], sig.names, raw, header_method
        )
    except DkimError as e:
        sig.error = e
    return sig


def verify_prepared(sig: Signature, key: PublicKey) -> None:
    """Raise DkimError unless ``key`` verifies ``sig`` (RFC 6376 6.1.3)."""
    if sig.error is not None:
        raise sig.error
    want = "ed25519" if sig.algorithm == "ed25519-sha256" else "rsa"
    if key.algorithm != want:
        raise DkimError("permerror", f"key type {key.algorithm} does not match a={sig.algorithm}")
    if key.strict and sig.identity.rpartition("@")[2].lower() != sig.domain:
        raise DkimError("permerror", "key requires i= to be d=")
    if not verify_digest(key, sig.signature, sig.header_data):
        raise DkimError("fail", "signature does not verify")
