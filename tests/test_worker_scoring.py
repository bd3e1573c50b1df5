"""Live scoring against the real broker: contract-exact vectors, drift, forget, model swap."""
from __future__ import annotations

import os
import re
import shutil
import time

import orjson
import pytest

from conftest import cli, metric_values, wait_for
from kafka_io import read_all, set_max_message_bytes
from interest_core.window import (DEFAULT_PROFILE_RETENTION_S, WindowEvent, profiles_in_order, seconds_to_ms,
                                  window_slice)
from stream_app.model_runtime import LoadedModel
from stream_app.vectors import js_divergence
from test_worker_ingest import HORIZON, T0, event, send

pytestmark = pytest.mark.kafka


def vectors_by_user(env, expect: int, timeout: float = 60) -> dict[str, list[dict]]:
    topic = f"{env['INTEREST_TOPIC_PREFIX']}user-interests"
    recs = read_all(env["KAFKA_BOOTSTRAP_SERVERS"], topic, expect=expect, timeout=timeout)
    out: dict[str, list] = {}
    for r in recs:
        out.setdefault(r.key.decode(), []).append(None if r.value is None else orjson.loads(r.value))
    return out


def scored_vectors(env, events: list[dict], timeout: float = 60) -> dict[str, list[dict]]:
    """Every vector on the output topic, by user, once the newest vector of each user of ``events``
    counts all of that user's events. A batch sent at once may be scored in more than one pass: the
    worker applies what its fetches brought (a topic partition with nothing new fetched counts as
    caught up), so a pass that starts between two fetches scores a user on part of its events."""
    want: dict[str, set] = {}
    for e in events:
        want.setdefault(e["user_id"], set()).add(e["event_id"])

    def got():
        out = vectors_by_user(env, expect=len(want), timeout=5)
        return out if all(out.get(u) and out[u][-1] and out[u][-1]["events"] == len(ids)
                          for u, ids in want.items()) else None

    return wait_for(got, timeout=timeout, what="a vector of all their events for every user")


def check_drifts(vectors: list[dict]) -> None:
    """A user's vectors in order: each counts more events than the one before (none is published
    without new events), the first has no drift, and each later one's is against the one before."""
    assert [v["events"] for v in vectors] == sorted({v["events"] for v in vectors}), vectors
    assert vectors[0]["drift"] == 0.0
    for v1, v2 in zip(vectors, vectors[1:]):
        assert v2["drift"] == pytest.approx(js_divergence(v2["interests"], v1["interests"]), abs=1e-9)


def expected_probs(model: LoadedModel, events: list[dict]):
    """The model's answer on the user's window built from the raw events, independently of the
    worker's state code (contract window: (newest - horizon, newest], last max_events), and on
    the profile folded in ts order as training folds it (the worker folds in arrival order)."""
    uniq = sorted({e["event_id"]: e for e in events}.values(), key=lambda e: (e["ts"], e["event_id"]))
    win = [WindowEvent.from_event(e) for e in uniq]
    newest = max(e["ts"] for e in uniq)
    prof = None
    for prof in profiles_in_order(win, seconds_to_ms(DEFAULT_PROFILE_RETENTION_S)):
        pass
    return model.predict([window_slice(win, newest, HORIZON, 128)], [prof])[0]


def check_vector(v: dict, model: LoadedModel, user: str, events: list[dict]) -> None:
    assert set(v) >= {"schema", "user_id", "ts", "model_version", "interests", "top", "drift", "events"}
    assert v["schema"] == 1 and v["user_id"] == user
    assert v["ts"] == max(e["ts"] for e in events)
    assert v["model_version"] == model.version
    assert list(v["interests"]) == list(model.categories)
    assert abs(sum(v["interests"].values()) - 1) < 1e-4
    ranked = sorted(v["interests"].items(), key=lambda kv: (-kv[1], kv[0]))
    assert v["top"] == [c for c, _ in ranked[:3]]
    assert v["events"] == len({e["event_id"] for e in events})
    probs = expected_probs(model, events)
    for c, p in zip(model.categories, probs / probs.sum()):
        assert v["interests"][c] == pytest.approx(p, abs=1e-5)


