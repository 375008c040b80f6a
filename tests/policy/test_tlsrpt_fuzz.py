"""Property tests of the TLS-RPT report parser (h11's fuzz invariant): whatever a report
mail holds, ``extract_report`` and ``parse_report`` give a result or ``ReportError``,
never another exception. JSON reports mutated structurally (wrong types, missing keys,
huge numbers, deep nesting) and as text; whole mails with mangled MIME around them.

Short runs here; ``POSTROOM_SLOW=1`` runs many more examples (tests/conftest.py).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.policy import tlsrpt
from support import SLOW
from support.tlsrpt import check_report, google_report, report_mail

FUZZ = settings(max_examples=2000 if SLOW else 150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def _mutated_report(draw: st.DrawFn) -> Any:
    """A valid report with some values replaced or keys removed, anywhere in the tree."""
    doc: Any = google_report("example.test")
    for _ in range(draw(st.integers(1, 6))):
        node = doc
        path = []
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            path.append((node, key))
            node = node[key]
        if not path:
            return draw(_JSON_VALUES)
        parent, key = path[-1]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(_JSON_VALUES)
    return doc


def _check(data: bytes) -> None:
    try:
        parsed = tlsrpt.parse_report(data)
    except tlsrpt.ReportError:
        return
    check_report(parsed.document, strict=False)  # whatever is accepted has the required fields


@FUZZ
@given(_mutated_report())
def test_parse_mutated_reports(doc: Any) -> None:
    _check(json.dumps(doc).encode())


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_parse_garbage(data: bytes) -> None:
    _check(data)


@FUZZ
@given(_mutated_report(), st.booleans(), st.integers(0, 2000), st.binary(max_size=30))
def test_report_mails_with_damage(doc: Any, gz: bool, cut: int, noise: bytes) -> None:
    mail = report_mail(json.dumps(doc).encode(), to="postmaster@example.test", domain="example.test", gz=gz)
    for damaged in (mail, mail[:cut] + noise + mail[cut:], mail[: len(mail) - cut]):
        try:
            data = tlsrpt.extract_report(damaged)
        except tlsrpt.ReportError:
            continue
        if data is not None:
            _check(data)
