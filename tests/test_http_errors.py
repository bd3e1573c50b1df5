"""aiohttp's 404 and 405 as the JSON error bodies of every other view (stream_app.http_errors),
on an aiohttp app of one route; tests/test_web.py checks the worker's own."""
from __future__ import annotations

import asyncio

import orjson
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from stream_app.http_errors import json_errors


async def ok(request):
    return web.json_response({"ok": True})


async def answers(requests):
    app = web.Application(middlewares=[json_errors])
    app.router.add_route("GET", "/health", ok)
    app.router.add_route("HEAD", "/health", ok)
    for method in ("HEAD", "POST"):  # Faust routes HEAD to every view, to its GET handler
        app.router.add_route(method, "/users/{user_id}/rerank", ok)
    async with TestServer(app) as server, ClientSession() as client:
        out = []
        for method, path in requests:
            async with client.request(method, server.make_url(path)) as r:
                out.append((r.status, r.headers.get("Content-Type"), r.headers.get("Allow"), await r.read()))
        return out


def test_a_path_no_view_serves_is_a_json_404_and_a_method_no_view_takes_a_json_405():
    (missing, wrong, put, served, head, head_post, head_missing) = asyncio.run(answers([
        ("GET", "/nope/x%20y"), ("DELETE", "/health"), ("PUT", "/users/u1/rerank"), ("GET", "/health"),
        ("HEAD", "/health"), ("HEAD", "/users/u1/rerank"), ("HEAD", "/nope")]))
    assert missing[:3] == (404, "application/json", None)
    assert orjson.loads(missing[3]) == {"error": "no such path", "path": "/nope/x y"}
    assert wrong[:3] == (405, "application/json", "GET,HEAD")
    assert orjson.loads(wrong[3]) == {"error": "method not allowed", "method": "DELETE", "allowed": ["GET", "HEAD"]}
    # a HEAD route without GET is not a method the route takes: left out of Allow, and answered 405
    assert put[:3] == (405, "application/json", "POST")
    assert orjson.loads(put[3]) == {"error": "method not allowed", "method": "PUT", "allowed": ["POST"]}
    assert served[:2] == (200, "application/json; charset=utf-8") and orjson.loads(served[3]) == {"ok": True}
    assert head[:2] == (200, "application/json; charset=utf-8")
    assert head_post[:3] == (405, "application/json", "POST") and head_post[3] == b""  # HEAD: no body
    assert head_missing[:3] == (404, "application/json", None)
