"""SMTP envelope grammar: paths, addresses, domains, ESMTP parameters, xtext.

Stable API (the SMTP client core and the shell import this module; keep these names):

``Address``  frozen: ``local`` (decoded local part, case kept), ``domain`` (canonical:
    lowercase A-labels or a normalised address literal; ``""`` only for ``<Postmaster>``),
    ``local_raw`` / ``domain_raw`` (as written), ``domain_unicode`` (lowercase U-labels),
    ``quoted``, ``literal``; properties ``has_routing_chars``, ``needs_smtputf8``,
    ``is_postmaster``, ``local_wire``; ``str(addr)`` is the canonical wire form
    ``local@domain`` (re-quoted when needed, A-label domain).
``Path``  frozen: ``address`` (``None`` for the null path ``<>``), ``route`` (source-route
    domains, see below), ``raw``; ``is_null``; ``str(path)`` → ``"<...>"``.
``parse_reverse_path(text, *, utf8) -> Path``   raises ``SmtpError`` 501 5.1.7 / 553 5.6.7
``parse_forward_path(text, *, utf8) -> Path``   raises ``SmtpError`` 501 5.1.3 / 553 5.6.7
``parse_address(text, *, utf8=True) -> Address``  bare ``local@domain``; raises AddressError
``parse_domain(text, *, utf8=True) -> tuple[str, str]``  (ascii, unicode); AddressError
``split_path_argument(text) -> tuple[str, str] | None``  ``"<path> params"`` → (path, params)
``parse_esmtp_params(text) -> dict[str, str | None]``  keywords upper-cased; SmtpError 501
``parse_mail_params(params, *, extensions=EXTENSIONS) -> MailParams``  SmtpError 501/555
``parse_rcpt_params(params, *, extensions=EXTENSIONS) -> RcptParams``  SmtpError 501/555
``xtext_decode(text) -> str`` (ValueError) / ``xtext_encode(text) -> str``  RFC 3461 4
``quote_local_part(local) -> str``, ``format_path(address, *, utf8=False) -> str``
``parse_ehlo_reply(reply) -> tuple[str, dict[str, str]]``  (server name, {KEYWORD: params})

Decisions recorded here:

* Source routes ``<@a,@b:user@c>`` are accepted (RFC 5321 4.1.1.3 and appendix C: "MUST
  accept ... SHOULD ignore") and returned in ``Path.route``; the address is the final
  mailbox. We never relay on a route: the shell treats the address alone, or refuses when
  ``path.route`` is non-empty.
* A trailing dot (``user@example.com.``) is a syntax error: RFC 5321 ``Domain`` has none.
* Relay tricks that ARE valid syntax are left for the shell to refuse, flagged by
  ``Address.has_routing_chars``: percent hack ``user%other@local``, bang path
  ``host!user@local``, quoted ``"user@other"@local`` (and ``:`` for quoted route forms).
* Bare addresses without angle brackets are refused (RFC 5321 4.1.2 requires ``<...>``).
* Non-ASCII (RFC 6531) is parsed everywhere, then refused with 553 5.6.7 unless
  ``utf8=True`` (MAIL carried SMTPUTF8). Domains are converted to A-labels (IDNA2008, UTS 46
  mapping) for ``domain``; ``domain_unicode`` keeps the U-label form.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass

import idna

from postroom.proto.smtp.replies import (
    BAD_PARAMETER,
    BAD_RCPT_SYNTAX,
    BAD_SENDER_SYNTAX,
    DUPLICATE_PARAMETER,
    NON_ASCII_ADDRESS,
    UNKNOWN_PARAMETER,
    Reply,
    SmtpError,
)

__all__ = [
    "EXTENSIONS",
    "Address",
    "AddressError",
    "MailParams",
    "Orcpt",
    "Path",
    "RcptParams",
    "format_path",
    "parse_address",
    "parse_domain",
    "parse_ehlo_reply",
    "parse_esmtp_params",
    "parse_forward_path",
    "parse_mail_params",
    "parse_rcpt_params",
    "parse_reverse_path",
    "quote_local_part",
    "split_path_argument",
    "xtext_decode",
    "xtext_encode",
]

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1 (octets)
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2 (octets)
MAX_PATH = 256  # RFC 5321 4.5.3.1.3 (octets, including the angle brackets)
MAX_LABEL = 63  # RFC 1035 2.3.4
MAX_ENVID = 100  # RFC 3461 4.4
MAX_ORCPT = 500  # RFC 3461 4.2

# Extensions whose MAIL/RCPT parameters parse_*_params honours (the server passes the set
# it advertises; a parameter of an extension not in the set is "unknown" → 555).
EXTENSIONS: frozenset[str] = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "DSN"})


class AddressError(ValueError):
    """An address, path or domain does not parse; ``non_ascii`` when only SMTPUTF8 is missing."""

    def __init__(self, reason: str, non_ascii: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.non_ascii = non_ascii


# --- ABNF ----------------------------------------------------------------------------
# RFC 5322 3.2.3 atext, extended by RFC 6531 3.3 with UTF8-non-ascii:
#   atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" /
#           "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"  /  UTF8-non-ascii
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff"
# RFC 5321 4.1.2: Dot-string = Atom *("." Atom); Atom = 1*atext
_DOT_STRING_RE = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
# Quoted-string = DQUOTE *QcontentSMTP DQUOTE
# QcontentSMTP = qtextSMTP / quoted-pairSMTP;  quoted-pairSMTP = %d92 %d32-126
# qtextSMTP = %d32-33 / %d35-91 / %d93-126  /  UTF8-non-ascii (RFC 6531)
_QUOTED_RE = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\([\x20-\x7e])")
# sub-domain = Let-dig [Ldh-str];  Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# IPv4-address-literal = Snum 3("." Snum);  Snum = 1*3DIGIT  (value 0-255)
_IPV4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# IPv6-address-literal = "IPv6:" IPv6-addr
_IPV6_CHARS_RE = re.compile(r"[0-9A-Fa-f:.]+")
# General-address-literal = Standardized-tag ":" 1*dcontent; dcontent = %d33-90 / %d94-126
_GENERAL_LITERAL_RE = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
# Path token inside a command argument: "<" ... ">" where ">" inside a quoted local part
# does not end it. The two alternatives start differently, so matching stays linear.
_PATH_TOKEN_RE = re.compile(r'<(?:[^>"]|"(?:[^"\\]|\\.)*")*>')
# RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
#                 esmtp-value = 1*(%d33-60 / %d62-126)  /  UTF8-non-ascii (RFC 6531 3.3)
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE_RE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")
# RFC 3461 4: xtext = *( xchar / hexchar ); xchar = "!".."~" except "+" and "=";
# hexchar = "+" 2(HEXDIG). RFC says upper-case hex; we read lower case too.
_XTEXT_RE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*")
_XTEXT_HEX_RE = re.compile(r"\+([0-9A-Fa-f]{2})")
# RFC 6533 3: utf-8-addr-xtext / utf-8-addr-unitext with EmbeddedUnicodeChar "\x{HEX}"
_UTF8_ADDR_RE = re.compile(
    r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\x\{[0-9A-Fa-f]{2,6}\})+"
)
_UTF8_ADDR_ESCAPE_RE = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")
_ROUTING_CHARS = frozenset("%!@:")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed mailbox ``Local-part "@" ( Domain / address-literal )`` (RFC 5321 4.1.2)."""

    local: str
    domain: str
    local_raw: str
    domain_raw: str
    domain_unicode: str
    quoted: bool = False
    literal: bool = False

    @property
    def has_routing_chars(self) -> bool:
        """True for the open-relay tricks ``%``, ``!``, ``@`` or ``:`` in the local part.

        A local mailbox never needs them; a shell that relays must refuse such addresses
        for non-local delivery, and a local delivery should refuse them too (they are the
        percent hack, bang paths, and ``"user@other"@local``).
        """
        return not _ROUTING_CHARS.isdisjoint(self.local)

    @property
    def needs_smtputf8(self) -> bool:
        return not (self.local_raw.isascii() and self.domain_raw.isascii())

    @property
    def is_postmaster(self) -> bool:
        """Local part ``postmaster`` in any case (RFC 5321 4.1.1.3); domain is the shell's."""
        return self.local.lower() == "postmaster"

    @property
    def local_wire(self) -> str:
        return quote_local_part(self.local)

    def __str__(self) -> str:
        if not self.domain:
            return self.local_wire
        return f"{self.local_wire}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Path:
    """A reverse- or forward-path; ``address`` is None for the null path ``<>``."""

    address: Address | None
    route: tuple[str, ...] = ()
    raw: str = ""

    @property
    def is_null(self) -> bool:
        return self.address is None

    def __str__(self) -> str:
        return format_path(self.address)


