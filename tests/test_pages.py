"""The HTML pages and the overview's bookkeeping, without a worker: escaping of everything that comes
from events, no external resources, the rates, the recent users, the chart's categories."""
from __future__ import annotations

import html
import html.parser
import re
from collections import OrderedDict
from datetime import datetime, timezone

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from browser import Chromium, chromium_path
from stream_app import pages
from stream_app.state_cache import Entry

EVIL = '</script><script>alert(1)</script>"&<b>'


class Resources(html.parser.HTMLParser):
    """Every URL a page would load (scripts, styles, images, frames, fonts in CSS)."""

    def __init__(self):
        super().__init__()
        self.urls, self.scripts, self.json = [], [], []
        self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "srcset", "data", "poster"):
            if a.get(name):
                self.urls.append(a[name])
        if tag == "link":
            self.urls.append(a.get("href"))
        if tag == "script":
            self._in = "json" if a.get("type") == "application/json" else "js"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None

    def handle_data(self, data):
        if self._in == "json":
            self.json.append(data)
        elif self._in == "js":
            self.scripts.append(data)


def explanation(cat: str = "travel") -> dict:
    ev = {"event_id": "e1", "type": "click", "ts": 2_000, "age_ms": 7_200_000, "category": cat, "item": EVIL,
          "effect": 0.12}
    search = {"event_id": "e2", "type": "search", "ts": 3_000, "age_ms": 0, "effect": -0.03}
    cats = [cat, "sports", "tech", "music", "books", "films", "cars"]
    series = {c: [0.1 + 0.01 * i, 0.12] for i, c in enumerate(cats)}
    return {
        "model_version": "v1", "newest_ts": 3_000, "events": 2,
        "interests": {c: 1 / len(cats) for c in cats}, "top": [cat, "sports", "tech"],
        "categories": [{"category": c, "p": 0.3, "raised": [ev], "lowered": [search]} for c in (cat, "sports", "tech")],
        "profile": {"used": True, "effect": {cat: 0.01, "sports": -0.02, "tech": 0.0}, "without_profile": {},
                    "divergence": 0.001},
        "evolution": {"ts": [2_000, 3_000], "series": series,
                      "events": [{"event_id": "e1", "type": "click", "ts": 2_000, "age_ms": 1_000, "category": cat,
                                  "item": EVIL}, {"event_id": "e2", "type": "search", "ts": 3_000, "age_ms": 0}]},
    }


def summary() -> dict:
    return {"events": 2, "newest_ts": 3_000, "counts": {"click": 1, "browse": 0, "search": 1}, "categories": {}}


def test_user_page_escapes_event_data_and_loads_nothing_external():
    page = pages.user_page(EVIL, summary(), {"ts": 3_000, "drift": 0.25}, explanation(EVIL))
    parser = Resources()
    parser.feed(page)
    assert parser.urls == ["data:,"]  # the favicon link only, inline
    scripts = "".join(parser.scripts).replace("http://www.w3.org/2000/svg", "")
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+", scripts)
    assert "<script>alert(1)" not in page and "<b>" not in re.sub(r"<b>(click|search)</b>", "", page)
    # the hostile strings arrive intact in the embedded data and in the text
    (data,) = parser.json
    chart = orjson.loads(data)
    assert chart["shown"][0] == EVIL and chart["events"][0]["item"] == EVIL
    assert len(parser.scripts) == 1 and "</script>" not in data
    assert html_text(page).count(EVIL) >= 3  # the heading, the top table, the explanation
    assert ("drift 0.2500 (Jensen-Shannon divergence to the user's vector before it; 0 for a first vector)"
            in html_text(page))  # a first vector's 0 read as "no change"
    # the chart's x axis is by event, not to scale in time: a night between two sittings is one step
    assert ("The events are evenly spaced, whatever the time between them; the labels give their times."
            in html_text(page))


def html_text(page: str) -> str:
    out = []

    class Text(html.parser.HTMLParser):
        def handle_data(self, data):
            out.append(data)

    Text().feed(page)
    return re.sub(r"\s+", " ", "".join(out))


def spaced_text(page: str) -> str:
    """The text of a page's body, a space at every tag (table cells apart), spaces collapsed."""
    out = []

    class Text(html.parser.HTMLParser):
        body = False

        def handle_starttag(self, tag, attrs):
            self.body = self.body or tag == "body"
            out.append(" ")

        def handle_data(self, data):
            if self.body:
                out.append(data)

    Text().feed(page)
    return re.sub(r"\s+", " ", "".join(out)).strip()


