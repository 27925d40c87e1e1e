"""The OpenAPI document: FastAPI's, with each request body written from its declared type.

FastAPI sees no body on a route whose body comes through ``RequestBody`` (the dependency
reads it), so this adds the ``requestBody`` from the reader's ``schema``, one content entry
per format, and the schemas it refers to under ``components``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from copy import deepcopy
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from app.api.body import BodyReader, reader_of

REF = "#/components/schemas/{model}"


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
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