# --- domains ----------------------------------------------------------------------------


def _parse_literal(raw: str) -> str:
    """Return the canonical form of an address literal ``[...]`` (RFC 5321 4.1.3)."""
    inner = raw[1:-1]
    if _IPV4_RE.fullmatch(inner):
        try:
            return f"[{ipaddress.IPv4Address(inner)}]"
        except ValueError:
            raise AddressError("bad IPv4 literal") from None
    if inner[:5].lower() == "ipv6:":
        text = inner[5:]
        # ipaddress accepts "%zone" scope ids; RFC 5321's IPv6-addr does not.
        if not _IPV6_CHARS_RE.fullmatch(text):
            raise AddressError("bad IPv6 literal")
        try:
            return f"[IPv6:{ipaddress.IPv6Address(text).compressed}]"
        except ValueError:
            raise AddressError("bad IPv6 literal") from None
    if _GENERAL_LITERAL_RE.fullmatch(inner):
        return raw
    raise AddressError("bad address literal")


@functools.lru_cache(maxsize=1024)
def _parse_domain_name(raw: str) -> tuple[str, str]:
    # Cached (a pure function; errors are raised again, not cached): a session parses its
    # EHLO name, its sender's and its recipients' domains, label by label, and a server
    # sees the same few domains again and again (its own above all).
    if not raw:
        raise AddressError("empty domain")
    ascii_labels: list[str] = []
    unicode_labels: list[str] = []
    for label in raw.split("."):
        if not label:
            # Covers "a..b", ".a" and the trailing-dot relay trick "user@local.".
            raise AddressError("empty domain label")
        if label.isascii():
            if len(label) > MAX_LABEL or not _LABEL_RE.fullmatch(label):
                raise AddressError("bad domain label")
            lower = label.lower()
            ascii_labels.append(lower)
            if lower.startswith("xn--"):
                # A fake A-label is a spoofing tool; refuse what IDNA2008 refuses.
                try:
                    unicode_labels.append(idna.ulabel(lower))
                except (idna.IDNAError, UnicodeError):
                    raise AddressError("bad A-label") from None
            else:
                unicode_labels.append(lower)
        else:
            try:
                alabel = idna.encode(label, uts46=True, std3_rules=True).decode("ascii")
                ulabel = idna.ulabel(alabel)
            except (idna.IDNAError, UnicodeError, ValueError):
                raise AddressError("bad internationalized domain label") from None
            if "." in alabel:  # UTS 46 mapped an ideographic full stop
                raise AddressError("bad internationalized domain label")
            ascii_labels.append(alabel)
            unicode_labels.append(ulabel)
    ascii_domain = ".".join(ascii_labels)
    if len(ascii_domain) > MAX_DOMAIN:
        raise AddressError("domain too long")
    return ascii_domain, ".".join(unicode_labels)


