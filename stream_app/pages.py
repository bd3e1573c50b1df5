"""The worker's HTML pages, and the small bookkeeping of its overview (pure: no Faust).

* :func:`user_page` (``GET /users/{id}/view``): the user's interest evolution across the window (a
  stacked area chart that inline JavaScript draws as SVG from the JSON embedded in the page), the
  top interests with their change over the window and the latest vector's drift, and the
  explanation of :mod:`stream_app.explain`.
* :func:`overview_page` (``GET /``): the worker's partitions, model version, events in and vectors
  out per second, its scoring passes, what needs attention (the failure metrics that are not 0),
  lag per input topic, dead letters by reason and links to recently active users.

The machines may be offline: no external scripts, fonts, images or styles. Everything that comes
from events (user ids, categories, item ids) is escaped, in HTML and in the embedded JSON.
"""
from __future__ import annotations

import html
import time
from collections import deque
from datetime import datetime, timezone
from urllib.parse import quote

import orjson

CHART_CATEGORIES = 6  # categories drawn in the chart (the rest stacked as "other")
RATE_WINDOW_S = 60.0  # events/s over about the last minute
EXPLAIN_LIMIT = 5


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def embed_json(value) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>``, no comment openers)."""
    return (orjson.dumps(value).decode()
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def iso(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "-"
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(ms: int) -> str:
    """A short human form of an event-time age: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    s = ms // 1000
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}{'es' if word.endswith(('ch', 'ss')) else 's'}"


# A browser resolves "." and ".." path segments, escaped as %2E too (the WHATWG URL standard): a link
# to /users/./explain opened the user "explain", and /users/../view went to /view. No path reaches
# these users from a browser, so their pages link nowhere (curl --path-as-is asks for them).
UNLINKABLE = {".", ".."}
UNLINKABLE_TITLE = "no link: a browser resolves . and .. in a path (curl --path-as-is asks for them)"


def user_url(user_id: str, page: str | None = "view") -> str | None:
    """The path of a user's ``page`` (None: the user's state), or None for a user no link can reach."""
    if user_id in UNLINKABLE:
        return None
    return f"/users/{quote(user_id, safe='')}" + (f"/{page}" if page else "")


def user_link(user_id: str, page: str | None, text: str) -> str:
    """``text`` linked to a user's ``page``; plain text, with the reason as its title, where no link
    can reach the user."""
    url = user_url(user_id, page)
    if url is None:
        return f'<span title="{esc(UNLINKABLE_TITLE)}">{esc(text)}</span>'
    return f'<a href="{esc(url)}">{esc(text)}</a>'


