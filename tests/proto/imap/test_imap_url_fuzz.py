"""Property tests of the IMAP URL parser (RFC 5092, RFC 4467) used by CATENATE, URLFETCH,
GENURLAUTH and SMTP BURL: garbage in -> an ImapUrl or UrlError, never another exception;
what parses is consistent (the URLAUTH rump is the text's own prefix, UIDs are positive).
Short runs here; ``POSTROOM_SLOW=1`` runs many more examples."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.proto.imap.url import UrlError, parse_url
from support import SLOW

FUZZ = settings(max_examples=3000 if SLOW else 300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

SEEDS = [
    "imap://alice@example.org/INBOX/;uid=1",
    "imap://a%40b;AUTH=*@h.test:143/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=1.2.MIME/;PARTIAL=0.10",
    "imap://u@h/INBOX/;uid=1/;section=HEADER.FIELDS%20(From%20To);expire=2030-01-01T00:00:00Z"
    ";urlauth=submit+u@h:internal:" + "a1" * 32,
    "imap://u@h/%E2%82%AC/;UID=3;URLAUTH=anonymous:INTERNAL:" + "0" * 64,
    "/Drafts/;UID=1/;PARTIAL=5",
    "/Shared/bob@x.test/INBOX;UIDVALIDITY=1/;UID=4/;SECTION=TEXT",
]
TOKENS = ["/", ";", ";UID=", ";uid=0", ";UIDVALIDITY=", ";SECTION=", ";PARTIAL=", ".", "0", "1",
          "99999999999999999999999", "%", "%2", "%ZZ", "%00", "%C3%28", "%20", "@", ":", "imap://",
          ";URLAUTH=", "authuser", "user+", "submit+", ";EXPIRE=", "2030-13-45T99:99:99+99:99",
          "Z", ":internal:", "f" * 64, "[", "]", "(", ")", "HEADER.FIELDS", "MIME", "1.2.3",
          "\x7f", " ", "é", "//"]


@st.composite
def urls(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["token", "delete", "noise"]))
        if op == "token":
            text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 10)):]
        else:
            text = text[:pos] + draw(st.text(max_size=4)) + text[pos:]
    return text


def _check(text: str) -> None:
    for relative in (False, True):
        try:
            url = parse_url(text, relative=relative)
        except UrlError:
            continue
        assert url.uid >= 1
        assert text.startswith(url.rump)
        assert (url.token is None) or url.access is not None
        assert url.partial is None or (url.partial[0] >= 0 and url.partial[1] != 0)
        assert relative or url.host is not None


@FUZZ
@given(urls())
def test_mutated_urls(text: str) -> None:
    _check(text)


@FUZZ
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)))
def test_random_urls(text: str) -> None:
    _check(text)
