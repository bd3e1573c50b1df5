"""The worker's web views (Faust's web server).

Per user, answered by the worker that owns the user (any worker takes the request and forwards it
there, body included: :func:`route`):

* ``GET /users/{id}``: the user's window counts and latest vector;
* ``POST /users/{id}/rerank``: candidates re-ordered by the blend of :mod:`interest_core.rerank`
  with the user's latest vector (:mod:`stream_app.rerank` validates the body);
* ``GET /users/{id}/explain``: why the vector says what it says (:mod:`stream_app.explain`);
* ``GET /users/{id}/view``: an HTML page of the user's evolution, top interests and explanation
  (:mod:`stream_app.pages`).

Per worker: ``GET /`` (an HTML overview), ``/health``, ``/metrics``.

Model work (explanations, the evolution) runs in a thread of its own (one at a time), never in the
event loop.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import orjson
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web import HTTPRequestEntityTooLarge, RequestPayloadError, Response
from faust.web import View
from yarl import URL

from . import core, explain, metrics, pages, state
from .app import LIMITS, app, is_ready, lookup, owned_partitions, partition_lags, settings, users
from .partitioning import partition_for
from .rerank import RequestError, decode_body, parse_request, path_user_error, rerank, response_body, vector_prior

ROUTED = "X-Interest-Routed"  # set on forwarded requests: the receiver answers itself (no ping-pong)
FORWARD_TIMEOUT_S = 10.0
# Pages and explanations forwarded at a time by this worker. Their owners compute them one at a
# time, so a burst of them waits here, in a pool of its own. States and re-ranks go through
# Faust's client (aiohttp's pool of 100), which such a burst took whole before: a re-rank routed
# meanwhile waited for a connection until its 10 s ran out, a 503 from an idle owner.
PAGE_FORWARDS = 32


def forwarder(model_work: bool) -> aiohttp.ClientSession:
    """The HTTP client that forwards a request: pages and explanations (``model_work``) have
    their own pool of :data:`PAGE_FORWARDS` connections."""
    if not model_work:
        return app.http_client
    if app.page_client is None:  # made in the running loop, closed when the app stops
        app.page_client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=PAGE_FORWARDS))
    return app.page_client


def _what(exc: BaseException) -> str:
    """One line: what aiohttp found wrong with a request (its message, not the ``400, message:``
    wrapping of a payload error)."""
    inner = exc.__cause__ if isinstance(exc.__cause__, BadHttpMessage) else exc
    return " ".join(str(getattr(inner, "message", None) or inner or type(inner).__name__).split())[:200]


class ClientErrorLog(logging.Filter):
    """aiohttp logs a request it could not parse (a request line over 8 KiB, a byte not allowed
    in a URL, a malformed chunk), or whose client hung up mid-body, as an ERROR
    with a traceback, after answering the client 400 (or no one). The client's mistake, not the
    worker's: one WARNING line naming it instead."""

    CLIENT_ERRORS = (BadHttpMessage, RequestPayloadError, ConnectionResetError)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.CLIENT_ERRORS):
            record.msg, record.args = f"{record.getMessage()}: bad request ({_what(exc)})", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("aiohttp.server").addFilter(ClientErrorLog())


def json_response(body, status: int = 200) -> Response:
    return Response(body=orjson.dumps(body), status=status, content_type="application/json")


def html_response(body: str, status: int = 200) -> Response:
    return Response(text=body, status=status, content_type="text/html", charset="utf-8")


def user_state(user_id: str) -> dict | None:
    """The current state of a user this worker owns (None: never seen, forgotten or evicted)."""
    key = user_id.encode()
    return lookup(partition_for(key, settings.partitions), key)


def _ident(url: URL) -> tuple[str, int]:
    return (url.host or "", int(url.port or 80))