def parse_domain(text: str, *, utf8: bool = True) -> tuple[str, str]:
    """Parse ``Domain / address-literal``; return (canonical ASCII form, Unicode form).

    For EHLO arguments and configuration values. Raises :class:`AddressError`.
    """
    if len(text.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if not utf8 and not text.isascii():
        raise AddressError("non-ASCII domain", non_ascii=True)
    if text.startswith("[") and text.endswith("]"):
        literal = _parse_literal(text)
        return literal, literal
    return _parse_domain_name(text)


# --- addresses and paths ----------------------------------------------------------------


def _parse_mailbox(text: str) -> Address:
    # Local-part: Quoted-string or Dot-string, then "@", then the domain.
    quoted = text.startswith('"')
    if quoted:
        m = _QUOTED_RE.match(text)
        if m is None:
            raise AddressError("bad quoted local part")
        local_raw = m.group(0)
        local = _QUOTED_PAIR_RE.sub(r"\1", m.group(1))
        rest = text[m.end() :]
    else:
        at = text.rfind("@")
        if at < 0:
            raise AddressError("missing @domain")
        local_raw = text[:at]
        if not _DOT_STRING_RE.fullmatch(local_raw):
            raise AddressError("bad local part")
        local = local_raw
        rest = text[at:]
    if not rest.startswith("@"):
        raise AddressError("missing @domain")
    domain_raw = rest[1:]
    if len(local_raw.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if len(domain_raw.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if domain_raw.startswith("["):
        if not domain_raw.endswith("]"):
            raise AddressError("bad address literal")
        domain = _parse_literal(domain_raw)
        return Address(local, domain, local_raw, domain_raw, domain, quoted, True)
    domain, domain_unicode = _parse_domain_name(domain_raw)
    return Address(local, domain, local_raw, domain_raw, domain_unicode, quoted, False)


def parse_address(text: str, *, utf8: bool = True) -> Address:
    """Parse a bare mailbox ``local@domain`` (no angle brackets). Raises AddressError."""
    if len(text.encode("utf-8")) > MAX_PATH - 2:
        raise AddressError("address too long")
    address = _parse_mailbox(text)
    if not utf8 and address.needs_smtputf8:
        raise AddressError("non-ASCII address without SMTPUTF8", non_ascii=True)
    return address


def _parse_path(text: str, *, utf8: bool, null_ok: bool, postmaster_ok: bool) -> Path:
    # RFC 5321 4.1.2: Path = "<" [ A-d-l ":" ] Mailbox ">"
    if len(text.encode("utf-8")) > MAX_PATH:
        raise AddressError("path too long")
    if len(text) < 2 or text[0] != "<" or text[-1] != ">":
        raise AddressError("path must be enclosed in <>")
    inner = text[1:-1]
    if not inner:
        if null_ok:
            return Path(None, (), text)
        raise AddressError("null path not allowed here")
    route: tuple[str, ...] = ()
    if inner.startswith("@"):
        # A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain. Domains in a route
        # cannot contain ":" (no address literals), so the first ":" ends the route.
        colon = inner.find(":")
        if colon < 0:
            raise AddressError("bad source route")
        hops = []
        for hop in inner[:colon].split(","):
            if not hop.startswith("@"):
                raise AddressError("bad source route")
            hops.append(_parse_domain_name(hop[1:])[0])
        route = tuple(hops)
        inner = inner[colon + 1 :]
    # RFC 5321 4.1.1.3: "<Postmaster>" without a domain, in any case, for RCPT only.
    if postmaster_ok and not route and inner.lower() == "postmaster":
        address = Address(inner, "", inner, "", "", False, False)
    else:
        address = _parse_mailbox(inner)
    if not utf8 and address.needs_smtputf8:
        raise AddressError("non-ASCII address without SMTPUTF8", non_ascii=True)
    return Path(address, route, text)


def _path_error(exc: AddressError, syntax: Reply) -> SmtpError:
    if exc.non_ascii:
        return SmtpError(NON_ASCII_ADDRESS)
    return SmtpError(syntax.with_text(f"{syntax.text}: {exc.reason}"))


def parse_reverse_path(text: str, *, utf8: bool) -> Path:
    """``Reverse-path = Path / "<>"`` (MAIL FROM). SmtpError 501 5.1.7 or 553 5.6.7."""
    try:
        return _parse_path(text, utf8=utf8, null_ok=True, postmaster_ok=False)
    except AddressError as exc:
        raise _path_error(exc, BAD_SENDER_SYNTAX) from None


def parse_forward_path(text: str, *, utf8: bool) -> Path:
    """``"<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path`` (RCPT TO).

    SmtpError 501 5.1.3 or 553 5.6.7.
    """
    try:
        return _parse_path(text, utf8=utf8, null_ok=False, postmaster_ok=True)
    except AddressError as exc:
        raise _path_error(exc, BAD_RCPT_SYNTAX) from None


def split_path_argument(text: str) -> tuple[str, str] | None:
    """Split ``"<path> [params]"`` (after ``FROM:`` / ``TO:``) into (path, params).

    Leading spaces are tolerated (``MAIL FROM: <a@b>`` is common, if not RFC 5321).
    Returns None when there is no well-formed ``<...>`` token.
    """
    text = text.lstrip(" ")
    m = _PATH_TOKEN_RE.match(text)
    if m is None:
        return None
    rest = text[m.end() :]
    if rest and rest[0] != " ":
        return None
    return m.group(0), rest.strip(" ")


def quote_local_part(local: str) -> str:
    """Wire form of a decoded local part: as is when a Dot-string, else a Quoted-string."""
    # Letters and digits alone are a Dot-string: two C calls, where the regex costs
    # ~20x more (an address is formatted several times per SMTP transaction).
    if local.isalnum() and local.isascii():
        return local
    if _DOT_STRING_RE.fullmatch(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_path(address: Address | None, *, utf8: bool = False) -> str:
    """``<local@domain>`` (U-label domain when ``utf8``), or ``<>`` for None."""
    if address is None:
        return "<>"
    if utf8 and address.domain:
        return f"<{address.local_wire}@{address.domain_unicode}>"
    return f"<{address}>"


# --- ESMTP parameters -------------------------------------------------------------------


def parse_esmtp_params(text: str) -> dict[str, str | None]:
    """``esmtp-param *(SP esmtp-param)`` → {KEYWORD: value or None}.

    Keywords are case-insensitive (RFC 5321 2.4) and upper-cased here. RFC 1869 6 leaves a
    repeated keyword undefined: the same keyword with the same value is accepted once (Python's
    smtplib adds ``SIZE=n`` to a caller's own ``size=n``, and Postfix accepts it); two
    different values are a 501, since picking either one could hide an attack.
    """
    params: dict[str, str | None] = {}
    for token in text.split(" "):
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not _KEYWORD_RE.fullmatch(key) or (eq and not _VALUE_RE.fullmatch(value)):
            raise SmtpError(BAD_PARAMETER.with_text(f"{BAD_PARAMETER.text}: {token[:40]}"))
        ukey = key.upper()
        if ukey in params:
            if params[ukey] == (value if eq else None):
                continue
            raise SmtpError(DUPLICATE_PARAMETER.with_text(f"{DUPLICATE_PARAMETER.text}: {ukey}"))
        params[ukey] = value if eq else None
    return params


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 4 xtext (``+XX`` hex escapes) to text; ValueError when invalid."""
    if not _XTEXT_RE.fullmatch(text):
        raise ValueError("invalid xtext")
    if "+" not in text:
        return text
    octets = _XTEXT_HEX_RE.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("xtext does not decode to UTF-8") from None


def xtext_encode(text: str) -> str:
    """Encode text as RFC 3461 xtext: ``+`` ``=``, controls, space and 8-bit as ``+XX``."""
    out = []
    for b in text.encode("utf-8"):
        if 0x21 <= b <= 0x7E and b != 0x2B and b != 0x3D:
            out.append(chr(b))
        else:
            out.append(f"+{b:02X}")
    return "".join(out)


def _bad(what: str) -> SmtpError:
    return SmtpError(BAD_PARAMETER.with_text(f"{BAD_PARAMETER.text}: {what}"))


@dataclass(frozen=True, slots=True)
class MailParams:
    """MAIL FROM parameters we understand (RFC 1870, 6152, 6531, 3461, 4954)."""

    size: int | None = None  # RFC 1870: declared size; the real size is checked at the end
    body: str | None = None  # RFC 6152: "7BIT" or "8BITMIME"
    smtputf8: bool = False  # RFC 6531 3.4
    ret: str | None = None  # RFC 3461 4.3: "FULL" or "HDRS"
    envid: str | None = None  # RFC 3461 4.4: decoded xtext
    auth: str | None = None  # RFC 4954 5: decoded AUTH= value ("<>" kept); core ignores it


@dataclass(frozen=True, slots=True)
class Orcpt:
    """RFC 3461 4.2 ORCPT: ``addr-type ";" xtext``; ``raw`` is relayed verbatim."""

    addr_type: str  # lower-cased, e.g. "rfc822" or "utf-8" (RFC 6533)
    address: str  # decoded
    raw: str


@dataclass(frozen=True, slots=True)
class RcptParams:
    """RCPT TO parameters we understand (RFC 3461)."""

    notify: tuple[str, ...] | None = None  # ("NEVER",) or some of SUCCESS, FAILURE, DELAY
    orcpt: Orcpt | None = None


def parse_mail_params(
    params: Mapping[str, str | None], *, extensions: Container[str] = EXTENSIONS
) -> MailParams:
    """Interpret MAIL parameters; unknown or not-enabled keywords → 555 5.5.4."""
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    for key, value in params.items():
        if key == "SIZE" and "SIZE" in extensions:
            # RFC 1870 6: size-value = 1*20DIGIT
            if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
                raise _bad("SIZE")
            size = int(value)
        elif key == "BODY" and "8BITMIME" in extensions:
            # RFC 6152 2: BODY=7BIT / 8BITMIME (BINARYMIME needs RFC 3030 BINARYMIME: not offered)
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise _bad("BODY")
            body = value.upper()
        elif key == "SMTPUTF8" and "SMTPUTF8" in extensions:
            if value is not None:  # RFC 6531 3.4: no value
                raise _bad("SMTPUTF8")
            smtputf8 = True
        elif key == "RET" and "DSN" in extensions:
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise _bad("RET")
            ret = value.upper()
        elif key == "ENVID" and "DSN" in extensions:
            if value is None:
                raise _bad("ENVID")
            try:
                envid = xtext_decode(value)
            except ValueError:
                raise _bad("ENVID") from None
            # RFC 3461 4.4: printable US-ASCII, at most 100 characters.
            if not envid or len(envid) > MAX_ENVID or not _printable_ascii(envid):
                raise _bad("ENVID")
        elif key == "AUTH":
            # RFC 4954 5: AUTH=<> or AUTH=xtext-mailbox. Accepted and ignored by the core
            # (we do not trust a submitter's claim about an earlier authentication).
            if value is None:
                raise _bad("AUTH")
            if value == "<>":
                auth = value
            else:
                try:
                    auth = xtext_decode(value)
                except ValueError:
                    raise _bad("AUTH") from None
        else:
            raise SmtpError(UNKNOWN_PARAMETER.with_text(f"{UNKNOWN_PARAMETER.text}: {key[:40]}"))
    return MailParams(size, body, smtputf8, ret, envid, auth)


_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")


def parse_rcpt_params(
    params: Mapping[str, str | None], *, extensions: Container[str] = EXTENSIONS
) -> RcptParams:
    """Interpret RCPT parameters; unknown or not-enabled keywords → 555 5.5.4."""
    notify: tuple[str, ...] | None = None
    orcpt: Orcpt | None = None
    for key, value in params.items():
        if key == "NOTIFY" and "DSN" in extensions:
            # RFC 3461 4.1: "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )
            if value is None:
                raise _bad("NOTIFY")
            items = [v.upper() for v in value.split(",")]
            if items == ["NEVER"]:
                notify = ("NEVER",)
            else:
                if len(set(items)) != len(items) or not set(items) <= set(_NOTIFY_ORDER):
                    raise _bad("NOTIFY")
                notify = tuple(v for v in _NOTIFY_ORDER if v in items)
        elif key == "ORCPT" and "DSN" in extensions:
            if value is None or len(value) > MAX_ORCPT:
                raise _bad("ORCPT")
            orcpt = _parse_orcpt(value)
        else:
            raise SmtpError(UNKNOWN_PARAMETER.with_text(f"{UNKNOWN_PARAMETER.text}: {key[:40]}"))
    return RcptParams(notify, orcpt)


def _parse_orcpt(value: str) -> Orcpt:
    # RFC 3461 4.2: orcpt-parameter = "ORCPT=" original-recipient-address
    #               original-recipient-address = addr-type ";" xtext
    addr_type, semi, encoded = value.partition(";")
    if not semi or not _KEYWORD_RE.fullmatch(addr_type) or not encoded:
        raise _bad("ORCPT")
    addr_type = addr_type.lower()
    if addr_type == "utf-8":
        # RFC 6533 3: utf-8-addr-xtext / utf-8-addr-unitext, escapes "\x{HEX}".
        if not _UTF8_ADDR_RE.fullmatch(encoded):
            raise _bad("ORCPT")
        try:
            address = _UTF8_ADDR_ESCAPE_RE.sub(_unicode_escape, encoded)
        except ValueError:
            raise _bad("ORCPT") from None
    else:
        try:
            address = xtext_decode(encoded)
        except ValueError:
            raise _bad("ORCPT") from None
    return Orcpt(addr_type, address, value)


def _unicode_escape(m: re.Match[str]) -> str:
    cp = int(m.group(1), 16)
    if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        raise ValueError("bad code point")
    return chr(cp)


def _printable_ascii(text: str) -> bool:
    return all(0x20 <= ord(c) <= 0x7E for c in text)


def parse_ehlo_reply(reply: Reply) -> tuple[str, dict[str, str]]:
    """Split a 250 EHLO reply (RFC 5321 4.1.1.1) into the server name and its extensions.

    ``{"SIZE": "10240000", "PIPELINING": "", "AUTH": "PLAIN LOGIN", ...}``; keywords
    upper-cased, parameters as one string (split by the caller as each extension defines).
    """
    lines = reply.lines
    name = lines[0].split(" ", 1)[0] if lines else ""
    extensions: dict[str, str] = {}
    for line in lines[1:]:
        keyword, _, rest = line.strip().partition(" ")
        if keyword and _KEYWORD_RE.fullmatch(keyword):
            extensions[keyword.upper()] = rest.strip()
    return name, extensions
