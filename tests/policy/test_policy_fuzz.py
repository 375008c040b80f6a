"""Property tests of the mail-authentication parsers (h11's fuzz invariant): garbage in ->
a parsed value or the module's own error, never another exception; and the DNS work an
SPF record can cause stays within RFC 7208's bounds whatever the records say.

Short runs here; ``POSTROOM_SLOW=1`` runs many more examples (tests/conftest.py).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.policy import arc, authres, dkim, dmarc, spf
from support import SLOW

FUZZ = settings(max_examples=2000 if SLOW else 150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _mutated(seeds: list[str], tokens: list[str]) -> st.SearchStrategy[str]:
    """A seed with pieces inserted, deleted or replaced (tokens of the grammar and noise)."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        text = draw(st.sampled_from(seeds))
        for _ in range(draw(st.integers(0, 8))):
            pos = draw(st.integers(0, len(text)))
            op = draw(st.sampled_from(["token", "noise", "delete", "dup"]))
            if op == "token":
                text = text[:pos] + draw(st.sampled_from(tokens)) + text[pos:]
            elif op == "noise":
                text = text[:pos] + draw(st.text(max_size=6)) + text[pos:]
            elif op == "delete":
                text = text[:pos] + text[pos + draw(st.integers(1, 8)):]
            else:
                text = text[:pos] * 2 + text[pos:]
        return text

    return st.one_of(build(), st.text(max_size=300),
                     st.lists(st.sampled_from(tokens), max_size=60).map("".join))


# --- DKIM ---------------------------------------------------------------------------------

_B64 = base64.b64encode(b"x" * 32).decode()
DKIM_SEEDS = [
    f"v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; s=sel; h=from:to:subject; bh={_B64}; b=AAAA",
    f"v=1; a=ed25519-sha256; d=x.test; i=@sub.x.test; s=s; t=1; x=2; l=10; h=From; bh={_B64}; b=AA==",
    f"i=3; a=rsa-sha256; c=relaxed/relaxed; d=x.test; s=s; h=from; bh={_B64}; b=AAAA",
    "v=DKIM1; k=rsa; h=sha256; s=email; t=y:s; p=" + _B64,
    "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    "v=DKIM1; p=",
]
DKIM_TOKENS = ["; ", "=", ";", " ", "\r\n\t", "h=", "from:", ":", "l=", "99999999999999999999",
               "a=", "c=", "simple", "relaxed/", "bh=", "b=", "=", "%", "\x00", "é", "k=", "p=",
               "x=", "t=", "i=", "@", "d=", "v=1", "v=DKIM1", "-1", "0"]


@FUZZ
@given(_mutated(DKIM_SEEDS, DKIM_TOKENS))
def test_dkim_tag_lists_signatures_and_keys(text: str) -> None:
    for call in (lambda: dkim.parse_tags(text), lambda: dkim.parse_key(text),
                 lambda: dkim.parse_signature(b"DKIM-Signature: " + text.encode("utf-8", "surrogatepass")),
                 lambda: dkim.parse_signature(b"ARC-Message-Signature:" + text.encode(), arc=True)):
        try:
            call()
        except dkim.DkimError as e:
            assert e.result in ("permerror", "fail", "temperror"), e.result


@FUZZ
@given(_mutated(DKIM_SEEDS, DKIM_TOKENS), st.binary(max_size=300), st.integers(0, 3))
def test_dkim_prepare_records_every_problem(text: str, body: bytes, extra: int) -> None:
    """A signature field among other fields, over any body: prepare() never raises, it
    records the error; a partial (l=) signature never claims more than the body."""
    fields = [(b"from", b"From: a@x.test\r\n"), (b"subject", b"Subject: s\r\n")] * extra
    raw = b"DKIM-Signature: " + text.encode("utf-8", "surrogatepass") + b"\r\n"
    fields.append((b"dkim-signature", raw))
    sig = dkim.prepare(fields, body, len(fields) - 1, now=100)
    assert sig.error is None or isinstance(sig.error, dkim.DkimError)


@FUZZ
@given(st.binary(max_size=600))
def test_dkim_split_and_canonicalize_any_message(data: bytes) -> None:
    fields, body = dkim.split_message(data)
    for _, raw in fields:
        dkim.canon_header(raw, "relaxed")
        dkim.canon_header(raw, "simple")
    for method in ("simple", "relaxed"):
        digest, total = dkim.body_hash(body, method)
        assert len(digest) == 32 and total >= 0


# --- SPF ----------------------------------------------------------------------------------