def user_events(user: str, n: int, start: int, cats: list[str]) -> list[dict]:
    return [event(start + i, user, ["click", "browse", "search"][i % 3], T0 + (start + i) * 60_000,
                  cats[i % len(cats)]) for i in range(n)]


def test_vectors_are_contract_exact_with_drift(env, workers, tiny_model_dir):
    cli(env, "topics", "create")
    model = LoadedModel.load(tiny_model_dir)
    w = workers()
    users = {f"s{i}": user_events(f"s{i}", 6 + i, 0, ["sports", "tech", "music"][i % 3:] + ["news"])
             for i in range(5)}
    send(env, [e for evs in users.values() for e in evs])
    # the newest vector of each user counts every event (a pass between two fetches may have
    # scored part of them first: one vector per pass with new events, not per batch sent)
    first = scored_vectors(env, [e for evs in users.values() for e in evs])
    assert set(first) == set(users)
    for u, evs in users.items():
        check_vector(first[u][-1], model, u, evs)
        check_drifts(first[u])

    # new events for two users: newer vectors, with drift against the one before
    more = {u: user_events(u, 5, 100, ["travel"]) for u in ("s0", "s3")}
    send(env, [e for evs in more.values() for e in evs])
    second = scored_vectors(env, [e for u, evs in users.items() for e in evs + more.get(u, [])])
    for u in ("s0", "s3"):
        assert len(second[u]) > len(first[u]) and second[u][:len(first[u])] == first[u]
        check_vector(second[u][-1], model, u, users[u] + more[u])
        check_drifts(second[u])
    assert all(second[u] == first[u] for u in ("s1", "s2", "s4"))  # no new events, no new vector
    status, body = w.get("/users/s3")
    assert status == 200 and body["interests"] == second["s3"][-1]

    _, metrics = w.get("/metrics")
    assert f'interest_model_info{{version="{model.version}"}} 1.0' in metrics
    value = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line and line[0] != "#"}
    assert value["interest_scored_users_total"] == sum(map(len, second.values()))  # one per vector published
    assert value["interest_scoring_batches_total"] >= 2


def test_vectors_the_output_topic_refuses_are_published_once_it_takes_them(env, workers, tiny_model_dir):
    """The output topic refuses every record batch (max.message.bytes of 200): the worker logs it
    and its users are pending again, so once the topic takes records their vectors come without a
    new event. Before, the failure was silent and the users went without a vector until their next
    event."""
    model = LoadedModel.load(tiny_model_dir)
    topic = f"{env['INTEREST_TOPIC_PREFIX']}user-interests"
    cli(env, "topics", "create")
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], topic, 200)
    w = workers(INTEREST_SCORE_INTERVAL_S="0.5")
    users = {f"r{i}": user_events(f"r{i}", 4, 0, ["sports", "tech"]) for i in range(2)}
    send(env, [e for evs in users.values() for e in evs])
    wait_for(lambda: sum(metric_values(w, "interest_vectors_failed_total")) >= 4, what="vectors refused twice")
    assert "were not delivered (MessageSizeTooLargeError()); their users are scored again" in w.log(200)
    assert vectors_by_user(env, expect=1, timeout=2) == {}
    set_max_message_bytes(env["KAFKA_BOOTSTRAP_SERVERS"], topic, 1_048_588)
    got = vectors_by_user(env, expect=2)
    assert set(got) == set(users)
    for u, evs in users.items():
        check_vector(got[u][-1], model, u, evs)


