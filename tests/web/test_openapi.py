"""The route table: validation of bodies and the OpenAPI document built from it."""

from __future__ import annotations

import pytest

from postroom.web import account, api, mailauth
from postroom.web.openapi import Document, Invalid, array, obj, string, validate


def test_validate_subset() -> None:
    schema = obj({"name": string(5, 1), "n": {"type": "integer", "minimum": 1}, "ok": {"type": "boolean"},
                  "tags": array(string(3), 2), "id": string(9, pattern=r"^[a-z]+$")}, ("name",))
    validate(schema, {"name": "abc", "n": 2, "ok": True, "tags": ["x"], "id": "abc"})
    bad = [
        ([], "expected an object"), ({}, "name is required"), ({"name": ""}, "shorter"),
        ({"name": "abcdef"}, "longer"), ({"name": "a", "x": 1}, "unknown key"),
        ({"name": "a", "n": 0}, "less than"), ({"name": "a", "n": True}, "expected an integer"),
        ({"name": "a", "ok": 1}, "true or false"), ({"name": "a", "tags": ["a", "b", "c"]}, "more than 2"),
        ({"name": "a", "tags": [5]}, "body.tags[0]: expected a string"), ({"name": "a", "id": "A1"}, "pattern"),
    ]
    for value, message in bad:
        with pytest.raises(Invalid) as e:
            validate(schema, value)
        assert message in str(e.value), (value, str(e.value))


def test_document_covers_every_route() -> None:
    routes = [*api.ROUTES, *mailauth.ROUTES, *account.ROUTES]
    doc = Document(routes=routes, schemas={**api.SCHEMAS, **mailauth.SCHEMAS, **account.SCHEMAS}).build()
    ops = [(m, p) for p, item in doc["paths"].items() for m in item]
    assert len(ops) == len(routes)
    ids = [item[m]["operationId"] for p, item in doc["paths"].items() for m in item]
    assert len(set(ids)) == len(ids)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "{" in path:
                assert "404" in op["responses"], (method, path)
            if op.get("security"):
                assert {"401", "403"} <= set(op["responses"]), (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= set(op["responses"]), (method, path)
    # Every $ref names a schema that exists.
    import json
    import re

    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])


def test_no_two_paths_overlap() -> None:
    """A literal segment where another path has a parameter (``/queue/retry`` next to
    ``/queue/{id}``) makes one URL mean two operations (and ``Allow`` lists both)."""
    paths = sorted({r.path for r in [*api.ROUTES, *mailauth.ROUTES, *account.ROUTES]})

    def overlap(a: str, b: str) -> bool:
        sa, sb = a.split("/"), b.split("/")
        return len(sa) == len(sb) and all(
            x == y or x.startswith("{") or y.startswith("{") for x, y in zip(sa, sb, strict=True)
        )

    clashes = [(a, b) for i, a in enumerate(paths) for b in paths[i + 1:] if overlap(a, b)]
    assert clashes == []


def test_enum() -> None:
    with pytest.raises(Invalid) as e:
        validate({"type": "string", "enum": ["rsa", "ed25519"]}, "dsa")
    assert "one of rsa, ed25519" in str(e.value)

