"""aiohttp's own answers to a path no view serves (404) and to a method a view does not take
(405), as JSON bodies like every view's errors.

aiohttp raises them from its router, before any view runs, with a text/plain body ("404: Not
Found"). A client that reads the JSON ``{"error": ...}`` of every other error the worker gives
found no JSON there. The status and the 405's ``Allow`` header stay aiohttp's.
"""
from __future__ import annotations

import orjson
from aiohttp.web import HTTPMethodNotAllowed, HTTPNotFound, Request, Response, middleware


@middleware
async def json_errors(request: Request, handler) -> Response:
    try:
        return await handler(request)
    except HTTPMethodNotAllowed as e:
        body = {"error": "method not allowed", "method": e.method, "allowed": sorted(e.allowed_methods)}
        return Response(body=orjson.dumps(body), status=405, content_type="application/json",
                        headers={"Allow": e.headers["Allow"]})
    except HTTPNotFound:
        body = {"error": "no such path", "path": request.path}
        return Response(body=orjson.dumps(body), status=404, content_type="application/json")
