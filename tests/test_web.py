"""The worker's web views against the real broker, with two workers sharing the partitions, so every
request is asked of the worker that does NOT own the user (and must be routed, body included):
re-ranking, explanations (checked against an independent computation), the user page and the
overview, and both pages in a real headless Chromium."""
from __future__ import annotations

import gzip
import http.client
import json
import random
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
import zlib

import orjson
import pytest

from browser import Chromium, chromium_path
from conftest import Worker, cli, make_env, wait_for
from interest_core.window import (DEFAULT_PROFILE_RETENTION_S, WindowEvent, profiles_in_order, seconds_to_ms,
                                  window_slice)
from stream_app.explain import LIMIT
from stream_app.model_runtime import LoadedModel
from stream_app.partitioning import partition_for
from stream_app.rerank import Item, rerank
from test_worker_ingest import HORIZON, T0
from test_worker_scoring import scored_vectors, send

pytestmark = pytest.mark.kafka

MIN = 60_000
SECRET = "secret flights to lisbon"  # search text: must never appear in any answer


def ev(i: int, user: str, etype: str, ts: int, cat: str | None = None, query: str | None = None) -> dict:
    e = {"event_id": f"{user}-{i}", "user_id": user, "type": etype, "ts": ts}
    if etype == "search":
        e["query"] = query
    else:
        e.update(item_id=f"item{i}", category=cat)
        if etype == "browse":
            e["dwell_ms"] = 20_000
    return e


def decisive(user: str) -> list[dict]:
    """A morning of sports and tech, three quiet hours, then a burst of six travel clicks and a search."""
    evs = [ev(i, user, "click" if i % 3 else "browse", T0 + i * 10 * MIN, "sports" if i % 4 else "tech")
           for i in range(24)]
    t = T0 + 24 * 10 * MIN + 3 * 60 * MIN
    evs += [ev(100 + i, user, "click", t + i * MIN, "travel") for i in range(6)]
    evs.append(ev(200, user, "search", t + 7 * MIN, query=SECRET))
    return evs


