"""Authentication as documented and as answered: OpenAPI ``securitySchemes`` (bearer API
keys, Basic auth with a write key on Segment's routes) and each operation's ``security``,
checked against the real service: every operation that declares a scheme answers a
request without credentials with 401 and a ``WWW-Authenticate`` challenge for it, and the
open ones do not ask for credentials."""

from __future__ import annotations

import re
from typing import Any

import httpx

import app.main
from app.config import Settings
from tests.support.harness import Service

BEARER = 'Bearer realm="intent-router"'
SEGMENT = 'Basic realm="intent-router", Bearer realm="intent-router"'


def spec() -> dict[str, Any]:
    return dict(
        app.main.create_app(Settings(database_url="sqlite+aiosqlite:///:memory:")).openapi()
    )


def operations() -> list[tuple[str, str, list[dict[str, list[str]]]]]:
    return [
        (method.upper(), path, op.get("security"))
        for path, ops in spec()["paths"].items()
        for method, op in ops.items()
    ]


def test_security_schemes_and_every_operation_names_its_own() -> None:
    schemes = spec()["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["basicAuth"] == {**schemes["basicAuth"], "type": "http", "scheme": "basic"}
    by_path = {(m, p): s for m, p, s in operations()}
    assert all(s is not None for s in by_path.values()), "an operation without security"
    bearer, segment = [{"bearerAuth": []}], [{"basicAuth": []}, {"bearerAuth": []}]
    assert by_path["POST", "/v1/events"] == bearer
    assert by_path["PUT", "/v1/policy"] == bearer
    assert by_path["POST", "/v1/destinations"] == bearer
    for path in ("/segment/v1/batch", "/v1/batch", "/v1/track", "/v1/t", "/v1/b"):
        assert by_path["POST", path] == segment, path
    for open_op in (("POST", "/v1/hooks/{name}"), ("GET", "/healthz"), ("GET", "/readyz")):
        assert by_path[open_op] == [], open_op
    assert by_path["GET", "/v1/projects/{write_key}/settings"] == []
    assert by_path["GET", "/metrics"] == [{}, {"bearerAuth": []}]  # INTENT_METRICS_TOKEN
    # Every named scheme exists.
    named = {name for _, _, s in operations() for req in s for name in req}
    assert named <= schemes.keys()


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def test_every_secured_operation_is_a_401_with_its_challenge(svc: Service) -> None:
    async with httpx.AsyncClient(base_url=svc.url, timeout=30) as anonymous:
        checked = 0
        for method, path, security in operations():
            if not security or {} in security:
                continue
            r = await anonymous.request(
                method, concrete(path), content=b"{}", headers={"content-type": "application/json"}
            )
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            expected = SEGMENT if {"basicAuth": []} in security else BEARER
            assert r.headers.get("www-authenticate") == expected, (method, path)
            assert r.json()["code"] in ("unauthenticated",), (method, path)
            checked += 1
        assert checked > 50
        # A key that is not one: still a 401 that says how to authenticate.
        wrong = await anonymous.get("/v1/leads", headers={"authorization": "Bearer ir_nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == BEARER
        unknown = await anonymous.post("/v1/batch", json={"batch": []}, auth=("wk_not_a_key", ""))
        assert unknown.status_code == 401 and unknown.headers["www-authenticate"] == SEGMENT
        # The open ones ask for nothing.
        for path in ("/healthz", "/readyz", "/metrics"):
            r = await anonymous.get(path)
            assert r.status_code == 200 and "www-authenticate" not in r.headers, path