def test_a_model_with_an_item_lift_publishes_the_graph_plus_the_lift(env, workers, tmp_path):
    """A model whose encoding lifts travel by 2 in logits for one item: the worker's vector of a user
    whose window holds that item is the graph's answer with the lift added (``p * e^lift``,
    normalised), worked here from the same checkpoint exported without the lift; a user without
    the item gets the graph's answer alone."""
    import numpy as np

    from export.onnx_export import export_checkpoint
    from interest_core.artifacts import ENCODING_FILE
    from interest_core.item_lift import ItemLift
    from tiny_model import build_tiny_checkpoint

    ckpt, _, enc = build_tiny_checkpoint(tmp_path / "ckpt", seed=2, steps=10)[:3]
    export_checkpoint(ckpt, tmp_path / "plain", log=lambda m: None)
    lift = np.zeros(enc.k)
    lift[enc.category_index("travel")] = 2.0
    enc.with_item_lift(ItemLift(enc.categories, 5, {"film-42": lift})).save(ckpt / ENCODING_FILE)
    export_checkpoint(ckpt, tmp_path / "lifted", log=lambda m: None)
    plain, lifted = LoadedModel.load(tmp_path / "plain"), LoadedModel.load(tmp_path / "lifted")
    assert plain.version != lifted.version

    cli(env, "topics", "create")
    workers(INTEREST_MODEL_DIR=str(tmp_path / "lifted"))
    users = {u: user_events(u, 6, 0, ["sports", "tech"]) for u in ("with-item", "without")}
    users["with-item"][3]["item_id"] = "film-42"  # a click among the newest 5 clicks and browses
    send(env, [e for evs in users.values() for e in evs])
    got = scored_vectors(env, [e for evs in users.values() for e in evs])
    for u, evs in users.items():
        v = got[u][-1]  # of all the user's events
        assert {x["model_version"] for x in got[u]} == {lifted.version}
        p = expected_probs(plain, evs)
        if u == "with-item":  # the window's one known item: its lift is the window's
            p = p * np.exp(lift)
        want = p / p.sum()
        assert [v["interests"][c] for c in enc.categories] == pytest.approx(list(want), abs=1e-5)
    travel = enc.category_index("travel")
    assert got["with-item"][-1]["interests"]["travel"] > expected_probs(plain, users["with-item"])[travel] + 0.05


def _events(w, user: str) -> int:
    status, body = w.get(f"/users/{user}")
    return body["events"] if status == 200 else 0


def _settled(w) -> bool:
    """Every owned input partition read to its end and nothing waiting in the aligner."""
    lags = metric_values(w, "interest_consumer_lag{")
    return bool(lags) and not any(lags) and metric_values(w, "interest_align_waiting ") == [0.0]


def test_forget_deletes_state_and_publishes_a_tombstone(env, workers):
    cli(env, "topics", "create")
    w = workers()
    send(env, user_events("gone", 4, 0, ["tech"]) + user_events("kept", 4, 0, ["music"]))
    vectors_by_user(env, expect=2)
    out = cli(env, "forget", "gone", "--timeout", "60").stdout
    tombstone = rf"\(tombstone at {env['INTEREST_TOPIC_PREFIX']}user-interests\[\d+\]@\d+\)"
    assert re.fullmatch(rf"forgotten: gone {tombstone}\n", out), out  # the worker held its state
    assert w.get("/users/gone")[0] == 404
    assert w.get("/users/kept")[0] == 200
    # an id the worker holds no state for (never sent anything, or forgotten already) is forgotten
    # too (exit code 0), and the command says so: before, a mistyped id looked like success
    no_state = ("; the worker held no state for {0} when it applied this request: is the id right? (a request "
                "applied again after a worker restart also finds none)\n")
    for user in ("never-sent", "gone"):
        out = cli(env, "forget", user, "--timeout", "60").stdout
        assert re.fullmatch(rf"forgotten: {user} {tombstone}" + re.escape(no_state.format(user)), out), out
    # stays gone after a restart (changelog tombstones), the other user is intact
    w.kill()
    w.start()
    assert w.get("/users/gone")[0] == 404
    # the events after kept's last flush come again (uncommitted): counted once, when all are read
    wait_for(lambda: _events(w, "kept") >= 4 and _settled(w), timeout=60, what="the redelivered events applied")
    assert _events(w, "kept") == 4
    recs = vectors_by_user(env, expect=3)
    assert recs["gone"][-1] is None