async def route(request, user_id: str, body: bytes | None = None, model_work: bool = False) -> Response | None:
    """The owner's answer when another worker owns ``user_id`` (the request forwarded there with
    its method, query and body), else None: this worker answers. Faust's ``table_route`` forwards
    neither bodies nor a guard against forwarding loops while two workers disagree during a
    rebalance; here a forwarded request carries :data:`ROUTED` and is never forwarded again. It
    lands on a worker that does not own the user only while two workers disagree about the
    assignment (or when a client sets the header): that is a 503 to retry, not the 404 this
    worker's own table would give. Every ``/users/{user_id}`` view asks this first, so a path whose
    user id is not UTF-8 once percent-decoded is its 400 here (:func:`path_user_error`), never
    forwarded."""
    if (error := path_user_error(request.rel_url.raw_path)) is not None:
        return json_response(error.body(), status=400)
    if not is_ready():  # its tables hold part of the users while they are restored from the changelogs
        return json_response({"error": "this worker is rebalancing or restoring its state; retry"}, status=503)
    try:
        dest = app.router.key_store(users.name, user_id)
    except KeyError:  # no assignment yet (starting, rebalancing)
        return json_response({"error": "no worker owns this user yet (rebalancing); retry"}, status=503)
    if _ident(dest) == _ident(URL(app.conf.canonical_url)):
        return None
    if ROUTED in request.headers:
        return json_response({"error": f"forwarded here, but the worker at {dest} owns this user (a rebalance "
                                       "is moving it); retry"}, status=503)
    # the path and query as received: request.url has its dot segments resolved, so /users/./explain
    # would reach the owner as /users/explain (the user "explain") and /users/.. as / (another view);
    # and request.raw_path is the whole target of an absolute-form request (GET http://host/users/u),
    # which made the URL http://owner:port http://host/users/u, a ValueError and a 500
    origin = URL.build(scheme=dest.scheme or "http", host=dest.host, port=dest.port)
    url = URL(str(origin) + str(request.rel_url), encoded=True)
    if app.http_client.closed:  # this worker is stopping (the client closes before the web server)
        return json_response({"error": "this worker is stopping; retry"}, status=503)
    headers = {ROUTED: "1"}
    if body is not None:
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
    try:
        async with forwarder(model_work).request(request.method, url, data=body, headers=headers,
                                                 timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as r:
            payload = await r.read()
            answer = {"Content-Type": r.headers.get("Content-Type", "application/octet-stream")}
            if request.method == "HEAD" and "Content-Length" in r.headers:
                # the owner's length of the body it did not send (aiohttp gives an empty one none)
                answer["Content-Length"] = r.headers["Content-Length"]
            return Response(body=payload, status=r.status, headers=answer)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return json_response({"error": f"the worker owning this user ({dest}) did not answer: "
                                       f"{type(exc).__name__}"}, status=503)


# a user id is any string of the contract's, "/" aside (percent-encoded, it stays within its segment):
# aiohttp's own placeholder, [^{}/]+, left a user whose id holds "{" or "}" without a route, every
# request for it the 404 "no such path", the overview's links to it too
USER = "/users/{user_id:[^/]+}"


@app.page(USER)
async def user_view(web, request, user_id: str):
    if (routed := await route(request, user_id)) is not None:
        return routed
    st = user_state(user_id)
    if st is None:
        return json_response({"error": "unknown user", "user_id": user_id}, status=404)
    return json_response({"user_id": user_id, **state.summary(st, LIMITS.horizon_ms), "interests": st["out"]})


@app.page(f"{USER}/rerank")
class RerankView(View):
    async def post(self, request, user_id: str):
        """Re-rank candidates with the user's latest vector (the owner answers)."""
        try:
            body = await request.read()
        except HTTPRequestEntityTooLarge as exc:
            return json_response(RequestError("body", f"body is too large: {exc.text}").body(), status=400)
        except RequestPayloadError as exc:  # e.g. a chunked body whose chunks are malformed
            return json_response(RequestError("body", f"body cannot be read: {_what(exc)}").body(), status=400)
        body = decode_body(body, ",".join(request.headers.getall("Content-Encoding", ())))
        if isinstance(body, RequestError):
            return json_response(body.body(), status=400)
        req = parse_request(body)
        if isinstance(req, RequestError):
            return json_response(req.body(), status=400)
        if (routed := await route(request, user_id, body)) is not None:
            return routed
        st = user_state(user_id)
        vector = st.get("out") if st is not None else None
        model = app.models.model
        prior = vector_prior(vector, app.models.priors, model.categories if model is not None else (),
                             model.card.get("category_prior") if model is not None else None)
        ranked = rerank(vector, req.items, req.weight, prior=prior)
        return json_response(response_body(user_id, vector["model_version"] if vector else None, ranked))


# Explanations run one at a time in a thread of their own: a burst of them queues there instead of
# taking more than one core from ingestion and scoring (whose model calls have their own thread,
# app.scoring_thread).
app.explainer = ThreadPoolExecutor(1, thread_name_prefix="explain")


async def explain_user(user_id: str, evolution: bool) -> tuple[dict, dict] | None:
    """(state, explanation) of a user this worker owns, None for an unknown user. The inputs are
    copied here, the model runs in a thread."""
    st = user_state(user_id)
    model = app.models.model
    if st is None or model is None:
        return None
    snap = explain.snapshot(st, LIMITS.horizon_ms, LIMITS.max_events)
    if explain.is_idle(snap) and st["out"] is not None:  # the vector served is the one explained
        return st, explain.idle(st["out"], snap, bool(model.encoder.profile_size), evolution)
    inp = core.snapshot(user_id.encode(), st, model, LIMITS.horizon_ms)
    loop = asyncio.get_running_loop()
    out = await loop.run_in_executor(app.explainer, explain.explain, model, inp, snap, settings.score_batch, evolution)
    return st, out


@app.page(f"{USER}/explain")
async def explain_view(web, request, user_id: str):
    if (routed := await route(request, user_id, model_work=True)) is not None:
        return routed
    found = await explain_user(user_id, evolution=False)
    if found is None:
        return json_response({"error": "unknown user", "user_id": user_id}, status=404)
    return json_response({"user_id": user_id, **found[1]})


@app.page(f"{USER}/view")
async def page_view(web, request, user_id: str):
    if (routed := await route(request, user_id, model_work=True)) is not None:
        return routed
    found = await explain_user(user_id, evolution=True)
    if found is None:
        return html_response(pages.missing_user_page(user_id), status=404)
    st, out = found
    return html_response(pages.user_page(user_id, state.summary(st, LIMITS.horizon_ms), st["out"], out))


# --- the worker's overview ----------------------------------------------------------------
app.rates = pages.Rates()
RATE_SAMPLE_S = 5.0


@app.timer(RATE_SAMPLE_S)
async def sample_rates():
    """Sample the event and vector counters for the overview's events/s and vectors/s."""
    app.rates.add(time.monotonic(), pages.counters(metrics.REGISTRY))


@app.page("/")
async def overview_view(web, request):
    now = time.monotonic()
    counts = pages.counters(metrics.REGISTRY)
    info = {
        "worker": settings.web_url,
        "ready": is_ready(),
        "model_version": app.models.version,
        "partitions": sorted(owned_partitions()),
        "lag": sorted((tp.topic, tp.partition, lag) for tp, lag in partition_lags()),
        "rates": app.rates.per_second(now, counts),
        "totals": counts,
        "dead_letters": pages.dead_letters(metrics.REGISTRY),
        "scoring": pages.scoring_passes(metrics.REGISTRY),
        "score_interval_s": settings.score_interval_s,
        "attention": pages.attention(metrics.REGISTRY),
        "cached_users": app.states.users(),
        "recent_users": pages.recent_users(app.states.entries, 10),
    }
    return html_response(pages.overview_page(info))


@app.page("/health")
async def health_view(web, request):
    body = {"ready": is_ready(), "model_version": app.models.version, "partitions": sorted(owned_partitions()),
            "app_id": settings.app_id}  # whose worker answers (the demo checks it is its own)
    return json_response(body, status=200 if body["ready"] else 503)


@app.page("/metrics")
async def metrics_view(web, request):
    metrics.LAG.clear()
    for tp, lag in partition_lags():
        metrics.LAG.labels(tp.topic, str(tp.partition)).set(lag)
    metrics.CACHE_BYTES.set(app.states.bytes)
    metrics.CACHE_USERS.set(app.states.users())
    return Response(body=metrics.render(), content_type="text/plain", charset="utf-8")
