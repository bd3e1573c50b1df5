"""aiohttp's own answers to a path no view serves (404) and to a method a view does not take
(405), as JSON bodies like every view's errors.

aiohttp raises them from its router, before any view runs, with a text/plain body ("404: Not
Found"). A client that reads the JSON ``{"error": ...}`` of every other error the worker gives
found no JSON there.

Faust routes ``HEAD`` to every view and answers it with the view's ``GET`` handler. A view without
one (``POST /users/{id}/rerank``) then answered ``HEAD`` with Faust's own 405 (``{"error": "Method
GET not allowed."}``, no ``Allow``) while its 405 to other methods listed ``HEAD`` as allowed. Such
a view takes no ``HEAD``: it is left out of ``Allow`` and answered with the 405 of the others.
"""
from __future__ import annotations

from typing import Collection

import orjson
from aiohttp.web import HTTPMethodNotAllowed, HTTPNotFound, Request, Response, middleware


def not_allowed(method: str, methods: Collection[str]) -> Response:
    """The JSON 405 to ``method`` of a route whose handlers take ``methods`` (HEAD only beside GET)."""
    allowed = sorted(m for m in set(methods) if m != "HEAD" or "GET" in methods)
    body = {"error": "method not allowed", "method": method, "allowed": allowed}
    return Response(body=orjson.dumps(body), status=405, content_type="application/json",
                    headers={"Allow": ",".join(allowed)})  # aiohttp's form


@middleware
async def json_errors(request: Request, handler) -> Response:
    if request.method == "HEAD" and (resource := request.match_info.route.resource) is not None:
        methods = {route.method for route in resource}
        if "GET" not in methods:
            return not_allowed("HEAD", methods)
    try:
        return await handler(request)
    except HTTPMethodNotAllowed as e:
        return not_allowed(e.method, e.allowed_methods)
    except HTTPNotFound:
        body = {"error": "no such path", "path": request.path}
        return Response(body=orjson.dumps(body), status=404, content_type="application/json")