SPF_SEEDS = [
    "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx -all",
    "v=spf1 include:a.test redirect=b.test",
    "v=spf1 exists:%{i}.%{l1r+-}.%{d2}.e.test ptr:%{p}.test ?all exp=%{d}.exp.test",
    "v=spf1 a:%{s}.test/24//64 mx:m.test/16 ~all",
    "v=spf1 exists:%{ir}.%{v}._spf.%{d} exp=explain.%{o}",
    "v=spf1 exists:%{p}.%{p}.%{p}.%{p}.x.test a:%{p}.y.test mx:%{p}.z.test -all",
    "v=spf1 a:" + "%{p}." * 16 + "y.test -all",  # each %{p} once cost 11 queries
]
SPF_TOKENS = [" ", "a", "mx", "ptr", "exists:", "include:", "redirect=", "exp=", "ip4:", "ip6:",
              "all", "-", "+", "~", "?", "%{p}", "%{i}", "%{s}", "%{l}", "%{o}", "%{d}", "%{h}",
              "%{c}", "%{r}", "%{t}", "%{v}", "%{ir}", "%{d0}", "%{d99}", "%{p1r.-+,/_=}", "%%",
              "%_", "%-", "%", "/", "//", "/33", "/129", ":", ".", "a.test", "x" * 64, "=",
              "1.2.3.4", "::1", "v=spf1 ", "\x7f", "é"]
ANSWERS = st.one_of(
    st.builds(spf.Answer, error=st.sampled_from(["nxdomain", "temp"])),
    st.builds(spf.Answer, records=st.lists(st.one_of(
        _mutated(SPF_SEEDS, SPF_TOKENS), st.sampled_from(["127.0.0.1", "::1", "192.0.2.1", "a.test", ".", ""]),
    ), max_size=12).map(tuple)),
)


def _rich(query: spf.Query) -> st.SearchStrategy[spf.Answer]:
    """A hostile zone's answer of the asked type: every name exists and has the most a
    record may give (ten PTR or MX names, addresses that never match), so nothing ends
    the evaluation early and every lookup an attacker can cause happens."""
    names = tuple(f"h{i}.a.test" for i in range(spf.MAX_NAMES_PER_TERM))
    fixed = {"PTR": names, "MX": names, "A": ("10.9.9.9",), "AAAA": ("2001:db8::9",)}
    if query.rdtype in fixed:
        return st.just(spf.Answer(fixed[query.rdtype]))
    return _mutated(SPF_SEEDS, SPF_TOKENS).map(lambda r: spf.Answer(("v=spf1 " + r,)))


# RFC 7208 4.6.4: 10 DNS-querying terms, each at most 1 + 10 names (MX/PTR); the first
# record, one PTR validation (11), one explanation, and an include's or redirect's record.
MAX_SPF_QUERIES = 1 + spf.MAX_DNS_TERMS * (2 + spf.MAX_NAMES_PER_TERM) + (1 + spf.MAX_NAMES_PER_TERM) + 1


def _evaluate(gen: spf.SpfGen, answer: Callable[[spf.Query], spf.Answer]) -> spf.SpfResult:
    """Drive an SPF check to its result, answering each query; at most MAX_SPF_QUERIES."""
    queries = 0
    reply: spf.Answer | None = None
    try:
        while True:
            query = gen.send(reply)  # type: ignore[arg-type]
            queries += 1
            assert queries <= MAX_SPF_QUERIES, f"SPF evaluation exceeded its query bound at {query}"
            reply = answer(query)
    except StopIteration as done:
        result: spf.SpfResult = done.value
    return result


@FUZZ
@given(st.data(), st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "bad"]),
       st.sampled_from(["a.test", "x@a.test", "", "@", "%{s}@a.test"]), st.booleans())
def test_spf_any_records_end_in_a_result_within_the_query_bound(data: Any, ip: str, sender: str,
                                                                mixed: bool) -> None:
    def answer(query: spf.Query) -> spf.Answer:
        assert query.rdtype in ("TXT", "A", "AAAA", "MX", "PTR"), query
        drawn: spf.Answer = data.draw(st.one_of(ANSWERS, _rich(query)) if mixed else _rich(query))
        return drawn

    result = _evaluate(spf.check_host(ip, "a.test", sender, helo="h.test"), answer)
    assert isinstance(result, spf.SpfResult) and result.result in spf.RESULTS
    assert result.explanation is None or len(result.explanation) <= spf.MAX_EXPLANATION


_MACRO = st.sampled_from(["%{p}", "%{i}", "%{d}", "%{s}", "%{l}", "%{o}", "%{h}", "%{v}", "%{ir}", "%{p2r}"])
_SPEC = st.lists(_MACRO, max_size=20).map(lambda m: ".".join(m + ["y.test"]))
_TERM = st.one_of(
    st.tuples(st.sampled_from(["a:", "mx:", "exists:", "ptr:", "include:", "-a:", "?mx:"]), _SPEC).map("".join),
    st.sampled_from(["a", "mx", "ptr", "ip4:192.0.2.0/24", "exp=%{p}.e.test", "redirect=%{d}.r.test"]),
)
_DNS_HEAVY = st.lists(_TERM, max_size=14).map(lambda terms: "v=spf1 " + " ".join(terms) + " -all")