def others(n: int, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    cats = ["music", "movies", "tech", "cooking", "gaming"]
    out = {}
    for u in range(n):
        user = f"o{u}"
        evs = []
        for i in range(rng.randrange(4, 12)):
            etype = rng.choice(["click", "browse", "search"])
            evs.append(ev(i, user, etype, T0 + i * 7 * MIN, rng.choice(cats), SECRET if etype == "search" else None))
        out[user] = evs
    return out


def owned(w) -> set[int]:
    status, body = w.get("/health")
    return set(body["partitions"]) if status == 200 else set()


@pytest.fixture(scope="module")
def cluster(kafka, tiny_model_dir, tmp_path_factory):
    """Two workers sharing 4 partitions, users with their vectors published."""
    env = make_env(kafka)
    tmp = tmp_path_factory.mktemp("web")
    # the tiny model with a population prior in its card (as `train` writes it; the version hashes
    # the graph and the encoding only), so re-ranking is checked with a prior far from uniform
    model_dir = tmp / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    card = orjson.loads((model_dir / "model.json").read_bytes())
    weights = {c: 1.0 + 3 * (i % 4) for i, c in enumerate(card["categories"])}
    card["category_prior"] = {c: w / sum(weights.values()) for c, w in weights.items()}
    (model_dir / "model.json").write_bytes(orjson.dumps(card))
    env["INTEREST_MODEL_DIR"] = str(model_dir)
    cli(env, "topics", "create")
    ws = [Worker(env, tmp, "w1").start(), Worker(env, tmp, "w2").start()]
    try:
        wait_for(lambda: owned(ws[0]) and owned(ws[1]) and owned(ws[0]) | owned(ws[1]) == {0, 1, 2, 3}
                 and not owned(ws[0]) & owned(ws[1]), what="partitions split between the workers")
        users = {"decisive": decisive("decisive")} | others(8, seed=5)
        send(env, [e for evs in users.values() for e in evs])
        vecs = scored_vectors(env, [e for evs in users.values() for e in evs])  # of every user's events
        assert set(vecs) == set(users)
        yield env, ws, users, {u: v[-1] for u, v in vecs.items()}, LoadedModel.load(model_dir)
    finally:
        for w in ws:
            w.kill()


def not_owner(ws, user: str):
    """The worker that does not own ``user`` (its request must be routed)."""
    p = partition_for(user.encode(), 4)
    return ws[1] if p in owned(ws[0]) else ws[0]


def post(w, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(w.url(path), data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def fold(events: list[dict]):
    uniq = sorted(events, key=lambda e: (e["ts"], e["event_id"]))
    win = [WindowEvent.from_event(e) for e in uniq]
    prof = None
    for prof in profiles_in_order(win, seconds_to_ms(DEFAULT_PROFILE_RETENTION_S)):
        pass
    return window_slice(win, uniq[-1]["ts"], HORIZON, 128), prof


def test_rerank_is_routed_to_the_owner_and_exact(cluster):
    env, ws, users, vectors, model = cluster
    prior = model.card["category_prior"]
    rng = random.Random(7)
    cats = list(model.categories) + ["underwater-basket-weaving"]
    items = [{"item_id": f"c{i}", "category": rng.choice(cats), "score": round(rng.random(), 3)} for i in range(200)]
    for user in ("decisive", "o3"):
        w = not_owner(ws, user)
        status, body = post(w, f"/users/{user}/rerank", {"items": items, "weight": 0.7})
        assert status == 200, body
        want = rerank(vectors[user], [Item(**it) for it in items], 0.7, prior=prior)
        uniform = rerank(vectors[user], [Item(**it) for it in items], 0.7)
        assert [it.item_id for it in want.items] != [it.item_id for it in uniform.items]  # the prior matters
        assert body["personalized"] is True and body["user_id"] == user
        assert body["model_version"] == vectors[user]["model_version"] == model.version
        assert [it["item_id"] for it in body["items"]] == [it.item_id for it in want.items]
        assert [it["blended"] for it in body["items"]] == pytest.approx([it.blended for it in want.items], abs=1e-12)
        assert body["unknown_categories"] == ["underwater-basket-weaving"]
    # at weight 1 the order is the user's interest over the population's, by hand
    trio = [{"item_id": "a", "category": "sports", "score": 0.9}, {"item_id": "b", "category": "travel", "score": 0.5},
            {"item_id": "c", "category": "cooking", "score": 0.7}]
    status, body = post(ws[0], "/users/decisive/rerank", {"items": trio, "weight": 1.0})
    lift = {it["item_id"]: vectors["decisive"]["interests"][it["category"]] / prior[it["category"]] for it in trio}
    assert [it["item_id"] for it in body["items"]] == sorted(lift, key=lambda i: -lift[i])

    # an unknown user: the original order, not personalized, from either worker
    for w in ws:
        status, body = post(w, "/users/nobody/rerank", {"items": items[:5]})
        assert status == 200
        assert body["personalized"] is False and body["model_version"] is None
        assert [it["item_id"] for it in body["items"]] == [it["item_id"] for it in items[:5]]
        assert all(it["blended"] is None for it in body["items"])


@pytest.mark.parametrize("body, field", [
    (b"{not json", "body"),
    (b"", "body"),
    ({"weight": 0.5}, "items"),
    ({"items": []}, "items"),
    ({"items": [{"item_id": "a", "category": "tech", "score": 1},
                {"item_id": "b", "category": "tech", "score": "high"}]}, "items[1].score"),
    ({"items": [{"item_id": f"a{i}", "category": "tech", "score": 1} for i in range(1001)]}, "items"),
    ({"items": [{"item_id": "a", "category": "tech", "score": 1}], "weight": 1.5}, "weight"),
    ({"items": [{"item_id": "a", "category": "tech", "score": 1}], "weight": "heavy"}, "weight"),
    (b'{"items": [], "pad": "' + b"x" * (4 << 20) + b'"}', "body"),  # over 4 MiB
])
def test_rerank_bad_input_is_a_400_naming_the_field(cluster, body, field):
    env, ws, users, vectors, _ = cluster
    for w in (ws[0], ws[1]):
        status, answer = post(w, "/users/decisive/rerank", body)
        assert status == 400 and answer["field"] == field, answer


def test_rerank_takes_the_contracts_largest_request(cluster):
    """1,000 items of two 128-character strings, as json.dumps sends them (each emoji a 12-byte
    escape: 3.1 MB, over aiohttp's default 1 MiB), through the worker that forwards it."""
    env, ws, users, vectors, _ = cluster
    items = [{"item_id": f"{i:03d}" + "😀" * 125, "category": "😀" * 128, "score": i} for i in range(1000)]
    data = json.dumps({"items": items}).encode()
    assert len(data) > 3_000_000
    status, body = post(not_owner(ws, "decisive"), "/users/decisive/rerank", data)
    assert status == 200, body
    assert body["personalized"] is True and body["unknown_categories"] == ["😀" * 128]
    # one unknown category: the order of the scores
    assert [it["item_id"] for it in body["items"]] == [it["item_id"] for it in items[::-1]]


def test_explain_is_routed_exact_and_names_the_decisive_burst(cluster):
    env, ws, users, vectors, model = cluster
    events = users["decisive"]
    status, out = not_owner(ws, "decisive").get("/users/decisive/explain")
    assert status == 200, out
    assert out["user_id"] == "decisive" and out["model_version"] == model.version
    assert out["events"] == len(events) and out["newest_ts"] == events[-1]["ts"]

    # independently: the model on the window and profile folded from the raw events, with and
    # without each event
    window, prof = fold(events)
    cats = list(model.categories)
    now = model.predict([window], [prof])[0]
    assert out["interests"] == pytest.approx(dict(zip(cats, now)), abs=1e-5)
    assert out["interests"] == pytest.approx(vectors["decisive"]["interests"], abs=1e-5)
    loo = {}
    for e in events:
        w, p = fold([x for x in events if x is not e])
        loo[e["event_id"]] = now - model.predict([w], [p])[0]
    assert [c["category"] for c in out["categories"]] == out["top"] == vectors["decisive"]["top"]
    for c in out["categories"]:
        i = cats.index(c["category"])
        effect = {eid: d[i] for eid, d in loo.items()}
        for lst, sign in ((c["raised"], 1), (c["lowered"], -1)):
            listed = [e["event_id"] for e in lst]
            for e in lst:
                assert e["effect"] == pytest.approx(effect[e["event_id"]], abs=1e-5)
            # the strongest ones, in order (up to rounding of the stored profile)
            rest = [sign * v for eid, v in effect.items() if eid not in listed and sign * v > 0]
            clear = sum(1 for v in effect.values() if sign * v > 1e-5)
            near = sum(1 for v in effect.values() if sign * v > -1e-5)
            assert min(LIMIT, clear) <= len(lst) <= min(LIMIT, near)
            assert all(sign * e["effect"] >= max(rest, default=0) - 1e-5 for e in lst)
            assert [sign * e["effect"] for e in lst] == sorted((sign * e["effect"] for e in lst), reverse=True)
        p_bare = model.predict([window], None)[0]
        assert out["profile"]["effect"][c["category"]] == pytest.approx(now[i] - p_bare[i], abs=1e-5)

    # the decisive stretch: travel is on top, and the travel burst is what raised it most
    assert "travel" in out["top"]
    travel = next(c for c in out["categories"] if c["category"] == "travel")
    burst = {f"decisive-{100 + i}" for i in range(6)}
    assert len(travel["raised"]) == LIMIT and {e["event_id"] for e in travel["raised"]} <= burst
    assert all(e["type"] == "click" and e["category"] == "travel" and e["item"].startswith("item")
               for e in travel["raised"])
    assert all(e["age_ms"] == events[-1]["ts"] - e["ts"] for e in travel["raised"])

    # routed or not, the same answer; search text nowhere
    status, own = next(w for w in ws if w is not not_owner(ws, "decisive")).get("/users/decisive/explain")
    assert own == out
    assert SECRET not in json.dumps(out) and "lisbon" not in json.dumps(out)
    assert not_owner(ws, "nobody").get("/users/nobody/explain")[0] == 404


def test_pages_in_a_real_browser(cluster, tmp_path):
    env, ws, users, vectors, _ = cluster
    if chromium_path() is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    w = not_owner(ws, "decisive")
    status, explained = w.get("/users/decisive/explain")
    with Chromium(tmp_path) as browser:
        page = browser.open(w.url("/users/decisive/view"), {
            "user": "document.getElementById('user-id').textContent",
            "legend": "[...document.querySelectorAll('#legend li')].map(li => li.textContent)",
            "areas": "document.querySelectorAll('#chart svg path').length",
            "top": "[...document.querySelectorAll('#top tr td:first-child')].map(td => td.textContent)",
            "why": "[...document.querySelectorAll('#explanation h3')].map(h => h.textContent)",
            "text": "document.body.innerText",
            # the pointer at the chart's right edge: the tip names the newest event and every layer's share
            "hover": "(() => { const s = document.querySelector('#chart svg'), r = s.getBoundingClientRect();"
                     " s.dispatchEvent(new MouseEvent('mousemove',"
                     " {clientX: r.right - 1, clientY: r.top + r.height / 2}));"
                     " return [document.getElementById('tip').textContent,"
                     " s.querySelector('line[visibility]').getAttribute('visibility')]; })()",
            "left": "(() => { const s = document.querySelector('#chart svg');"
                    " s.dispatchEvent(new MouseEvent('mouseleave'));"
                    " return [document.getElementById('tip').textContent,"
                    " s.querySelector('line[visibility]').getAttribute('visibility')]; })()",
        }, tmp_path / "user-view.png")
        assert page.errors == []
        assert page.values["user"] == "decisive"
        legend = page.values["legend"]
        # the chart stacks the current top 3 first, then the categories that peaked highest, then the rest
        assert legend[:3] == explained["top"] and legend[-1] == "other" and len(legend) == 7
        assert page.values["areas"] == len(legend)
        assert page.values["top"] == explained["top"]
        assert [h.split(" · ")[0] for h in page.values["why"]] == explained["top"]
        assert "lisbon" not in page.values["text"]
        tip, cursor = page.values["hover"]
        newest = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(explained["newest_ts"] // 1000))
        m = re.fullmatch(r"(.{19}) after (click|browse|search)(?: .+?)?: (.+)", tip)
        assert m and m[1] == newest and cursor == "visible", tip
        shares = [part.rsplit(" ", 1) for part in m[3].split(", ")]
        assert [name for name, _ in shares] == legend and all(re.fullmatch(r"\d+\.\d%", s) for _, s in shares)
        assert page.values["left"] == ["", "hidden"]
        assert page.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and page.screenshot.stat().st_size > 20_000

        home = browser.open(w.url("/"), {
            "model": "document.getElementById('model-version').textContent",
            "partitions": "document.getElementById('partitions').textContent",
            "users": "[...document.querySelectorAll('#recent-users a')].map(a => a.getAttribute('href'))",
            "reasons": "[...document.querySelectorAll('#dead-letters td:first-child')].map(td => td.textContent)",
            "lag": "[...document.querySelectorAll('#lag tr')].slice(1)"
                   ".map(tr => [...tr.cells].map(c => c.textContent))",
            "totals": "document.getElementById('totals').textContent",
            "scoring": "document.getElementById('scoring').textContent",
            "attention": "document.getElementById('attention').textContent",
        }, tmp_path / "overview.png")
        assert home.errors == []
        assert home.values["model"] == vectors["decisive"]["model_version"]
        assert home.values["partitions"] == ", ".join(map(str, sorted(owned(w))))
        mine = {u for u in users if partition_for(u.encode(), 4) in owned(w)}
        assert {h.split("/")[2] for h in home.values["users"] if h.endswith("/view")} == mine
        assert "late" in home.values["reasons"]
        # the input topics a row each, with the partitions this worker owns, read to their end
        prefix, n = env["INTEREST_TOPIC_PREFIX"], str(len(owned(w)))
        assert home.values["lag"] == [[f"{prefix}events.{t}", n, "0", "caught up"]
                                      for t in ("browse", "click", "search")]
        # the vectors this worker published, after the scoring passes that made them
        totals = re.fullmatch(r"[\d,]+ accepted, \d+ duplicates?, [\d,]+ dead letters?; (\d+) vectors? published",
                              " ".join(home.values["totals"].split()))
        assert totals and int(totals[1]) >= len(mine)  # one at least for each of its users
        assert re.fullmatch(r"every 1 s for the users with new events: [1-9][\d,]* pass(es)? so far, \d+\.\d\d s on "
                            r"average", home.values["scoring"])
        assert home.values["attention"] == "nothing since start"
    # a page of an unknown user is a 404 page
    assert w.get("/users/nobody/view")[0] == 404


def raw_request(w, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10):
    """(status, body) of a request whose path is sent exactly as given (urllib would tidy it)."""
    conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def new_log(w, since: int) -> str:
    return w.log_path.read_bytes()[since:].decode(errors="replace")


def test_a_forwarded_request_landing_on_a_worker_that_does_not_own_the_user_is_a_503_to_retry(cluster):
    """A forwarded request is never forwarded again. Where it lands on the owner, the owner answers;
    elsewhere (two workers disagreeing while a rebalance moves the user, or a client setting the
    header) the answer is a 503 that names the owner. Before, the worker answered from its own
    table: 404, "unknown user", for a user that exists."""
    env, ws, users, vectors, model = cluster
    other = not_owner(ws, "decisive")
    owner = ws[1] if other is ws[0] else ws[0]
    for path in ("/users/decisive", "/users/decisive/explain", "/users/decisive/view"):
        answers = {}
        for w in (other, owner):
            req = urllib.request.Request(w.url(path), headers={"X-Interest-Routed": "1"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    answers[w.port] = r.status, r.read()
            except urllib.error.HTTPError as e:
                answers[w.port] = e.code, e.read()
        assert answers[owner.port][0] == 200, (path, answers)
        assert answers[other.port] == (503, orjson.dumps({"error": (
            f"forwarded here, but the worker at http://127.0.0.1:{owner.port} owns this user (a rebalance is "
            "moving it); retry")})), path
        assert other.get(path)[0] == 200, path  # without the header: forwarded to the owner


@pytest.mark.parametrize("user, sent", [(".", "."), ("..", ".."), ("brace{1}", "brace%7B1%7D"), ("curly}", "curly%7D")])
def test_dot_segment_and_brace_user_ids_are_routed_unchanged(cluster, user, sent):
    """A forwarded request keeps its path as received: /users/../explain must not reach the owner
    as /explain, nor /users/./explain as the user "explain". An id with a brace had no route at
    all (aiohttp's placeholder refuses braces): every request for it was a 404 "no such path"."""
    env, ws, users, vectors, _ = cluster
    w = not_owner(ws, user)
    for suffix in ("", "/explain"):
        status, body = raw_request(w, "GET", f"/users/{sent}{suffix}")
        assert (status, orjson.loads(body)) == (404, {"error": "unknown user", "user_id": user})
    status, body = raw_request(w, "GET", f"/users/{sent}/view")
    assert status == 404 and b"unknown user" in body
    status, body = raw_request(w, "POST", f"/users/{sent}/rerank",
                               json.dumps({"items": [{"item_id": "a", "category": "tech", "score": 1}]}).encode())
    assert status == 200 and orjson.loads(body)["user_id"] == user


def test_an_absolute_form_request_is_routed_like_its_path(cluster):
    """HTTP/1.1 servers must accept a request target in absolute form (RFC 9112, 3.2.2), as sent to a
    proxy. Forwarded to the owner, it answers as the path alone does, query included. Before, the
    worker built the owner's URL from the whole target: a ValueError, and a 500 with a traceback."""
    env, ws, users, vectors, _ = cluster
    w = not_owner(ws, "decisive")
    for path in ("/users/decisive", "/users/decisive/explain?x=%FF", "/users/decisive/view"):
        assert raw_request(w, "GET", f"http://127.0.0.1:{w.port}{path}") == raw_request(w, "GET", path), path
    body = json.dumps({"items": [{"item_id": "a", "category": "tech", "score": 1}], "weight": 0.5}).encode()
    status, got = raw_request(w, "POST", "http://elsewhere.invalid/users/decisive/rerank", body)
    assert (status, got) == raw_request(w, "POST", "/users/decisive/rerank", body)
    assert status == 200 and orjson.loads(got)["user_id"] == "decisive"


def test_a_user_id_not_utf8_once_percent_decoded_is_a_400_not_another_users_data(cluster):
    """aiohttp keeps escapes that are not UTF-8 as text: /users/%FF answered with the data of the user
    whose id is the three characters "%FF" (/users/%25FF), and /users/%ED%A0%80 likewise. Now every
    user route answers 400 on either worker, before forwarding (a request carrying the forwarding
    header was a 503 on the worker not owning the literal user)."""
    env, ws, users, vectors, _ = cluster
    literal = {"%FF": "%25FF", "%ED%A0%80": "%25ED%25A0%2580"}
    send(env, [ev(i, u, "click", T0 + i * MIN, "travel") for u in literal for i in range(3)])
    for user, path in literal.items():
        for w in ws:  # the literal user is there, at its escaped path
            status, body = wait_for(lambda: (got := w.get(f"/users/{path}"))[0] == 200 and got[1]["events"] == 3
                                    and got, what=user)
            assert body["user_id"] == user and body["counts"]["click"] == 3
    rerank_body = json.dumps({"items": [{"item_id": "a", "category": "tech", "score": 1}]}).encode()
    for user, byte in (("%FF", "%FF"), ("%ED%A0%80", "%ED")):
        error = {"error": f"the user id in the path is not UTF-8 once percent-decoded: {byte} at byte 0",
                 "field": "user_id"}
        for w in ws:
            for headers in ({}, {"X-Interest-Routed": "1"}):
                for method, suffix, body in (("GET", "", None), ("POST", "/rerank", rerank_body),
                                             ("GET", "/explain", None), ("GET", "/view", None)):
                    status, got = raw_request(w, method, f"/users/{user}{suffix}", body,
                                              {"Content-Type": "application/json", **headers})
                    assert (status, orjson.loads(got)) == (400, error), (w.port, user, suffix, headers, got[:200])


def test_faust_table_and_router_views_are_off(cluster):
    """Faust's own /table/{table}/{key}/ served a user's raw state, search text included, and
    /router/{unknown}/ answered 500. Paths no view serves and methods a view does not take are
    JSON errors like every view's; they were aiohttp's text/plain "404: Not Found"."""
    env, ws, users, vectors, _ = cluster
    for w in ws:
        for path in ("/table/users/decisive/", "/table/", "/router/", "/router/nope/"):
            status, body = raw_request(w, "GET", path)
            assert (status, orjson.loads(body)) == (404, {"error": "no such path", "path": path}), (path, body[:200])
    conn = http.client.HTTPConnection("127.0.0.1", ws[0].port, timeout=10)
    try:
        conn.request("DELETE", "/users/decisive/rerank")
        r = conn.getresponse()
        assert (r.status, r.getheader("Content-Type"), r.getheader("Allow")) == (405, "application/json", "POST")
        assert orjson.loads(r.read()) == {"error": "method not allowed", "method": "DELETE", "allowed": ["POST"]}
        # Faust answered HEAD with its GET handler's 405, without Allow, while Allow listed HEAD
        conn.request("HEAD", "/users/decisive/rerank")
        r = conn.getresponse()
        assert (r.status, r.getheader("Content-Type"), r.getheader("Allow")) == (405, "application/json", "POST")
        r.read()
        conn.request("HEAD", "/users/decisive")  # a view with GET takes HEAD
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type") == "application/json"
        r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("raw, headers, field, error", [
    (b'{"items": [{"item_id": "a\\ud800", "category": "tech", "score": 1}]}', {}, "items[0].item_id",
     "items[0].item_id is not valid Unicode: a lone surrogate \\ud800 at character 1"),
    (b'{"items": [{"item_id": "a", "category": "\\udfff", "score": 1}]}', {}, "items[0].category",
     "items[0].category is not valid Unicode: a lone surrogate \\udfff at character 0"),
    (b'{"items": [{"item_id": null, "category": "tech", "score": 1}]}', {}, "items[0].item_id",
     "items[0].item_id must be a non-empty string, got null"),
    (b'{"items": [{"item_id": "a", "category": "tech", "score": 1' + b"0" * 400 + b'}]}', {}, "items[0].score",
     "items[0].score must be a finite number, got an integer of 401 digits, beyond a float's range"),
    (b"not gzip", {"Content-Encoding": "gzip"}, "body",
     "body is not valid gzip (its Content-Encoding): incorrect header check"),
])
def test_rerank_bad_input_messages(cluster, raw, headers, field, error):
    env, ws, users, vectors, _ = cluster
    for w in ws:
        since = w.log_path.stat().st_size
        status, body = raw_request(w, "POST", "/users/decisive/rerank", raw,
                                   {"Content-Type": "application/json", **headers})
        assert (status, orjson.loads(body)) == (400, {"error": error, "field": field})
        assert "Traceback" not in new_log(w, since)


def test_request_bodies_are_decoded_by_the_worker_and_codings_it_cannot_read_are_json_errors(cluster):
    """aiohttp decoded request bodies before any view ran: a truncated deflate body left the
    re-rank waiting until the client gave up, and br or zstd was aiohttp's text/plain 400 asking to
    install a package, also on views that read no body. Now the re-rank decodes the body (on the
    worker that receives it: the owner gets it decoded), with one JSON error for what it cannot."""
    env, ws, users, vectors, _ = cluster
    plain = json.dumps({"items": [{"item_id": "a", "category": "tech", "score": 1}]}).encode()
    deflated = zlib.compress(plain)
    for w in ws:
        since = w.log_path.stat().st_size
        want = raw_request(w, "POST", "/users/decisive/rerank", plain)
        assert want[0] == 200
        for coding, data in (("gzip", gzip.compress(plain)), ("deflate", deflated)):
            assert raw_request(w, "POST", "/users/decisive/rerank", data, {"Content-Encoding": coding}) == want
        status, body = raw_request(w, "POST", "/users/decisive/rerank", deflated[:len(deflated) // 2],
                                   {"Content-Encoding": "deflate"}, timeout=5)
        assert (status, orjson.loads(body)) == (400, {
            "error": "body is not valid deflate (its Content-Encoding): truncated", "field": "body"})
        for coding in ("br", "zstd"):
            status, body = raw_request(w, "POST", "/users/decisive/rerank", plain, {"Content-Encoding": coding})
            assert (status, orjson.loads(body)) == (400, {
                "error": f"Content-Encoding '{coding}' is not supported: gzip, deflate, identity",
                "field": "Content-Encoding"})
            # a view that reads no body answers as without one
            assert raw_request(w, "GET", "/users/decisive", plain, {"Content-Encoding": coding}) == \
                raw_request(w, "GET", "/users/decisive")
        log = new_log(w, since)
        assert "Traceback" not in log and "[ERROR]" not in log and "[WARNING]" not in log, log


def test_a_routed_head_has_the_owners_content_length(cluster):
    """A HEAD forwarded to the owner came back without Content-Length (aiohttp sets none for the
    empty body of a HEAD answer), where the owner's own answer has it."""
    env, ws, users, vectors, _ = cluster
    other = not_owner(ws, "decisive")
    owner = ws[1] if other is ws[0] else ws[0]
    for path in ("/users/decisive", "/users/decisive/explain", "/users/decisive/view", "/users/nobody"):
        answers = []
        for w in (owner, other):
            conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=10)
            try:
                conn.request("HEAD", path)
                r = conn.getresponse()
                answers.append((r.status, r.getheader("Content-Type"), r.getheader("Content-Length"), r.read()))
            finally:
                conn.close()
        status, ctype, length, body = answers[0]
        assert length is not None and int(length) > 0 and body == b"", (path, answers)
        assert answers[1] == answers[0], path
        assert int(length) == len(raw_request(other, "GET", path)[1]), path


def test_scores_at_the_float_limits_blend_finitely(cluster):
    """1e308 and -1e308 are finite, so accepted; their range overflowed to inf and every blended
    score came back null (NaN)."""
    env, ws, users, vectors, model = cluster
    items = [{"item_id": "a", "category": "tech", "score": 1e308},
             {"item_id": "b", "category": "sports", "score": -1e308},
             {"item_id": "c", "category": "travel", "score": 0}]
    status, body = post(not_owner(ws, "decisive"), "/users/decisive/rerank", {"items": items, "weight": 0.5})
    want = rerank(vectors["decisive"], [Item(**it) for it in items], 0.5, prior=model.card["category_prior"])
    assert status == 200 and all(isinstance(it["blended"], float) for it in body["items"]), body
    assert [it["blended"] for it in body["items"]] == pytest.approx([it.blended for it in want.items], abs=1e-12)


def test_malformed_requests_log_one_line_not_a_traceback(cluster):
    """aiohttp answers 400 to a request it cannot parse, and logged an ERROR with a traceback;
    a client hanging up mid-body did too."""
    env, ws, users, vectors, _ = cluster
    w = ws[0]
    since = w.log_path.stat().st_size
    status, body = raw_request(w, "GET", "/users/" + "a" * 10_000)
    assert status == 400 and b"Got more than 8190 bytes" in body
    with socket.create_connection(("127.0.0.1", w.port), timeout=5) as s:  # 100 bytes promised, 4 sent
        s.sendall(b"POST /users/o1/rerank HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"it")
    wait_for(lambda: new_log(w, since).count("bad request (") >= 2, timeout=10, what="both bad requests logged")
    log = new_log(w, since)
    assert "Traceback" not in log and "[ERROR]" not in log, log
    assert "bad request (Got more than 8190 bytes" in log and "bad request (Connection lost)" in log
    assert w.get("/health")[0] == 200


def statuses_meanwhile(w: Worker, path: str, threads: int = 1, gone: bool = False):
    """``threads`` threads requesting ``path`` of ``w`` in a loop: ``(statuses, stop)``, the status
    of each answer so far and a function that stops and joins them. A connection refused ends a
    thread when ``gone`` (the server stopped), else it is tried again (not listening yet)."""
    import threading

    statuses: list = []
    done = threading.Event()

    def run():
        while not done.is_set():
            try:
                statuses.append(raw_request(w, "GET", path)[0])
            except OSError:
                if gone:
                    return
                time.sleep(0.01)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for t in started:
        t.start()

    def stop():
        done.set()
        for t in started:
            t.join(15)

    return statuses, stop


def test_a_stopping_worker_answers_routed_requests_503_not_500(env, workers):
    """While a worker stops, its HTTP client closes before its web server: a request it still took
    for another worker's user raised "Session is closed", a 500 with a traceback."""
    cli(env, "topics", "create")
    w1, w2 = workers("w1"), workers("w2")
    wait_for(lambda: owned(w1) and owned(w2) and owned(w1) | owned(w2) == {0, 1, 2, 3}, what="partitions split")
    theirs = next(u for u in (f"u{i}" for i in range(100)) if partition_for(u.encode(), 4) in owned(w2))
    statuses, stop = statuses_meanwhile(w1, f"/users/{theirs}/explain", threads=4, gone=True)
    wait_for(lambda: len(statuses) > 50, what="requests flowing")
    assert w1.stop() == 0
    stop()
    assert 500 not in statuses and set(statuses) <= {404, 503}, sorted(set(statuses))
    assert "Traceback" not in w1.log_path.read_text(errors="replace")


def test_a_worker_restoring_its_state_answers_user_views_503_not_404(env, workers):
    """A worker that restores its partitions from the changelog (here its local state is gone)
    holds part of the users until it is ready. Every user view is a 503 to retry until then.
    Before, such a view answered from the partial table: 404 "unknown user" for a user that
    exists (and an older state of a user could be cached, to have later events applied to it),
    and 500 before that (two runs of two)."""
    cli(env, "topics", "create")
    w = workers("w", INTEREST_FLUSH_S="0.3", INTEREST_SCORE_INTERVAL_S="3600")
    n = 20_000
    send(env, [ev(0, f"r{u}", "click", T0 + u, "tech") for u in range(n)])
    last = f"r{n - 1}"  # the newest changelog record of its partition: restored last
    wait_for(lambda: w.get(f"/users/{last}")[0] == 200, timeout=60, what="every user applied")
    assert w.stop() == 0
    shutil.rmtree(w.data_dir)
    statuses, stop = statuses_meanwhile(w, f"/users/{last}")
    try:
        w.start()
    finally:
        stop()
    assert 503 in statuses and set(statuses) <= {503, 200}, sorted(set(statuses))
    assert w.get(f"/users/{last}")[0] == 200


class HoldingProxy:
    """An HTTP proxy in front of a worker that holds every page request (``/view``) until released
    and passes everything else through: an owner busy with a burst of pages."""

    def __init__(self, target_port: int):
        import http.server
        import threading

        proxy = self
        self.held, self.release, self.lock = 0, threading.Event(), threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _relay(self):
                if self.path.endswith("/view"):
                    with proxy.lock:
                        proxy.held += 1
                    proxy.release.wait(30)
                    self.send_error(503)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=10)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                    r = conn.getresponse()
                    payload = r.read()
                    self.send_response(r.status)
                    self.send_header("Content-Type", r.getheader("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    conn.close()

            do_GET = do_POST = _relay

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 256  # the listen backlog: 120 connections come at once (5 by default)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_pages_an_owner_is_busy_with_do_not_hold_up_other_requests_routed_to_it(env, workers):
    """120 page requests routed to an owner that takes its time with them, then a re-rank routed to
    the same owner: answered at once. Pages are forwarded 32 at a time (stream_app.web.PAGE_FORWARDS),
    in a pool of their own. Before, forwarding shared aiohttp's pool of 100 connections, every one
    held by a waiting page, and the re-rank waited for one until its 10 s ran out: a 503 "did not
    answer" for an owner that was idle."""
    from concurrent.futures import ThreadPoolExecutor

    cli(env, "topics", "create")
    w2 = workers("w2", start=False)
    proxy = HoldingProxy(w2.port)
    try:
        w2.env["INTEREST_CANONICAL_URL"] = f"http://127.0.0.1:{proxy.port}"  # how w1 reaches w2
        w2.start()
        w1 = workers("w1")
        wait_for(lambda: owned(w1) and owned(w2) and owned(w1) | owned(w2) == {0, 1, 2, 3}
                 and not owned(w1) & owned(w2), what="partitions split between the workers")
        user = next(u for u in (f"u{i}" for i in range(100)) if partition_for(u.encode(), 4) in owned(w2))
        with ThreadPoolExecutor(120) as pool:
            # a client that waits longer than the worker's forward (10 s), whose answer it gets
            pages_ = [pool.submit(raw_request, w1, "GET", f"/users/{user}/view", timeout=40) for _ in range(120)]
            wait_for(lambda: proxy.held >= 32, timeout=30, what="pages held at the owner")
            time.sleep(1)  # the other pages, still coming: the pool they would take is the re-rank's
            body = json.dumps({"items": [{"item_id": "a", "category": "tech", "score": 1}]}).encode()
            # within 6 s: it takes milliseconds; a pool taken by pages frees a connection only as
            # their 10 s forwards run out, 8 s or more from here
            status, got = raw_request(w1, "POST", f"/users/{user}/rerank", body, timeout=6)
            proxy.release.set()
            assert (status, orjson.loads(got)) == (200, {
                "user_id": user, "personalized": False, "model_version": None, "weight": 0.5, "unknown_categories": [],
                "items": [{"item_id": "a", "category": "tech", "score": 1.0, "blended": None, "interest": None}]})
            assert {p.result()[0] for p in pages_} == {503}  # the proxy's answer, or the forward's timeout
    finally:
        proxy.close()