# every page's head: UTF-8, no favicon request, and laid out at a phone's own width (without the
# viewport, a phone laid the unknown user's page out 980 px wide and shrank its text to 40 %)
HEAD = ('<meta charset="utf-8"><link rel="icon" href="data:,">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">')

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1040px;
padding:16px 24px;color:#1d232a;background:#fbfbfc;overflow-wrap:break-word}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #dde1e6;
padding-bottom:4px}nav a,a{color:#1f5fbf;text-decoration:none}a:hover{text-decoration:underline}
.meta{color:#59636e;margin:0 0 8px}table{border-collapse:collapse;margin:4px 0}
td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}th{color:#59636e;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:10px;background:#4e79a7;vertical-align:middle;border-radius:2px}
.up{color:#1b7f3b}.down{color:#b3261e}.muted{color:#7a838c}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:8px 24px}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:8px 12px}
.card h3{font-size:15px;margin:2px 0 6px}ul.events{list-style:none;padding:0;margin:0 0 6px}
ul.events li{padding:1px 0}
#chart svg{display:block;box-sizing:border-box;background:#fff;border:1px solid #e3e6ea;border-radius:6px}
#legend{list-style:none;padding:0;margin:6px 0;display:flex;flex-wrap:wrap;gap:4px 16px}
#legend li span{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px;border-radius:2px}
#tip{min-height:1.45em;color:#59636e}#legend li,#top td:first-child,#lag td:first-child{overflow-wrap:anywhere}
#summary th{white-space:nowrap}ul#attention{margin:0;padding-left:18px}#attention li{overflow-wrap:anywhere}
"""

# Draws the stacked area chart from the embedded JSON: one point after each moment of the window,
# the CHART_CATEGORIES categories that reached the highest share stacked, the rest as "other".
CHART_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("evolution-data").textContent);
  var box = document.getElementById("chart"), legend = document.getElementById("legend");
  var tip = document.getElementById("tip");
  var NS = "http://www.w3.org/2000/svg";
  var n = data.ts.length;
  if (n === 0) { box.textContent = "No events in the window: nothing to draw."; return; }
  var colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"];
  var layers = data.shown.map(function (c, i) {
    return {name: c, color: colors[i % colors.length], v: data.series[c]};
  });
  var other = [];
  for (var k = 0; k < n; k++) {
    var s = 0;
    for (var i = 0; i < layers.length; i++) s += layers[i].v[k];
    other.push(Math.max(0, 1 - s));
  }
  layers.push({name: "other", color: "#c9ced4", v: other});
  // drawn at the width the page gives it (less its 1 px border), 1 unit to 1 px: scaled from a fixed
  // 960, its 11 px labels were 4 px high on a phone
  var W = Math.max(240, (box.clientWidth || 962) - 2), H = Math.round(Math.min(300, Math.max(200, 0.3 * W)));
  var L = 40, R = 12, T = 10, B = 30;
  function x(k) { return n === 1 ? L + (W - L - R) / 2 : L + k * (W - L - R) / (n - 1); }
  function y(p) { return T + (1 - p) * (H - T - B); }
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var a in attrs) e.setAttribute(a, attrs[a]);
    if (parent) parent.appendChild(e);
    return e;
  }
  var svg = el("svg", {viewBox: "0 0 " + W + " " + H, width: "100%", role: "img",
                       "aria-label": "interest evolution across the window"}, null);
  // the points drawn: one per moment; a single moment is drawn as a flat band across the chart
  var xs = [], at = [];
  if (n === 1) { xs = [L, W - R]; at = [0, 0]; }
  else for (var k = 0; k < n; k++) { xs.push(x(k)); at.push(k); }
  var base = xs.map(function () { return 0; });
  layers.forEach(function (layer) {
    var top = base.map(function (b, j) { return b + layer.v[at[j]]; });
    var d = "";
    for (var j = 0; j < xs.length; j++) d += (j ? "L" : "M") + xs[j].toFixed(1) + "," + y(top[j]).toFixed(1);
    for (var j = xs.length - 1; j >= 0; j--) d += "L" + xs[j].toFixed(1) + "," + y(base[j]).toFixed(1);
    var path = el("path", {d: d + "Z", fill: layer.color, stroke: "#fff", "stroke-width": "0.5"}, svg);
    el("title", {}, path).textContent = layer.name;
    base = top;
    var li = document.createElement("li");
    var sw = document.createElement("span");
    sw.style.background = layer.color;
    li.appendChild(sw);
    li.appendChild(document.createTextNode(layer.name));
    legend.appendChild(li);
  });
  [0, 0.25, 0.5, 0.75, 1].forEach(function (p) {
    el("line", {x1: L, x2: W - R, y1: y(p), y2: y(p), stroke: "#0002"}, svg);
    var label = el("text", {x: L - 6, y: y(p) + 4, "text-anchor": "end", "font-size": "11", fill: "#59636e"}, svg);
    label.textContent = p.toFixed(2);
  });
  // a tick every 90 px or more (6 at most), each its time, and its date (UTC, as the rest of the page)
  // where the date changes: a window across midnight read "19:37 ... 03:16 ... 17:49", time backwards
  // to the second when two ticks fall in one minute (a window of seconds read "10:34" five times)
  var ticks = Math.min(n, 6, Math.max(2, Math.floor((W - L - R) / 90))), day = null, ks = [], upto = 16;
  for (var t = 0; t < ticks; t++) ks.push(ticks === 1 ? 0 : Math.round(t * (n - 1) / (ticks - 1)));
  var minute = function (k) { return new Date(data.ts[k]).toISOString().slice(0, 16); };
  ks.forEach(function (k, t) { if (t && minute(k) === minute(ks[t - 1])) upto = 19; });
  for (var t = 0; t < ticks; t++) {
    var k = ks[t];
    var iso = new Date(data.ts[k]).toISOString(), when = iso.slice(11, upto);
    if (iso.slice(5, 10) !== day) { day = iso.slice(5, 10); when = day + " " + when; }
    var anchor = ticks > 1 && t === 0 ? "start" : ticks > 1 && t === ticks - 1 ? "end" : "middle";
    el("text", {x: x(k), y: H - 10, "text-anchor": anchor, "font-size": "11", fill: "#59636e"}, svg).textContent = when;
  }
  var cursor = el("line", {x1: 0, x2: 0, y1: T, y2: H - B, stroke: "#1d232a", "stroke-width": "1",
                           visibility: "hidden"}, svg);
  svg.addEventListener("mousemove", function (ev) {
    var r = svg.getBoundingClientRect();
    var px = (ev.clientX - r.left) * W / r.width;
    var k = n === 1 ? 0 : Math.max(0, Math.min(n - 1, Math.round((px - L) * (n - 1) / (W - L - R))));
    cursor.setAttribute("x1", x(k)); cursor.setAttribute("x2", x(k)); cursor.setAttribute("visibility", "visible");
    var e = data.events[k];
    var what = e.type + (e.category ? " " + e.category : "");
    var parts = layers.map(function (l) { return l.name + " " + (100 * l.v[k]).toFixed(1) + "%"; });
    var at = new Date(data.ts[k]).toISOString().replace("T", " ").slice(0, 19);
    tip.textContent = at + " after " + what + ": " + parts.join(", ");
  });
  svg.addEventListener("mouseleave", function () {
    cursor.setAttribute("visibility", "hidden"); tip.textContent = "";
  });
  box.appendChild(svg);
  box.setAttribute("data-drawn", String(layers.length));
})();
"""


def chart_categories(series: dict[str, list[float]], top: list[str], n: int = CHART_CATEGORIES) -> list[str]:
    """The categories the chart stacks: the current top ones first, then those that reached the
    highest share at some point, ``n`` at most (ties by name)."""
    rest = sorted((c for c in series if c not in top), key=lambda c: (-max(series[c], default=0.0), c))
    return (list(top) + rest)[:n]


def _signed(x: float) -> str:
    cls = "up" if x > 0 else "down" if x < 0 else "muted"
    return f'<span class="{cls}">{x:+.4f}</span>'


def _event_line(e: dict) -> str:
    what = f"<b>{esc(e['type'])}</b>"
    if e["type"] != "search":
        what += f" {esc(e.get('category'))} <span class=\"muted\">{esc(e.get('item'))}</span>"
    return (f"<li>{_signed(e['effect'])} {what} <span class=\"muted\">· {age(e['age_ms'])} before the newest"
            f"</span></li>")


def user_page(user_id: str, summary: dict, vector: dict | None, explanation: dict) -> str:
    """The page of ``GET /users/{id}/view``."""
    ex = explanation
    evo = ex.get("evolution") or {"ts": [], "series": {c: [] for c in ex["interests"]}, "events": []}
    shown = chart_categories(evo["series"], ex["top"])
    chart = {"ts": evo["ts"], "events": evo["events"], "shown": shown,
             "series": {c: evo["series"][c] for c in shown}}
    first = {c: (v[0] if v else None) for c, v in evo["series"].items()}

    rows = []
    for c in ex["top"]:
        p = ex["interests"][c]
        change = "" if first.get(c) is None else _signed(p - first[c])
        rows.append(f'<tr><td>{esc(c)}</td><td class="num">{100 * p:.1f}%</td>'
                    f'<td><span class="bar" style="width:{max(1, round(200 * p))}px"></span></td>'
                    f'<td class="num">{change}</td></tr>')
    if vector:
        drift = (f"Latest published vector: {iso(vector.get('ts'))}, drift {vector.get('drift', 0):.4f} "
                 "(Jensen-Shannon divergence to the user's vector before it; 0 for a first vector).")
    else:
        drift = "No vector published yet."

    cards = []
    for cat in ex["categories"]:
        raised = "".join(_event_line(e) for e in cat["raised"][:EXPLAIN_LIMIT]) or '<li class="muted">none</li>'
        lowered = "".join(_event_line(e) for e in cat["lowered"][:EXPLAIN_LIMIT]) or '<li class="muted">none</li>'
        cards.append(f'<div class="card"><h3>{esc(cat["category"])} · {100 * cat["p"]:.1f}%</h3>'
                     f'<div class="muted">raised it most</div><ul class="events">{raised}</ul>'
                     f'<div class="muted">lowered it most</div><ul class="events">{lowered}</ul></div>')
    no_effect = ""
    if ex["events"] and not any(cat["raised"] or cat["lowered"] for cat in ex["categories"]):
        # every effect exactly 0 (the lists hold events with an effect), while the chart may move
        no_effect = ('<p class="meta" id="no-effect">No single event moves these shares: without any '
                     'one of them the model reads the same input. It reads the newest events that fit its '
                     'tokens, and without one of them an older event that encodes alike (a repeated '
                     'search) takes its place. So the events can move the chart together while none '
                     'moves it alone.</p>')
    prof = ex["profile"]
    if ex.get("idle"):  # stream_app.explain.idle: the served vector, from events no longer held
        cards = []
        profile = (f'<p id="idle">No event in the window: the newest was at {iso(ex["idle"]["newest_ts"])}, and '
                   "the worker dropped the window's events once the horizon and the grace had passed "
                   "(INTEREST_HORIZON_S, INTEREST_GRACE_S). The top interests above are the latest published "
                   f"vector's ({iso(ex['idle']['vector_ts'])}), which re-ranking uses, computed from those events; "
                   "the user's next event starts a new window.</p>")
    elif prof["used"]:
        parts = ", ".join(f"{esc(c)} {_signed(v)}" for c, v in prof["effect"].items())
        profile = (f"<p>The long-term profile (what the window has forgotten) moved the top interests: {parts} "
                   f"(divergence with and without it: {prof['divergence']:.4f}).</p>")
    else:
        profile = "<p class=\"muted\">This model reads no long-term profile.</p>"
    counts = summary["counts"]
    return f"""<!doctype html>
<html lang="en"><head>{HEAD}
<title>{esc(user_id)} · interest-stream</title><style>{STYLE}</style></head>
<body>
<nav><a href="/">interest-stream worker</a> · {user_link(user_id, 'explain', 'explain (JSON)')}
· {user_link(user_id, None, 'state (JSON)')}</nav>
<h1>User <span id="user-id">{esc(user_id)}</span></h1>
<p class="meta">{plural(summary['events'], 'event')} in the window ({plural(counts['click'], 'click')},
{plural(counts['browse'], 'browse')}, {plural(counts['search'], 'search')}), newest {iso(summary['newest_ts'])};
model {esc(ex['model_version'])}</p>
<h2>Interest evolution across the window</h2>
<p class="meta">The vector after each event of the window (the {plural(ex['events'], 'event')} the state keeps in full;
events at the same time count as one), recomputed from the user's state. The events are evenly
spaced, whatever the time between them; the labels give their times.</p>
<div id="chart"></div><ul id="legend"></ul><div id="tip"></div>
<h2>Top interests now</h2>
<table id="top"><tr><th>category</th><th class="num">share</th><th></th><th class="num">change over the window</th></tr>
{''.join(rows)}</table>
<p class="meta">{drift}</p>
<h2>Why</h2>
<p class="meta">Leave-one-out: each event's effect is the share now minus the share had the event not
happened (removed from the window and from the profile). Searches are shown without their text.</p>
<div class="cols" id="explanation">{''.join(cards)}</div>{no_effect}
{profile}
<script type="application/json" id="evolution-data">{embed_json(chart)}</script>
<script>{CHART_JS}</script>
</body></html>
"""


def missing_user_page(user_id: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head>{HEAD}<title>{esc(user_id)} (unknown user) · interest-stream</title><style>{STYLE}</style></head>
<body><nav><a href="/">interest-stream worker</a></nav>
<h1>Unknown user <span id="user-id">{esc(user_id)}</span></h1>
<p>No state for this user: never seen, forgotten, or idle longer than the profile retention.</p>
</body></html>
"""


# --- the overview ----------------------------------------------------------------------------
OUTCOMES = ("accepted", "duplicate", "dead_letter")


def counters(registry) -> dict[str, float]:
    """Input messages so far by outcome (``interest_events_total``), and ``vectors``: the vectors
    published (``interest_scored_users_total``)."""
    out = {o: registry.get_sample_value("interest_events_total", {"outcome": o}) or 0.0 for o in OUTCOMES}
    out["vectors"] = registry.get_sample_value("interest_scored_users_total") or 0.0
    return out


def scoring_passes(registry) -> tuple[int, float]:
    """(scoring passes so far, their mean duration in seconds; 0.0 before any), from the histogram
    ``interest_scoring_pass_seconds``."""
    n = registry.get_sample_value("interest_scoring_pass_seconds_count") or 0.0
    total = registry.get_sample_value("interest_scoring_pass_seconds_sum") or 0.0
    return int(n), (total / n if n else 0.0)


# The metrics whose value is 0 while all is well, each with what a value above 0 means (the README's
# "What to watch", which says what to do). The overview lists those that are not 0. "now": a gauge, 1
# while it lasts; "since start": a counter.
ATTENTION = (
    ("interest_ingest_stalled", "now",
     "reading has stopped: the changelog's refusals filled the state cache (the input waits in Kafka)"),
    ("interest_changelog_failures_total", "since start",
     "flushes the changelog refused: their offsets stay uncommitted until a flush is taken"),
    ("interest_dead_letters_resent_total", "since start",
     "dead letters sent again after the dead-letter topic refused them: their offsets stay uncommitted "
     "until they are delivered"),
    ("interest_vectors_failed_total", "since start",
     "vectors the output topic refused: their users are scored again"),
    ("interest_tombstones_failed_total", "since start",
     "tombstones of forgotten users the output topic refused: forget those users again once it takes them"),
    ("interest_state_rows_trimmed_total", "since start",
     "oldest rows dropped from users past INTEREST_MAX_STATE_BYTES (the log names the users)"),
    ("interest_input_running_back_total", "since start",
     "input records stamped older than one before them in their partition: a producer sends out of ts "
     "order, and those users' older events may be late"),
    ("interest_model_refused_total", "since start", "model pairs refused at load: the model before keeps serving"),
)


def attention(registry) -> list[tuple[str, float, str, str]]:
    """``(metric, value, "now" or "since start", meaning)`` of each :data:`ATTENTION` metric that is
    not 0, in that order; a metric with labels (the running-back count, by topic) summed over them."""
    values = {name: 0.0 for name, _, _ in ATTENTION}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
    return [(name, values[name], kind, meaning) for name, kind, meaning in ATTENTION if values[name]]


def lag_by_topic(lag) -> list[tuple[str, int, int, list[tuple[int, int]]]]:
    """Per input topic, by name: ``(topic, partitions, their total lag, [(partition, lag)] of those
    behind, most behind first)``, from ``(topic, partition, lag)`` triples."""
    topics: dict[str, list[tuple[int, int]]] = {}
    for topic, partition, n in lag:
        topics.setdefault(topic, []).append((partition, n))
    out = []
    for topic, ps in sorted(topics.items()):
        behind = sorted(((p, n) for p, n in ps if n > 0), key=lambda pn: (-pn[1], pn[0]))
        out.append((topic, len(ps), sum(n for _, n in ps), behind))
    return out


def dead_letters(registry) -> dict[str, float]:
    """Dead letters so far by reason (``interest_dead_letters_total``)."""
    out = {}
    for metric in registry.collect():
        if metric.name == "interest_dead_letters":
            for s in metric.samples:
                if s.name == "interest_dead_letters_total":
                    out[s.labels["reason"]] = s.value
    return out


class Rates:
    """Samples of the event counters (kept on the app, about a minute of them) and rates from them."""

    def __init__(self, window_s: float = RATE_WINDOW_S, keep: int = 64) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, dict]] = deque(maxlen=keep)

    def add(self, t: float, counts: dict) -> None:
        self.samples.append((t, dict(counts)))

    def per_second(self, now: float, counts: dict) -> dict | None:
        """Per outcome, messages per second since the oldest sample at most ``window_s`` old (the
        newest sample when all are older; None before any)."""
        if not self.samples:
            return None
        t0, c0 = self.samples[-1]
        for t, c in self.samples:
            if now - t <= self.window_s:
                t0, c0 = t, c
                break
        if now - t0 <= 0:
            return None
        return {o: (counts.get(o, 0.0) - c0.get(o, 0.0)) / (now - t0) for o in counts} | {"over_s": now - t0}


def recent_users(entries, n: int, scan: int = 2000) -> list[tuple[str, int, int]]:
    """``(user id, newest ts, worker-clock ms of the last accepted event)`` of the ``n`` users with the
    latest accepted events among the ``scan`` most recently used cached states (the cache's
    :class:`collections.OrderedDict`, least recently used first: every accepted event moves its user
    to the end)."""
    found = []
    for i, key in enumerate(reversed(entries)):
        if i >= scan:
            break
        e = entries[key]
        st = e.state
        if st is None or not st.get("ev"):
            continue
        found.append((key.decode(errors="replace"), st["newest"], st["seen"]))
    found.sort(key=lambda u: (-u[2], -u[1], u[0]))
    return found[:n]


LAG_LISTED = 6  # partitions behind named per topic on the overview (the rest counted)


def _lag_row(topic: str, partitions: int, total: int, behind: list[tuple[int, int]]) -> str:
    listed = " · ".join(f"p{p}: {n:,}" for p, n in behind[:LAG_LISTED])
    if len(behind) > LAG_LISTED:
        listed += f" · {len(behind) - LAG_LISTED} more"
    where = listed or '<span class="muted">caught up</span>'
    return (f'<tr><td>{esc(topic)}</td><td class="num">{partitions}</td><td class="num">{total:,}</td>'
            f"<td>{where}</td></tr>")


def overview_page(info: dict) -> str:
    """The page of ``GET /``."""
    rates = info.get("rates")
    if rates:
        over = f"over the last {rates['over_s']:.0f} s"
        rate_text = (f"{rates['accepted']:.1f} events/s accepted, {rates['duplicate']:.1f} duplicates/s, "
                     f"{rates['dead_letter']:.1f} dead letters/s ({over})")
        vector_rate = f"{rates['vectors']:.1f} vectors/s published ({over})"
    else:
        rate_text = vector_rate = "measuring (the counters are sampled every few seconds)"
    totals = info["totals"]
    since_start = (f"{int(totals['accepted']):,} accepted, {plural(int(totals['duplicate']), 'duplicate')}, "
                   f"{plural(int(totals['dead_letter']), 'dead letter')}; {plural(int(totals['vectors']), 'vector')} "
                   "published")
    passes, pass_s = info["scoring"]
    scoring = (f"every {info['score_interval_s']:g} s for the users with new events: {plural(passes, 'pass')} "
               f"so far" + (f", {pass_s:.2f} s on average" if passes else ""))
    warnings = "".join(
        f'<li><b>{"now" if kind == "now" else f"{int(value):,}"}</b> {esc(meaning)} '
        f'<span class="muted">({esc(name)})</span></li>'
        for name, value, kind, meaning in info["attention"])
    attention = (f'<ul id="attention">{warnings}</ul>' if warnings
                 else '<span id="attention" class="muted">nothing since start</span>')
    lag_rows = "".join(_lag_row(*row) for row in lag_by_topic(info["lag"])) or \
        '<tr><td colspan="4" class="muted">none known yet</td></tr>'
    dlq = info["dead_letters"]
    dlq_rows = "".join(f'<tr><td>{esc(r)}</td><td class="num">{int(v)}</td></tr>'
                       for r, v in sorted(dlq.items(), key=lambda kv: (-kv[1], kv[0])))
    now_ms = int(time.time() * 1000)
    users = "".join(
        f'<li>{user_link(u, "view", u)} <span class="muted">· newest event {iso(newest)}, '
        f'arrived {age(max(0, now_ms - seen))} ago · {user_link(u, "explain", "explain")}</span></li>'
        for u, newest, seen in info["recent_users"]) or '<li class="muted">no user with events in memory yet</li>'
    parts = ", ".join(map(str, info["partitions"])) or "none"
    return f"""<!doctype html>
<html lang="en"><head>{HEAD}
<title>interest-stream worker</title><style>{STYLE}</style></head>
<body>
<h1>interest-stream worker</h1>
<p class="meta">{esc(info['worker'])} · {'ready' if info['ready'] else 'not ready (starting or rebalancing)'}
· <a href="/metrics">metrics</a> · <a href="/health">health</a></p>
<table id="summary">
<tr><th>model version</th><td id="model-version">{esc(info['model_version'])}</td></tr>
<tr><th>partitions owned</th><td id="partitions">{parts}</td></tr>
<tr><th>events in</th><td id="rates">{rate_text}</td></tr>
<tr><th>vectors out</th><td id="vector-rate">{vector_rate}</td></tr>
<tr><th>since start</th><td id="totals">{since_start}</td></tr>
<tr><th>scoring</th><td id="scoring">{scoring}</td></tr>
<tr><th>users in memory</th><td>{info['cached_users']}</td></tr>
<tr><th>needs attention</th><td>{attention}</td></tr>
</table>
<h2>Consumer lag</h2>
<table id="lag"><tr><th>input topic</th><th class="num">partitions owned</th><th class="num">lag</th>
<th>partitions behind</th></tr>
{lag_rows}</table>
<div class="cols">
<div><h2>Recently active users</h2><ul id="recent-users">{users}</ul></div>
<div><h2>Dead letters by reason</h2><table id="dead-letters"><tr><th>reason</th><th class="num">count</th></tr>
{dlq_rows}</table></div>
</div>
</body></html>
"""