@FUZZ
@given(_DNS_HEAVY, st.sampled_from(["192.0.2.1", "2001:db8::1"]))
def test_spf_macro_heavy_records_stay_within_the_query_bound(record: str, ip: str) -> None:
    """Records of many DNS-querying terms full of macros, in a zone where every name
    exists and nothing matches: the worst an attacker's zone can do to one check."""
    names = tuple(f"h{i}.a.test" for i in range(spf.MAX_NAMES_PER_TERM))
    fixed = {"PTR": names, "MX": names, "A": ("10.9.9.9",), "AAAA": ("2001:db8::9",), "TXT": (record,)}
    result = _evaluate(spf.check_host(ip, "a.test", "x@a.test", helo="h.test"),
                       lambda query: spf.Answer(fixed[query.rdtype]))
    assert result.result in spf.RESULTS


# --- DMARC --------------------------------------------------------------------------------

DMARC_SEEDS = [
    "v=DMARC1; p=reject; sp=quarantine; np=reject; adkim=s; aspf=r; pct=50; fo=1:d",
    "v=DMARC1; p=none; rua=mailto:a@x.test!10m,mailto:b@y.test; ruf=mailto:c@z.test",
    "v=DMARC1;p=quarantine",
]
DMARC_TOKENS = ["; ", ";", "=", "p=", "sp=", "np=", "rua=", "mailto:", "!", "10m", "99999999999999999g",
                ",", "@", "pct=", "-5", "1" * 30, "fo=", "0:1:d:s", "v=DMARC1", " ", "reject", "x"]


@FUZZ
@given(_mutated(DMARC_SEEDS, DMARC_TOKENS))
def test_dmarc_records_and_report_uris(text: str) -> None:
    try:
        rec = dmarc.parse_record(text)
    except dmarc.DmarcRecordError:
        pass
    else:
        assert rec.policy in ("none", "quarantine", "reject") and 0 <= rec.pct <= 100
        assert len(rec.rua) <= dmarc.MAX_RUA
    dmarc.select_record([text, text[:10]])
    for address, limit in dmarc.report_addresses(text):
        assert "@" in address and (limit is None or limit >= 0)
        name = dmarc.verify_external_destination("a.test", "mailto:" + address)
        assert name is None or name.startswith("a.test._report._dmarc.")


# --- ARC and Authentication-Results -------------------------------------------------------

ARC_NAMES = [b"arc-seal", b"arc-message-signature", b"arc-authentication-results", b"from", b"subject"]


@st.composite
def arc_fields(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(ARC_NAMES))
        value = draw(st.one_of(
            _mutated(DKIM_SEEDS, DKIM_TOKENS + ["i=1", "i=2", "i=51", "cv=none", "cv=pass", "cv=fail"]),
            st.sampled_from(["i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=AAAA", "i=1; x.test; spf=pass"]),
        ))
        out.append((name, name + b": " + value.encode("utf-8", "surrogatepass") + b"\r\n"))
    return out


@FUZZ
@given(arc_fields(), st.binary(max_size=100))
def test_arc_chain_of_any_fields(fields: list[tuple[bytes, bytes]], body: bytes) -> None:
    sets = arc.collect(fields)
    assert isinstance(sets, (str, dict))
    check = arc.prepare_chain(fields, body, now=100)
    assert check.result in ("none", "fail", "pending")
    assert 0 <= check.instances <= arc.MAX_INSTANCES
    result, _ = arc.finish_chain(check, {})
    assert result in ("none", "fail", "pass")
    assert result != "pass" or not check.signatures


AR_TOKENS = ["Authentication-Results:", " ", "(", ")", "\\", '"', ";", "mail.example.test", ".",
             "\r\n\t", "\r\n", "spf=pass", "1", "\x00", "é"]


@FUZZ
@given(st.lists(st.sampled_from(AR_TOKENS), max_size=40).map("".join), st.binary(max_size=200))
def test_authentication_results_stripping(field: str, rest: bytes) -> None:
    raw = field.encode("utf-8", "surrogatepass")
    ident = authres.authserv_id_of(raw)
    assert ident == ident.lower() and not ident.endswith(".")
    message = b"Authentication-Results:" + raw.partition(b":")[2] + b"\r\nSubject: s\r\n\r\n" + rest
    out, dropped = authres.drop_forged(message, "mail.example.test")
    assert dropped >= 0 and len(out) <= len(message)
    assert out.endswith(b"Subject: s\r\n\r\n" + rest)
