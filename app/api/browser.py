"""What Segment's browser SDK (analytics.js, ``@segment/analytics-next``) needs besides
the tracking routes: the settings document it loads first, a place for its metrics, and
CORS for the origins a source allows.

``AnalyticsBrowser.load({writeKey, cdnURL: "http://<ours>"})`` fetches
``{cdnURL}/v1/projects/{writeKey}/settings``; the document names only the ``Segment.io``
integration (any other would make the SDK load destination code from Segment's CDN) and
points its ``apiHost`` back here, so the events go to ``/v1/t``, ``/v1/p``, … (or
``/v1/b`` when it batches).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.body import read_body
from app.api.deps import RuntimeDep
from app.errors import AppError, Forbidden, NotFound, error_responses
from app.runtime.service import Runtime

router = APIRouter()


class MetricsAccepted(BaseModel):
    success: bool


def _api_host(request: Request, runtime: Runtime) -> tuple[str, str]:
    """(protocol, host[:port]) by which browsers reach us."""
    if runtime.settings.public_url:
        parts = urlsplit(runtime.settings.public_url)
        return parts.scheme, parts.netloc
    return request.url.scheme, request.headers.get("host") or request.url.netloc


@router.get(
    "/v1/projects/{write_key}/settings",
    operation_id="segmentBrowserSettings",
    summary="The settings document Segment's browser SDK loads (cdnURL = this service)",
    responses=error_responses(403, 404, 422),
)
async def browser_settings(write_key: str, request: Request, runtime: RuntimeDep) -> JSONResponse:
    source = await runtime.sources.by_write_key(write_key)
    if source is None:
        raise NotFound("no source has this write key", code="unknown_write_key", field="writeKey")
    origin = request.headers.get("origin")
    if origin is not None and not source.allows_origin(origin):
        raise Forbidden(
            f'source "{source.name}" does not allow the origin {origin[:200]}',
            code="origin_not_allowed",
            field="origin",
        )
    protocol, host = _api_host(request, runtime)
    settings: dict[str, Any] = {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/v1",
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
    return JSONResponse(settings, headers={"Cache-Control": "max-age=60"})


async def _metrics(request: Request) -> MetricsAccepted:
    await read_body(request)  # bounded like any body, then ignored
    return MetricsAccepted(success=True)


for _path in ("/v1/m", "/m"):
    router.add_api_route(
        _path,
        _metrics,
        methods=["POST"],
        operation_id="segmentBrowserMetrics" + ("Root" if _path == "/m" else ""),
        summary="The browser SDK's own metrics: accepted and ignored",
        response_model=MetricsAccepted,
    )


# The paths browsers call: the tracking routes, the settings and the SDK's metrics.
_CORS_PATHS = re.compile(
    r"^(/segment)?/v1/(batch|track|identify|page|screen|group|alias|[tpigasbm])$"
    r"|^/v1/projects/[^/]+/settings$|^/m$"
)
_TOKEN_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
_ALLOW_HEADERS = "authorization, content-type, x-retry-count"


class BrowserCors:
    """CORS on the browser-facing paths, for the origins registered sources allow.

    A preflight carries no key, so it is answered for any origin some source allows; the
    request itself is then checked against its own source's origins (a 403 otherwise).
    Everything else passes through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _CORS_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        origin_text = origin.decode("latin-1")
        try:
            allowed = await scope["app"].state.runtime.sources.any_allows(origin_text)
        except AppError as exc:
            await _send(send, exc.status, exc.body(), [])
            return
        cors = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")] if allowed else []
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            if not allowed:
                body = {"code": "origin_not_allowed", "message": "no source allows this origin"}
                await _send(send, 403, body, [(b"vary", b"Origin")])
                return
            requested = headers.get(b"access-control-request-headers", b"").decode("latin-1")
            allow = requested if _TOKEN_LIST.match(requested) else _ALLOW_HEADERS
            await _send(
                send,
                204,
                None,
                [
                    *cors,
                    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", allow.encode()),
                    (b"access-control-max-age", b"600"),
                ],
            )
            return

        async def send_with_cors(message: Any) -> None:
            if message["type"] == "http.response.start" and cors:
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _send(send: Any, status: int, body: Any, headers: list[tuple[bytes, bytes]]) -> None:
    response = JSONResponse(body, status_code=status) if body is not None else None
    content = response.body if response is not None else b""
    out = [*headers, (b"content-length", str(len(content)).encode())]
    if response is not None:
        out.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": content})