def test_worker_refuses_to_start_without_a_model(env, tmp_path):
    cli(env, "topics", "create")
    proc = cli(dict(env, INTEREST_MODEL_DIR=str(tmp_path / "nope")), "worker", check=False, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nope") in proc.stderr
    proc = cli({k: v for k, v in env.items() if k != "INTEREST_MODEL_DIR"}, "worker", check=False, timeout=60)
    assert "INTEREST_MODEL_DIR is not set" in proc.stderr


def test_model_swap_under_load_and_corrupt_model_refused(env, workers, tiny_model_dir, session_dir, tmp_path):
    from tiny_model import build_tiny_model_dir

    v2_dir = session_dir / "tiny-model-2"
    if not (v2_dir / "model.json").exists():
        build_tiny_model_dir(v2_dir, seed=1)
    m1, m2 = LoadedModel.load(tiny_model_dir), LoadedModel.load(v2_dir)
    assert m1.version != m2.version
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "v1")
    shutil.copytree(v2_dir, root / "v2")
    (root / "v3").mkdir()
    shutil.copy(v2_dir / "model.json", root / "v3" / "model.json")
    (root / "v3" / "model.onnx").write_bytes(os.urandom(4096))  # corrupt graph
    current = root / "current"
    current.symlink_to("v1")

    def repoint(target: str) -> None:
        tmp = root / "current.tmp"
        tmp.symlink_to(target)
        os.replace(tmp, current)  # atomic, as operators do

    cli(env, "topics", "create")
    w = workers(INTEREST_MODEL_DIR=str(current))
    users = [f"m{i}" for i in range(6)]
    rounds = 0

    def produce_round():
        nonlocal rounds
        send(env, [event(1000 * rounds + j, u, "click", T0 + rounds * 60_000 + j, "tech")
                   for u in users for j in range(2)])
        rounds += 1

    def versions_seen():
        got = vectors_by_user(env, expect=0, timeout=2)
        return {v["model_version"] for vs in got.values() for v in vs if v}

    produce_round()
    wait_for(lambda: m1.version in versions_seen(), what="vectors of model v1")
    repoint("v2")
    t_swap = time.monotonic()
    while m2.version not in versions_seen():
        produce_round()
        time.sleep(0.5)
        assert time.monotonic() - t_swap < 20, "v2 not served"
    assert w.get("/health")[1]["model_version"] == m2.version
    repoint("v3")
    time.sleep(3)  # three poll intervals
    produce_round()
    time.sleep(3)
    assert w.get("/health")[1]["model_version"] == m2.version  # the old model keeps serving
    _, metrics = w.get("/metrics")
    assert "interest_model_refused_total 1.0" in metrics
    assert "refused the model" in w.log(200)
    _, overview = w.get("/")  # the overview lists it as the one thing that needs attention
    assert ('<ul id="attention"><li><b>1</b> model pairs refused at load: the model before keeps serving '
            '<span class="muted">(interest_model_refused_total)</span></li></ul>') in overview
    # no gap: every round's events led to a vector for every user
    last_ts = T0 + (rounds - 1) * 60_000 + 1

    def last_round_scored():
        final = vectors_by_user(env, expect=0, timeout=3)
        return final if all(final.get(u) and final[u][-1]["ts"] == last_ts for u in users) else None
    final = wait_for(last_round_scored, timeout=30, what="every user's vector of the last round")
    for u in users:
        assert final[u][-1]["model_version"] == m2.version
