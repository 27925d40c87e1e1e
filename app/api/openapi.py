"""The OpenAPI document: FastAPI's, with each request body written from its declared type
and each operation's authentication.

FastAPI sees no body on a route whose body comes through ``RequestBody`` (the dependency
reads it), so this adds the ``requestBody`` from the reader's ``schema``, one content entry
per format, and the schemas it refers to under ``components``. Nor does it see the API key
checks (app.auth's dependencies read the header themselves), so ``security`` is written
here: a bearer API key on routes that take IngestKey, ReadKey, AdminKey or FeedbackKey,
Basic auth (the write key as user name) or a bearer key on Segment's routes, an optional
bearer token on ``/metrics`` (``INTENT_METRICS_TOKEN``), and none on the rest (platform
hooks verify signatures, health checks and the browser SDK's settings are open).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from copy import deepcopy
from typing import Any, get_args

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from app.api import segment
from app.api.body import BodyReader, reader_of
from app.auth import AdminKey, FeedbackKey, IngestKey, ReadKey, SegmentKey

REF = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key: `Authorization: Bearer ir_…` (`intent-router apikey create`)",
    },
    "basicAuth": {
        "type": "http",
        "scheme": "basic",
        "description": "Segment's routes: a source's write key as the user name, no password "
        "(what Segment's SDKs send); `writeKey` in the body is accepted too",
    },
}
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
KEY_CHECKS = {get_args(t)[1].dependency for t in (IngestKey, ReadKey, AdminKey, FeedbackKey)}
SEGMENT_CHECK = get_args(SegmentKey)[1].dependency


def body_reader(route: APIRoute) -> BodyReader[Any] | None:
    for dependency in route.dependant.dependencies:
        reader = reader_of(dependency.call)
        if reader is not None:
            return reader
    return None


def _add_schema(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    if schemas.get(name, schema) != schema:
        # Two different schemas under one name would leave one route documented wrongly.
        raise RuntimeError(f"OpenAPI: two schemas named {name}; rename one of the models")
    schemas[name] = schema


def document_bodies(
    spec: dict[str, Any], routes: Iterable[Any], extra_schemas: Sequence[Any] = ()
) -> None:
    """Write the request body of every route read through ``RequestBody`` into ``spec``.

    ``extra_schemas``: types to put under ``components`` though no declared body uses them
    (for a route that still documents its body by hand with a ``$ref``)."""
    bodies = [
        (route, reader)
        for route in routes
        if isinstance(route, APIRoute) and (reader := body_reader(route)) is not None
    ]
    mode: JsonSchemaMode = "validation"
    inputs: list[tuple[int, JsonSchemaMode, TypeAdapter[Any]]] = [
        (i, mode, TypeAdapter(r.schema)) for i, (_, r) in enumerate(bodies)
    ]
    inputs += [(-1 - i, mode, TypeAdapter(t)) for i, t in enumerate(extra_schemas)]
    refs, defs = TypeAdapter.json_schemas(inputs, ref_template=REF)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in defs.get("$defs", {}).items():
        _add_schema(schemas, name, schema)
    for i, (route, reader) in enumerate(bodies):
        content = {
            # A copy each: one object twice would be written as a YAML anchor and alias.
            fmt.media_type: {
                "schema": {"type": "string"} if fmt.as_text else deepcopy(refs[i, mode])
            }
            for fmt in reader.formats
        }
        request_body = {"required": not reader.optional, "content": content}
        for method in sorted(route.methods or ()):
            operation = spec["paths"][route.path_format][method.lower()]
            # In the place FastAPI gives a body it parses: after the parameters.
            responses = operation.pop("responses")
            operation.update(requestBody=request_body, responses=responses)
    schemas_sorted = dict(sorted(schemas.items()))
    schemas.clear()
    schemas.update(schemas_sorted)


def _dependencies(dependant: Any) -> Iterable[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _dependencies(dependency)


def route_security(route: APIRoute) -> list[dict[str, list[str]]]:
    """The ``security`` of a route's operations, read off its dependencies."""
    calls = set(_dependencies(route.dependant))
    if route in segment.router.routes or SEGMENT_CHECK in calls:
        return [{"basicAuth": []}, *BEARER]
    if calls & KEY_CHECKS:
        return BEARER
    if route.path == "/metrics":
        return [{}, *BEARER]  # a token only when INTENT_METRICS_TOKEN is set
    return []


def document_security(spec: dict[str, Any], routes: Iterable[Any]) -> None:
    """``components.securitySchemes`` and every operation's ``security``."""
    spec.setdefault("components", {})["securitySchemes"] = deepcopy(SECURITY_SCHEMES)
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        security = route_security(route)
        for method in route.methods or ():
            operation = spec["paths"][route.path_format].get(method.lower())
            if operation is not None:
                operation["security"] = deepcopy(security)


def install_openapi(
    app: FastAPI, routers: Sequence[APIRouter], extra_schemas: Sequence[Any] = ()
) -> None:
    """``app.openapi()`` built once, from the routes of ``routers`` and their body types."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            routes = [route for router in routers for route in router.routes]
            document_bodies(spec, routes, extra_schemas)
            document_security(spec, routes)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
