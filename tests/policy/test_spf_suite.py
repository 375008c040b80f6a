"""The RFC 7208 SPF test suite (openspf.org, 2014.04) against ``policy.spf``.

The suite ships with the pyspf sdist (see ``support.registry_data``). Its zone data is
served by a small in-memory driver that follows the suite's own conventions (those of
pyspf's ``testspf.py``): an ``SPF`` record stands for a TXT record when a name has no TXT
record; ``TIMEOUT`` makes a query for a type not listed before it time out; names missing
from the zone that start with ``error.`` time out, other missing names have no records.
Every test case must give one of the results it lists, and the explanation when one is
given; there is no list of expected failures.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from postroom.policy.spf import Answer, Query, SpfResult, check_host
from support.registry_data import spf_suite


def _scenarios() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(spf_suite()))


def _zone(data: dict[str, Any]) -> dict[str, list[Any]]:
    zone: dict[str, list[Any]] = {}
    for name, items in (data.get("zonedata") or {}).items():
        out: list[Any] = []
        generated: list[Any] = []
        has_txt = False
        for item in items:
            if item == "TIMEOUT":
                out.append("TIMEOUT")
                continue
            for rtype, value in item.items():
                if rtype in ("TXT", "SPF") and isinstance(value, str):
                    value = (value,)
                if rtype == "TXT":
                    has_txt = True
                elif rtype == "SPF":
                    generated.append(("TXT", value))
                if value != ("NONE",):
                    out.append((rtype, value))
        if not has_txt:
            out.extend(generated)
        zone[name.lower()] = out
    return zone


def _answer(zone: dict[str, list[Any]], query: Query, level: int = 0) -> Answer:
    name = query.name.lower().rstrip(".")
    if name not in zone:
        return Answer(error="temp") if name.startswith("error.") else Answer()
    records: list[str] = []
    seen_type = False
    for item in zone[name]:
        if item == "TIMEOUT":
            if not seen_type:
                return Answer(error="temp")
            break
        rtype, value = item
        if rtype == query.rdtype:
            seen_type = True
        if value == "TIMEOUT":
            if rtype == query.rdtype:
                return Answer(error="temp")
            continue
        if rtype == "CNAME" and level == 0:
            inner = _answer(zone, Query(value, query.rdtype), 1)
            if inner.error:
                return inner
            records.extend(inner.records)
        elif rtype == query.rdtype:
            if rtype == "TXT":
                records.append("".join(value))
            elif rtype == "MX":
                records.append(str(value[1]))
            else:
                records.append(str(value))
    return Answer(tuple(records))


def _run(zone: dict[str, list[Any]], case: dict[str, Any]) -> SpfResult:
    mailfrom = case.get("mailfrom") or ""
    helo = case.get("helo") or ""
    if mailfrom:
        domain = mailfrom.rpartition("@")[2]
        sender = mailfrom
    else:
        domain, sender = helo, f"postmaster@{helo}"
    gen = check_host(case["host"], domain, sender, helo=helo)
    answer: Any = None
    steps = 0
    try:
        while True:
            query = gen.send(answer)
            steps += 1
            assert steps < 500, "runaway evaluation"
            answer = _answer(zone, query)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


CASES = [
    pytest.param(scenario, name, case, id=f"{name}")
    for scenario in _scenarios()
    for name, case in scenario["tests"].items()
]


@pytest.mark.parametrize(("scenario", "name", "case"), CASES)
def test_rfc7208_suite(scenario: dict[str, Any], name: str, case: dict[str, Any]) -> None:
    result = _run(_zone(scenario), case)
    expected = case["result"]
    expected = expected if isinstance(expected, list) else [expected]
    assert result.result in expected, f"{case.get('description', '')} {result}"
    if "explanation" in case and result.result == "fail" and expected == ["fail"]:
        assert (result.explanation or "DEFAULT") == case["explanation"], result


def test_suite_is_complete() -> None:
    """The suite as shipped has 200+ cases; a truncated download must not pass quietly."""
    assert len(CASES) > 190