def test_user_page_shows_the_explanation():
    ex = explanation()
    text = html_text(pages.user_page("u1", summary(), None, ex))
    assert "User u1" in text and "No vector published yet." in text
    assert "+0.1200 click travel" in text and "2 h 00 min before the newest" in text
    assert "-0.0300 search · 0 s before the newest" in text  # a search: no category, no item
    assert "1 click, 0 browses, 1 search" in text
    assert "travel +0.0100, sports -0.0200, tech +0.0000" in text
    # change over the window: now 1/7 against the first point
    assert f"{1 / 7 - 0.1:+.4f}" in text


def test_chart_categories_top_first_then_highest_peaks():
    series = {"a": [0.1, 0.1], "b": [0.5, 0.0], "c": [0.2, 0.3], "d": [0.0, 0.05], "e": [0.3, 0.1]}
    assert pages.chart_categories(series, ["c", "a"], 4) == ["c", "a", "b", "e"]
    assert pages.chart_categories(series, ["c"], 10) == ["c", "b", "e", "a", "d"]


def test_embed_json_cannot_close_the_script():
    s = pages.embed_json({"x": "</script><!-- & -->"})
    assert "<" not in s and ">" not in s and "&" not in s
    assert orjson.loads(s) == {"x": "</script><!-- & -->"}


def overview_info(**given) -> dict:
    """What ``GET /`` hands :func:`pages.overview_page`: a quiet worker, with ``given`` over it."""
    info = {"worker": "http://127.0.0.1:6066", "ready": True, "model_version": "v9", "partitions": [0],
            "lag": [], "rates": None, "totals": {"accepted": 0.0, "duplicate": 0.0, "dead_letter": 0.0, "vectors": 0.0},
            "dead_letters": {}, "scoring": (0, 0.0), "score_interval_s": 10.0, "attention": [], "cached_users": 0,
            "recent_users": []}
    return info | given


def test_rates_over_the_last_minute():
    r = pages.Rates(window_s=60)
    assert r.per_second(0.0, {"accepted": 0.0}) is None
    for t in range(0, 100, 5):  # 10 accepted events per second
        r.add(float(t), {"accepted": 10.0 * t, "duplicate": 0.0, "dead_letter": t / 5})
    got = r.per_second(100.0, {"accepted": 1000.0, "duplicate": 0.0, "dead_letter": 20.0})
    assert got["over_s"] == 60.0  # the samples older than the window are gone
    assert got["accepted"] == 10.0 and got["dead_letter"] == 0.2 and got["duplicate"] == 0.0


def test_counters_and_dead_letters_from_the_registry():
    reg = CollectorRegistry()
    events = Counter("interest_events_total", "", ["outcome"], registry=reg)
    dlq = Counter("interest_dead_letters_total", "", ["reason"], registry=reg)
    events.labels("accepted").inc(7)
    events.labels("dead_letter").inc(2)
    vectors = Counter("interest_scored_users_total", "", registry=reg)
    dlq.labels("late").inc(2)
    dlq.labels("not_json")
    vectors.inc(4)
    assert pages.counters(reg) == {"accepted": 7.0, "duplicate": 0.0, "dead_letter": 2.0, "vectors": 4.0}
    assert pages.dead_letters(reg) == {"late": 2.0, "not_json": 0.0}


def test_scoring_passes_from_their_histogram():
    reg = CollectorRegistry()
    assert pages.scoring_passes(reg) == (0, 0.0)  # no such metric yet
    passes = Histogram("interest_scoring_pass_seconds", "", registry=reg)
    assert pages.scoring_passes(reg) == (0, 0.0)
    for took in (0.5, 1.5, 0.25):
        passes.observe(took)
    assert pages.scoring_passes(reg) == (3, 0.75)


