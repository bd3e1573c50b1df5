"""The worker's web views (Faust's web server): a user's state, health and Prometheus metrics.

``/users/{id}`` is answered by whichever worker owns the user (Faust's ``table_route`` forwards
the request), from the state in memory or in the table.
"""
from __future__ import annotations

import orjson
from aiohttp.web import Response

from . import metrics, state
from .app import LIMITS, app, is_ready, lookup, owned_partitions, partition_lags, settings, users
from .partitioning import partition_for


def json_response(body, status: int = 200) -> Response:
    return Response(body=orjson.dumps(body), status=status, content_type="application/json")


def user_state(user_id: str) -> dict | None:
    """The current state of a user this worker owns (None: never seen, forgotten or evicted)."""
    key = user_id.encode()
    return lookup(partition_for(key, settings.partitions), key)


@app.page("/users/{user_id}")
@app.table_route(table=users, match_info="user_id")
async def user_view(web, request, user_id: str):
    st = user_state(user_id)
    if st is None:
        return json_response({"error": "unknown user", "user_id": user_id}, status=404)
    return json_response({"user_id": user_id, **state.summary(st, LIMITS.horizon_ms), "interests": st["out"]})


@app.page("/health")
async def health_view(web, request):
    body = {"ready": is_ready(), "model_version": app.models.version, "partitions": sorted(owned_partitions())}
    return json_response(body, status=200 if body["ready"] else 503)


@app.page("/metrics")
async def metrics_view(web, request):
    metrics.LAG.clear()
    for tp, lag in partition_lags():
        metrics.LAG.labels(tp.topic, str(tp.partition)).set(lag)
    metrics.CACHE_BYTES.set(app.states.bytes)
    metrics.CACHE_USERS.set(app.states.users())
    return Response(body=metrics.render(), content_type="text/plain", charset="utf-8")