def test_attention_lists_the_failure_metrics_that_are_not_zero_in_a_fixed_order():
    reg = CollectorRegistry()
    labels = {"interest_input_running_back_total": ["topic"]}  # as stream_app.metrics has them
    made = {name: (Gauge if kind == "now" else Counter)(name.removesuffix("_total"), "", labels.get(name, ()),
                                                         registry=reg)
            for name, kind, _ in pages.ATTENTION}
    assert pages.attention(reg) == []
    made["interest_model_refused_total"].inc(2)
    made["interest_vectors_failed_total"].inc(30)
    made["interest_ingest_stalled"].set(1)
    meaning = {name: m for name, _, m in pages.ATTENTION}
    assert pages.attention(reg) == [
        ("interest_ingest_stalled", 1.0, "now", meaning["interest_ingest_stalled"]),
        ("interest_vectors_failed_total", 30.0, "since start", meaning["interest_vectors_failed_total"]),
        ("interest_model_refused_total", 2.0, "since start", meaning["interest_model_refused_total"])]
    made["interest_ingest_stalled"].set(0)  # a stall that ended is not listed
    assert [name for name, *_ in pages.attention(reg)] == ["interest_vectors_failed_total",
                                                           "interest_model_refused_total"]
    made["interest_input_running_back_total"].labels(topic="events.click").inc(9)  # by topic: their sum
    made["interest_input_running_back_total"].labels(topic="events.search").inc(2)
    assert pages.attention(reg)[1] == ("interest_input_running_back_total", 11.0, "since start",
                                       meaning["interest_input_running_back_total"])


def test_lag_by_topic_sums_partitions_and_names_those_behind_most_first():
    lag = [("events.search", 1, 0), ("events.click", 2, 5), ("events.click", 0, 0), ("events.click", 1, 40),
           ("events.search", 0, 0), ("events.browse", 3, 5)]
    assert pages.lag_by_topic(lag) == [
        ("events.browse", 1, 5, [(3, 5)]),
        ("events.click", 3, 45, [(1, 40), (2, 5)]),
        ("events.search", 2, 0, [])]
    assert pages.lag_by_topic([]) == []


def test_recent_users_by_last_arrival():
    entries = OrderedDict()
    for name, newest, seen, rows in [("old", 5, 100, 1), ("idle", 9, 900, 0), ("b", 7, 300, 2), ("a", 8, 300, 1),
                                     ("viewed", 1, 50, 3), ("gone", 0, 0, 0)]:
        st = None if name == "gone" else {"newest": newest, "seen": seen, "ev": [[0]] * rows}
        entries[name.encode()] = Entry(0, st, 0)
    # most recent arrival first (ties: newer event time first); no rows or deleted: not listed
    assert pages.recent_users(entries, 3) == [("a", 8, 300), ("b", 7, 300), ("old", 5, 100)]
    assert [u for u, _, _ in pages.recent_users(entries, 10, scan=2)] == ["viewed"]


def test_overview_page():
    info = overview_info(
        partitions=[0, 2], lag=[("events.click", 0, 12), ("events.click", 2, 0), ("events.search", 0, 0)],
        totals={"accepted": 5.0, "duplicate": 1.0, "dead_letter": 2.0, "vectors": 4.0},
        dead_letters={"late": 2.0, "not_json": 0.0}, cached_users=3, recent_users=[(EVIL, 1_000, 0), ("u/2", 2_000, 0)])
    page = pages.overview_page(info)
    parser = Resources()
    parser.feed(page)
    assert parser.urls == ["data:,"] and parser.scripts == []
    text = spaced_text(page)
    assert "v9" in text and "0, 2" in text and "late 2" in text
    assert "since start 5 accepted, 1 duplicate, 2 dead letters; 4 vectors published " in text
    assert "events.click 2 12 p0: 12 events.search 1 0 caught up" in text  # a row per topic
    assert "vectors out measuring" in text
    assert "scoring every 10 s for the users with new events: 0 passes so far users in memory" in text
    assert "needs attention nothing since start" in text
    assert 'href="/users/u%2F2/view"' in page and EVIL in text and "<script>alert" not in page


def test_overview_page_of_a_busy_worker_with_failures():
    rates = {"accepted": 300.0, "duplicate": 0.5, "dead_letter": 0.0, "vectors": 44.75, "over_s": 58.2}
    attention = [("interest_ingest_stalled", 1.0, "now", "reading waits <b>"),
                 ("interest_vectors_failed_total", 1234.0, "since start", "vectors not taken")]
    lag = [("events.click", p, 1000 * p) for p in range(9)]  # 8 partitions behind, the most first
    totals = {"accepted": 20109.0, "duplicate": 0.0, "dead_letter": 1.0, "vectors": 3532.0}
    text = spaced_text(pages.overview_page(overview_info(rates=rates, scoring=(1, 0.2134), attention=attention,
                                                       lag=lag, score_interval_s=2.5, totals=totals)))
    assert "since start 20,109 accepted, 0 duplicates, 1 dead letter; 3,532 vectors published " in text
    assert "events in 300.0 events/s accepted, 0.5 duplicates/s, 0.0 dead letters/s (over the last 58 s)" in text
    assert "vectors out 44.8 vectors/s published (over the last 58 s)" in text
    assert "every 2.5 s for the users with new events: 1 pass so far, 0.21 s on average" in text
    assert ("needs attention now reading waits <b> (interest_ingest_stalled) 1,234 vectors not taken "
            "(interest_vectors_failed_total)") in text
    assert ("events.click 9 36,000 p8: 8,000 · p7: 7,000 · p6: 6,000 · p5: 5,000 · p4: 4,000 · p3: 3,000 "
            "· 2 more") in text


def links(page: str) -> list[tuple[str, str]]:
    """(href, text) of every <a> of a page, and ("", text) of every span titled as unlinkable."""
    out = []

    class Links(html.parser.HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "a" or (tag == "span" and a.get("title") == pages.UNLINKABLE_TITLE):
                out.append([a.get("href", ""), ""])
                self._open = True

        def handle_endtag(self, tag):
            self._open = False

        def handle_data(self, data):
            if getattr(self, "_open", False):
                out[-1][1] += data

    Links().feed(page)
    return [tuple(x) for x in out]


def test_the_users_dot_and_dot_dot_get_no_link_a_browser_would_resolve_away():
    """A browser resolves /users/./explain to /users/explain (another user, "explain") and
    /users/../view to /view, %2E or not; these two users' names are shown without a link."""
    info = overview_info(recent_users=[(".", 3_000, 0), ("..", 2_000, 0), ("a.b", 1_000, 0)])
    assert links(pages.overview_page(info)) == [
        ("/metrics", "metrics"), ("/health", "health"), ("", "."), ("", "explain"), ("", ".."), ("", "explain"),
        ("/users/a.b/view", "a.b"), ("/users/a.b/explain", "explain")]
    for user in (".", ".."):
        page = pages.user_page(user, summary(), None, explanation())
        assert links(page) == [("/", "interest-stream worker"), ("", "explain (JSON)"), ("", "state (JSON)")]
    assert links(pages.user_page("u/1", summary(), None, explanation())) == [
        ("/", "interest-stream worker"), ("/users/u%2F1/explain", "explain (JSON)"), ("/users/u%2F1", "state (JSON)")]


# --- the pages as a browser lays them out (rendered from the data above, opened as files) ------
PHONE, DESKTOP = 390, 1280  # CSS px: a phone's width (iPhone 12 to 15) and a laptop's

LONG_USER = "L" * 128  # the longest ids and names the contract allows, with no place to break
LONG_CAT = "W" * 128
OVERFLOW = {
    # the document is no wider than the window: nothing sticks out to the right
    "scroll": "document.documentElement.scrollWidth - window.innerWidth",
    # what a card, a column or the heading holds stays inside it (no text over its neighbours)
    "spill": """[...document.querySelectorAll('h1, .card, .cols > div, li')]
                .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.tagName + ' ' + e.className)""",
    # but the tables' own words are not broken to make room ("categ|ory", "28.6|%" on a phone)
    "broken": """[...document.querySelectorAll('th, td.num, #summary td')].flatMap(e => [...e.childNodes])
                .filter(t => t.nodeType === 3 && t.textContent.trim()).filter(t => {
                  const r = document.createRange(); r.selectNodeContents(t);
                  const lines = new Set([...r.getClientRects()].map(q => Math.round(q.top)));
                  return lines.size > t.textContent.trim().split(/\\s+/).length; }).map(t => t.textContent)""",
}


def open_page(tmp_path, name: str, page: str, width: int, evaluate: dict):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    f = tmp_path / f"{name}.html"
    f.write_text(page, encoding="utf-8")
    with Chromium(tmp_path, width, 844) as browser:
        opened = browser.open(f.as_uri(), evaluate, tmp_path / f"{name}-{width}.png")
    assert opened.errors == []
    return opened.values


def long_names_explanation() -> dict:
    ex = explanation(LONG_CAT)
    for cat in ex["categories"]:
        for e in cat["raised"]:
            e["item"] = "X" * 128
    return ex


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
def test_long_names_wrap_inside_their_boxes(tmp_path, width):
    """A 128-character user id, category or item without a space ran out of its card over the next
    one, and a user id in the overview's list over the lag and dead-letter columns."""
    page = pages.user_page(LONG_USER, summary(), None, long_names_explanation())
    assert open_page(tmp_path, "user", page, width, OVERFLOW) == {"scroll": 0, "spill": [], "broken": []}
    rates = {"accepted": 12345.6, "duplicate": 0.0, "dead_letter": 0.0, "vectors": 4567.8, "over_s": 60.0}
    info = overview_info(lag=[(LONG_USER, 0, 3), ("a-deployment-prefix.events.click", 1, 1_000_000)],
                         dead_letters={"late": 1.0}, cached_users=1, recent_users=[(LONG_USER, 1_000, 0)], rates=rates,
                         attention=[(name, 1e6, kind, meaning) for name, kind, meaning in pages.ATTENTION])
    fit = open_page(tmp_path, "overview", pages.overview_page(info), width, OVERFLOW)
    assert fit == {"scroll": 0, "spill": [], "broken": []}


@pytest.mark.parametrize("width", [DESKTOP, PHONE])
def test_the_charts_labels_keep_their_size_on_a_phone(tmp_path, width):
    """The chart was drawn 960 units wide and scaled to the page: on a phone its axis labels were
    4 px high (11 * 342 / 960), unreadable. It is drawn at the width it gets, 1 unit to 1 px."""
    page = pages.user_page("u1", summary(), None, explanation())
    got = open_page(tmp_path, "chart", page, width, {
        "scale": "[...document.querySelectorAll('#chart svg text')].map(t => t.getScreenCTM().a.toFixed(3))",
        "labels": "[...document.querySelectorAll('#chart svg text')].map(t => t.textContent)",
        "svg": "document.querySelector('#chart svg').getBoundingClientRect().width",
        "box": "document.getElementById('chart').clientWidth",
    })
    assert got["labels"] == ["0.00", "0.25", "0.50", "0.75", "1.00", "01-01 00:00:02", "00:00:03"]  # a second apart
    assert got["scale"] == ["1.000"] * 7
    assert got["svg"] == got["box"]


def across_midnight() -> dict:
    """An explanation whose window runs from 19:37 one day to 17:49 the next (UTC)."""
    ex = explanation()
    hm = [(4, 19, 37), (4, 23, 22), (5, 3, 16), (5, 7, 1), (5, 10, 55), (5, 14, 30), (5, 17, 49)]
    ts = [int(datetime(2026, 12, d, h, m, tzinfo=timezone.utc).timestamp() * 1000) for d, h, m in hm]
    events = [{"event_id": f"e{k}", "type": "click", "ts": t, "age_ms": ts[-1] - t, "category": "travel",
               "item": "i"} for k, t in enumerate(ts)]
    series = {c: [v[0]] * len(ts) for c, v in ex["evolution"]["series"].items()}
    ex["evolution"] = {"ts": ts, "series": series, "events": events}
    return ex


def assert_time_axis(tmp_path, name: str, page: str, width: int, ticks: list) -> None:
    """The chart's time-axis labels in Chromium at ``width`` are ``ticks``, left to right, none
    overlapping another or the chart's edges."""
    got = open_page(tmp_path, name, page, width, {
        "ticks": "[...document.querySelectorAll('#chart svg text')].slice(5).map(t => t.textContent)",
        "boxes": """[...document.querySelectorAll('#chart svg text')].slice(5).map(t => t.getBBox())
                    .map(b => [Math.round(b.x), Math.round(b.x + b.width)])""",
        "width": "document.querySelector('#chart svg').getBoundingClientRect().width",
    })
    assert got["ticks"] == ticks
    edges = [e for box in got["boxes"] for e in box]
    assert edges == sorted(edges) and edges[0] >= 0 and edges[-1] <= got["width"], got["boxes"]


@pytest.mark.parametrize("width, ticks", [
    (DESKTOP, ["12-04 19:37", "23:22", "12-05 03:16", "10:55", "14:30", "17:49"]),
    (PHONE, ["12-04 19:37", "12-05 07:01", "17:49"]),
])
def test_the_time_axis_dates_its_ticks_where_the_day_changes(tmp_path, width, ticks):
    """A window across midnight read "19:37 ... 03:16 ... 17:49", as if time ran backwards: a tick
    carries its date where the date changes. On a phone fewer ticks, so that no two labels overlap."""
    assert_time_axis(tmp_path, "axis", pages.user_page("u1", summary(), None, across_midnight()), width, ticks)


def seconds_apart() -> dict:
    """An explanation whose window holds 7 clicks a second apart, at 10:34:01 to 10:34:07 (UTC)."""
    ex = across_midnight()
    ts = [int(datetime(2026, 12, 6, 10, 34, s, tzinfo=timezone.utc).timestamp() * 1000) for s in range(1, 8)]
    ex["evolution"]["ts"] = ts
    ex["evolution"]["events"] = [dict(e, ts=t) for e, t in zip(ex["evolution"]["events"], ts)]
    return ex


@pytest.mark.parametrize("width, ticks", [
    (DESKTOP, ["12-06 10:34:01", "10:34:02", "10:34:03", "10:34:05", "10:34:06", "10:34:07"]),
    (PHONE, ["12-06 10:34:01", "10:34:04", "10:34:07"]),
])
def test_the_time_axis_gives_seconds_when_two_ticks_share_a_minute(tmp_path, width, ticks):
    """A window of seconds read "12-06 10:34, 10:34, 10:34, 10:34, 10:34": the labels did not give
    their times. Ticks within one minute give their seconds, and still do not overlap."""
    assert_time_axis(tmp_path, "seconds", pages.user_page("u1", summary(), None, seconds_apart()), width, ticks)


def title(page: str) -> str:
    return html.unescape(re.search(r"<title>(.*?)</title>", page, re.S).group(1))


def test_the_title_names_the_user_on_the_unknown_users_page_too():
    """A tab or a bookmark of a user's page names the user, known or not (the unknown user's page
    was titled "unknown user · interest-stream" whoever was asked for)."""
    assert title(pages.user_page(EVIL, summary(), None, explanation())) == f"{EVIL} · interest-stream"
    assert title(pages.missing_user_page(EVIL)) == f"{EVIL} (unknown user) · interest-stream"
    assert "<script>alert" not in pages.missing_user_page(EVIL)


def test_every_page_is_laid_out_for_the_phones_width():
    """Without a viewport meta, a phone lays a page out 980 px wide and shrinks it: the unknown
    user's page had none, and its text was 40% of its size at 390 px."""
    viewport = '<meta name="viewport" content="width=device-width,initial-scale=1">'
    info = overview_info(worker="w", partitions=[])
    for page in (pages.user_page("u1", summary(), None, explanation()), pages.missing_user_page("u1"),
                 pages.overview_page(info)):
        assert page.count(viewport) == 1


def test_a_window_where_no_single_event_moves_anything_says_why():
    """Many alike searches: without any one of them the model reads the same tokens (an older one
    takes its place), so every effect is exactly 0 and no card lists an event, while the chart
    moved as the window filled. The page said "none" everywhere, and nothing of why."""
    ex = explanation()
    for cat in ex["categories"]:
        cat["raised"], cat["lowered"] = [], []
    note = re.compile(r'<p class="meta" id="no-effect">No single event moves these shares: without any one of '
                      r'them the model reads the same input\. .*?</p>')
    assert len(note.findall(pages.user_page("u1", summary(), None, ex))) == 1
    assert note.findall(pages.user_page("u1", summary(), None, explanation())) == []  # events listed
    idle = dict(ex, events=0)  # rows dropped: nothing to explain, and the lists say so already
    assert note.findall(pages.user_page("u1", summary(), None, idle)) == []


def test_an_idle_users_page_shows_the_vector_it_is_served_and_says_why_nothing_is_listed():
    """The page of a user whose rows were dropped showed a re-scored empty window under "Top
    interests now", against the published vector below it, and "none" in every card with no word
    of why. It shows the served vector (stream_app.explain.idle) and says why."""
    ex = {"model_version": "v7", "newest_ts": 3_000, "events": 0,
          "interests": {"books": 0.1, "sports": 0.5, "tech": 0.15, "travel": 0.25}, "top": ["sports", "travel", "tech"],
          "categories": [{"category": c, "p": p, "raised": [], "lowered": []}
                         for c, p in (("sports", 0.5), ("travel", 0.25), ("tech", 0.15))],
          "profile": {"used": True, "effect": {}, "without_profile": {}, "divergence": None},
          "idle": {"newest_ts": 3_000, "vector_ts": 3_000},
          "evolution": {"ts": [], "series": {"books": [], "sports": [], "tech": [], "travel": []}, "events": []}}
    page = pages.user_page("u1", dict(summary(), events=0), {"ts": 3_000, "drift": 0.25}, ex)
    top = re.findall(r'<tr><td>([a-z]+)</td><td class="num">([0-9.]+)%', page)
    assert top == [("sports", "50.0"), ("travel", "25.0"), ("tech", "15.0")]
    assert ('<p id="idle">No event in the window: the newest was at 1970-01-01 00:00:03 UTC, and the worker dropped '
            "the window's events once the horizon and the grace had passed") in page
    assert 'class="card"' not in page and "long-term profile" not in page
