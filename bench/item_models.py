"""Three ways to read the items beyond ``train``'s item-lift table, on MovieLens' backtest folds
(not a test).

    .venv/bin/python bench/item_models.py --workdir DIR [--folds 0,1,2,3] [--epochs 20] [--jobs 2]
        [--ways neighbours,genre_set,next_items]
        [--movies ../shared/data/movielens-latest-small/movies.csv]

On the folds that ``bench/backtest.py --dataset movielens --workdir DIR`` left, read as
``bench/item_lift.py`` reads them (the model is each fold's ``default`` graph without its lift),
each way below is fit on what the fold's training period holds, its settings chosen on validation
on top of the graph with ``train``'s table, fit again on training + validation for test (the
refit, as the model was), and scored on test:

* ``table``: ``train``'s form (:mod:`models.item_lift`: the newest 1, 5 or 20 items, ``m`` and the
  strength chosen on validation): what the other three are compared with;
* ``neighbours``: the table with each item's lift shrunk toward its neighbours' instead of toward
  the prior. An item's neighbours are the 20 items most often rated by the same users (cosine of
  the users x items matrix of the log before the cutoff); their credited targets, weighted by that
  similarity and shrunk by ``m2`` pseudo-cuts of the prior, give the item's own prior. Whether
  the items the log holds but no training cut credits get their neighbours' lift alone is chosen
  on validation too (adding them dilutes the window's mean). It needs nothing the events do not
  carry;
* ``genre_set``: the same with the film's whole genre list (``movies.csv``) in place of the
  neighbours: the items sharing it pool their credited targets. The category is the first genre
  only, and events carry no other attribute (``../shared/CONTRACT.md``: extra fields are ignored),
  so this is what an item attribute would be worth, not a form a worker could serve;
* ``next_items``: a next-items model over item ids (an embedding of every item the log holds, a
  causal 2-layer transformer over a sitting's items, as the window holds them, readout tied to
  the embeddings), trained by self-supervision at every rating before the cutoff to predict each
  of the next 10 items (the target's span). A window's newest position gives a distribution over
  items, and their categories a distribution ``q`` over categories; the prediction is the table's
  plus ``lq * (log((1 - eps) q + eps prior) - log prior)``, ``lq`` and ``eps`` chosen on
  validation, and the epochs too (at most ``--epochs``, five without a better validation KL stop
  it). For test it is trained again on every rating before the test period for that many epochs.

Reported per fold and pooled over folds (every test sample alike): each way's ratio to the fold's
best baseline, its KL difference to ``table`` with the paired bootstrap interval over (fold, user)
pairs, and the same on each user's first test cut. ``--jobs`` folds run at once, each with
``2 / jobs`` torch threads. Prints JSON with the machine and the commit.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backtest import fold_users  # noqa: E402
from common import commit, machine  # noqa: E402
from item_lift import fold_inputs  # noqa: E402
from item_lift_forms import pool  # noqa: E402
from model_eval import first_cut_mask  # noqa: E402
from models.loaders import movie_genres  # noqa: E402
from models.item_lift import LAMBDAS, SHRINK, SLOTS, apply, choose, cut_lifts, fit_table, mean_lift, pruned, window_keys  # noqa: E402

NEIGHBOURS = 20
SHRINK_2 = (10.0, 100.0, 1000.0)  # m2: pseudo-cuts of the prior in an item's own prior
HORIZON = 10  # next items predicted at each position (MovieLens' target: the next 10 ratings)
EPS = (0.05, 0.2, 0.5)
LQ = tuple(round(0.05 * i, 2) for i in range(21))  # next_items' strength, 0 .. 1
PATIENCE = 5
COVER = ("credited", "held")  # which items get a lift: the credited ones, or every item the log holds
WAYS = ("neighbours", "genre_set", "next_items")


def kl(targets, p) -> float:
    from models.evaluate import kl_per_sample

    return float(kl_per_sample(targets, p).mean())


def shrunk_lifts(table, own_prior: dict, prior: np.ndarray, m: float, unseen: set) -> dict:
    """Per item of ``table``: ``log((S + m * own_prior) / (N + m)) - log(prior)``, ``own_prior``
    the prior when the item has none; per item of ``unseen`` with an own prior and no entry in the
    table: ``log(own_prior) - log(prior)``."""
    out = {x: np.log(own_prior[x]) - np.log(prior) for x in unseen if x in own_prior and x not in table.sums}
    for x in table.sums:
        out[x] = np.log((table.sums[x] + m * own_prior.get(x, prior)) / (table.credit[x] + m)) - np.log(prior)
    return out


def neighbour_priors(neighbours: dict, table, prior: np.ndarray, m2: float) -> dict:
    """Per item: its neighbours' credited targets, weighted by similarity, shrunk by ``m2`` pseudo-cuts."""
    out = {}
    for x, nb in neighbours.items():
        s, n = m2 * prior, m2
        for y, w in nb:
            if y in table.sums:
                s, n = s + w * table.sums[y], n + w * table.credit[y]
        out[x] = s / n
    return out


def group_priors(group: dict, keys: list, targets: np.ndarray, prior: np.ndarray, m2: float) -> dict:
    """Per item with a group: the group's credited targets (its items' keys mapped to the group)
    shrunk by ``m2`` pseudo-cuts."""
    g = fit_table([[group.get(x) for x in ks if x in group] for ks in keys], targets)
    mean = {c: (g.sums[c] + m2 * prior) / (g.credit[c] + m2) for c in g.sums}
    return {x: mean[c] for x, c in group.items() if c in mean}


def log_items(ds, cutoff: int, index: dict) -> list[list]:
    """Per user, ``(ts, item, category)`` of the clicks and browses before ``cutoff`` with an item
    and a category the model knows (the events :func:`models.item_lift.window_keys` keys)."""
    return [[(e.ts, e.item, e.category) for e in s.events if e.ts < cutoff and e.type in ("click", "browse")
             and e.item is not None and e.category in index] for s in ds.seqs]


def cosine_neighbours(items_by_user: list[list]) -> dict:
    """Per item, its :data:`NEIGHBOURS` items with the highest cosine over users (rated or not)."""
    items = sorted({x for u in items_by_user for _, x, _ in u})
    ix = {x: i for i, x in enumerate(items)}
    a = np.zeros((len(items_by_user), len(items)), np.float32)
    for u, evs in enumerate(items_by_user):
        a[u, [ix[x] for _, x, _ in evs]] = 1.0
    norm = np.sqrt(a.sum(0))
    out = {}
    for lo in range(0, len(items), 2048):  # (chunk, items) cosines at a time
        c = (a[:, lo:lo + 2048].T @ a) / np.outer(norm[lo:lo + 2048], norm)
        c[np.arange(c.shape[0]), np.arange(lo, lo + c.shape[0])] = 0.0
        top = np.argpartition(-c, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        for r, i in enumerate(range(lo, lo + c.shape[0])):
            out[items[i]] = [(items[j], float(c[r, j])) for j in top[r] if c[r, j] > 0]
    return out


class NextItems:
    """``next_items``' model (module doc): built on the ratings before a cutoff."""

    def __init__(self, items_by_user: list[list], item_category: dict, k: int, index: dict, horizon_ms: int,
                 length: int, dim: int = 64):
        import torch

        items = sorted({x for u in items_by_user for _, x, _ in u})
        self.vocab = {x: i + 2 for i, x in enumerate(items)}  # 0: padding, 1: an item the log did not hold
        self.length = length
        cats = np.zeros((len(items) + 2, k), np.float32)  # (V, k) each item's category
        for x, i in self.vocab.items():
            cats[i, index[item_category[x]]] = 1.0
        self.cats = torch.from_numpy(cats)
        self.x, self.y = self._chunks(items_by_user, horizon_ms)
        torch.manual_seed(0)
        self.net = _net(len(items) + 2, dim, length)

    def _chunks(self, items_by_user, horizon_ms):
        """``(X (C, L), Y (C, L, HORIZON))``: sittings (gaps under the window's horizon) cut into
        chunks of the window's length (a half-chunk stride past the first), and at each position
        the next :data:`HORIZON` items of the user's log before the cutoff (0: none)."""
        import torch

        L, xs, ys = self.length, [], []
        for evs in items_by_user:
            n = len(evs)
            if n < 2:
                continue
            ts = np.array([t for t, _, _ in evs])
            ids = np.array([self.vocab[x] for _, x, _ in evs])
            nxt = np.zeros((n, HORIZON), np.int64)
            for h in range(1, min(HORIZON, n - 1) + 1):
                nxt[: n - h, h - 1] = ids[h:]
            starts = np.r_[0, np.flatnonzero(np.diff(ts) >= horizon_ms) + 1]
            for a, b in zip(starts, np.r_[starts[1:], n]):
                for c0 in (range(a, b - L // 2, L // 2) if b - a > L else [a]):
                    c1 = min(c0 + L, b)
                    x, y = np.zeros(L, np.int64), np.zeros((L, HORIZON), np.int64)
                    x[: c1 - c0], y[: c1 - c0] = ids[c0:c1], nxt[c0:c1]
                    if (y > 0).any():
                        xs.append(x)
                        ys.append(y)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def epoch(self, opt, batch: int = 32) -> float:
        """One pass over the chunks in a seeded order; the mean loss."""
        import torch

        self.net.train()
        total = 0.0
        for s in range(0, len(self.x), batch):
            b = self._order[s:s + batch]
            h = self.net.hidden(self.x[b])  # (B, L, d)
            y = self.y[b]  # (B, L, H)
            rows = (y > 0).any(-1)
            logp = torch.log_softmax(self.net.logits(h[rows]), -1)  # (P, V)
            yy = y[rows]
            found = (yy > 0).float()
            loss = -(logp.gather(1, yy) * found).sum() / found.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        return total / len(self.x)

    def fit_epochs(self, epochs: int, after_each=None) -> list:
        import torch

        opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=0.01)
        g = torch.Generator().manual_seed(0)
        out = []
        for e in range(epochs):
            self._order = torch.randperm(len(self.x), generator=g)
            out.append(self.epoch(opt))
            if after_each is not None and after_each(e + 1, out[-1]):
                break
        return out

    def category_q(self, keys: list[list]) -> np.ndarray:
        """(N, k): per window (its items oldest first) the categories of the items predicted next;
        NaN rows for windows without items."""
        import torch

        L = self.length
        x = np.zeros((len(keys), L), np.int64)
        last = np.full(len(keys), -1)
        for i, ks in enumerate(keys):
            ids = [self.vocab.get(it, 1) for it in ks][-L:]
            x[i, : len(ids)], last[i] = ids, len(ids) - 1
        x, last = torch.from_numpy(x), torch.from_numpy(last)
        out = np.full((len(keys), self.cats.shape[1]), np.nan)
        self.net.eval()
        with torch.no_grad():
            for s in range(0, len(x), 256):
                h = self.net.hidden(x[s:s + 256])
                h = h[torch.arange(h.shape[0]), last[s:s + 256].clamp_min(0)]
                p = torch.softmax(self.net.logits(h), -1)
                p[:, :2] = 0.0
                q = (p @ self.cats).double().numpy()
                q /= np.maximum(q.sum(1, keepdims=True), 1e-12)
                q[last[s:s + 256].numpy() < 0] = np.nan
                out[s:s + 256] = q
        return out


def _net(vocab: int, d: int, length: int):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, d, padding_idx=0)
            self.pos = torch.nn.Embedding(length, d)
            torch.nn.init.normal_(self.emb.weight, std=0.02)
            torch.nn.init.normal_(self.pos.weight, std=0.02)
            with torch.no_grad():
                self.emb.weight[0].zero_()
            layer = torch.nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.2, batch_first=True, norm_first=True)
            self.blocks = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(d)
            self.drop = torch.nn.Dropout(0.2)
            self.bias = torch.nn.Parameter(torch.zeros(vocab))
            self.register_buffer("mask", torch.triu(torch.full((length, length), float("-inf")), 1))

        def hidden(self, x):  # (B, L) item ids -> (B, L, d)
            n = x.shape[1]
            h = self.drop(self.emb(x) + self.pos.weight[None, :n])
            return self.norm(self.blocks(h, mask=self.mask[:n, :n], is_causal=True))

        def logits(self, h):  # (P, d) -> (P, V), the readout tied to the item embeddings
            return h @ self.emb.weight.T + self.bias

    return Net()


def q_term(q: np.ndarray, prior: np.ndarray, eps: float) -> np.ndarray:
    """``log((1 - eps) q + eps prior) - log prior``, 0 where ``q`` is NaN (no item in the window)."""
    none = np.isnan(q).any(1)
    t = np.log((1 - eps) * np.nan_to_num(q) + eps * prior) - np.log(prior)
    t[none] = 0.0
    return t


def one_fold(fold_dir: Path, movies: Path, max_epochs: int, threads: int, ways: tuple = WAYS) -> tuple:
    import torch

    from models.evaluate import kl_per_sample

    torch.set_num_threads(threads)

    t0 = time.time()
    f = fold_inputs(fold_dir, "movielens", "default")
    va, te, k, index = f.va, f.te, f.enc.k, f.index
    pv, pt = f.graph_val.astype(np.float64), f.graph_test.astype(np.float64)
    parts = {"val": ("train", f.tr.targets, f.ds.t1, f.base["prior"]),
             "test": ("joined", f.jtr.targets, f.ds.t2, f.test_base["prior"])}
    out = {"fold": fold_dir.name, "best_baseline": f.base["best"], "test_samples": len(te), "chosen": {}}

    # table: train's form
    best = None
    for slots in SLOTS:
        keys = {n: [window_keys(w, index, slots) for w in ws] for n, ws in f.windows.items()}
        tables = {p: pruned(fit_table(keys[parts[p][0]], parts[p][1])) for p in parts}
        lv = {m: cut_lifts(keys["val"], tables["val"], parts["val"][3], m) for m in SHRINK}
        m, lam, v = choose(pv, va.targets, lv, kl_per_sample)
        if best is None or v < best[3]:
            best = (slots, m, lam, v, keys, tables, lv[m])
    slots, m, lam, v_table, keys, tables, table_val = best
    table_val = lam * table_val
    table_test = lam * cut_lifts(keys["test"], tables["test"], parts["test"][3], m)
    kls = {"best": kl_per_sample(te.targets, f.test_base["test"][f.base["best"]]),
           "graph": kl_per_sample(te.targets, pt), "table": kl_per_sample(te.targets, apply(pt, table_test))}
    out["chosen"]["table"] = {"slots": slots, "m": m, "lambda": lam, "val_kl": round(v_table, 5)}

    # neighbours and genre_set: the table's items shrunk toward an own prior
    by_user = {p: log_items(f.ds, parts[p][2], index) for p in parts}
    held = {p: {x for u in by_user[p] for _, x, _ in u} for p in parts}
    # only what the chosen ways read
    genres = {x: "|".join(g) for x, g in movie_genres(movies).items()} if "genre_set" in ways else {}
    nb = {p: cosine_neighbours(by_user[p]) for p in parts} if "neighbours" in ways else {}

    def own_priors(way: str, p: str, m2: float) -> dict:
        name, targets, _, prior = parts[p]
        if way == "neighbours":
            return neighbour_priors(nb[p], fit_table(keys[name], targets), prior, m2)
        return group_priors({x: genres[x] for x in held[p] if x in genres}, keys[name], targets, prior, m2)

    for way in [w for w in ("neighbours", "genre_set") if w in ways]:
        best = None
        for m2 in SHRINK_2:
            own = own_priors(way, "val", m2)
            for cover in COVER:
                for m_ in SHRINK:
                    lifts = shrunk_lifts(tables["val"], own, parts["val"][3], m_,
                                         held["val"] if cover == "held" else set())
                    lv = np.stack([mean_lift(lifts, ks, k) for ks in keys["val"]])
                    for lam_ in LAMBDAS:
                        v = kl(va.targets, apply(pv, lam_ * lv))
                        if best is None or v < best[4]:
                            best = (m2, cover, m_, lam_, v)
        m2, cover, m_, lam_, v = best
        lifts = shrunk_lifts(tables["test"], own_priors(way, "test", m2), parts["test"][3], m_,
                             held["test"] if cover == "held" else set())
        lt = np.stack([mean_lift(lifts, ks, k) for ks in keys["test"]])
        kls[way] = kl_per_sample(te.targets, apply(pt, lam_ * lt))
        out["chosen"][way] = {"m2": m2, "items_covered": cover, "m": m_, "lambda": lam_, "val_kl": round(v, 5),
                              "items": len(lifts)}
        print(json.dumps({"fold": fold_dir.name, way: out["chosen"][way]}), file=sys.stderr, flush=True)

    if "next_items" not in ways:
        return _fold_end(out, kls, te, t0)

    # next_items
    item_category = {}  # each item's category: its first event's (a film's first genre)
    for u in by_user["test"]:  # every item of either model's log
        for _, x, c in u:
            item_category.setdefault(x, c)
    all_keys = {n: [window_keys(w, index, f.dcfg.max_events) for w in ws] for n, ws in f.windows.items()}
    horizon_ms = int(f.dcfg.horizon_s * 1000)

    def best_q(q: np.ndarray) -> tuple:
        return min(((eps, lq, kl(va.targets, apply(pv, table_val + lq * q_term(q, parts["val"][3], eps))))
                    for eps in EPS for lq in LQ), key=lambda r: r[2])

    model = NextItems(by_user["val"], item_category, k, index, horizon_ms, f.dcfg.max_events)
    track = {"best": (np.inf, None, 0), "epochs": []}

    def after_each(epoch: int, loss: float) -> bool:
        eps, lq, v = best_q(model.category_q(all_keys["val"]))
        track["epochs"].append({"epoch": epoch, "loss": round(loss, 4), "val_kl": round(v, 5), "eps": eps, "lq": lq})
        print(json.dumps({"fold": fold_dir.name, **track["epochs"][-1]}), file=sys.stderr, flush=True)
        if v < track["best"][0]:
            track["best"] = (v, (eps, lq), epoch)
        return epoch - track["best"][2] >= PATIENCE

    t1 = time.time()
    model.fit_epochs(max_epochs, after_each)
    v, (eps, lq), epochs = track["best"]
    test_model = NextItems(by_user["test"], item_category, k, index, horizon_ms, f.dcfg.max_events)
    test_model.fit_epochs(epochs)
    qt = test_model.category_q(all_keys["test"])
    kls["next_items"] = kl_per_sample(te.targets, apply(pt, table_test + lq * q_term(qt, parts["test"][3], eps)))
    out["chosen"]["next_items"] = {"epochs": epochs, "eps": eps, "lq": lq, "val_kl": round(v, 5),
                                   "items": len(model.vocab), "chunks": len(model.x), "by_epoch": track["epochs"],
                                   "seconds": round(time.time() - t1)}
    return _fold_end(out, kls, te, t0)


def _fold_end(out: dict, kls: dict, te, t0: float) -> tuple:
    out["ratio_to_best_baseline"] = {n: round(float(x.mean() / kls["best"].mean()), 4) for n, x in kls.items()
                                     if n != "best"}
    out["seconds"] = round(time.time() - t0)
    return out, kls, te.user, first_cut_mask(te)


@click.command()
@click.option("--workdir", required=True, type=click.Path(exists=True, file_okay=False),
              help="bench/backtest.py --dataset movielens's --workdir")
@click.option("--folds", default="0,1,2,3", show_default=True, help="the folds to run, comma-separated")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1, 200),
              help="next_items' most epochs (validation chooses)")
@click.option("--ways", default=",".join(WAYS), show_default=True, help="the ways to run, comma-separated")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1, 2), help="folds run at once")
@click.option("--movies", default=str(ROOT.parent / "shared/data/movielens-latest-small/movies.csv"),
              show_default=True, type=click.Path(exists=True, dir_okay=False), help="MovieLens' movies.csv (genre_set)")
def main(workdir, folds, epochs, jobs, movies, ways):
    from concurrent.futures import ProcessPoolExecutor

    try:
        wanted = [int(x) for x in folds.split(",")]
    except ValueError:
        raise click.UsageError(f"--folds {folds!r}: expected fold numbers separated by commas") from None
    dirs = [Path(workdir) / f"movielens-fold{i}" for i in wanted]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise click.UsageError(f"no fold directory {', '.join(missing)}; "
                               "run bench/backtest.py --dataset movielens first")
    chosen = tuple(w.strip() for w in ways.split(","))
    if not chosen or set(chosen) - set(WAYS):
        raise click.UsageError(f"--ways {ways!r}: expected some of {', '.join(WAYS)}, separated by commas")
    with ProcessPoolExecutor(jobs) as pool_:
        runs = list(pool_.map(one_fold, dirs, [Path(movies)] * len(dirs), [epochs] * len(dirs),
                              [2 // jobs] * len(dirs), [chosen] * len(dirs)))
    for r in runs:
        print(json.dumps(r[0]), file=sys.stderr, flush=True)
    kls = {n: np.concatenate([r[1][n] for r in runs]) for n in runs[0][1]}
    users = fold_users([{"user": r[2]} for r in runs])
    first = np.concatenate([r[3] for r in runs])
    out = {"benchmark": "reading the items beyond train's table: neighbours, genre lists, a next-items model",
           "machine": machine(), "commit": commit(), "workdir": str(workdir), "ways": list(chosen),
           "max_epochs": epochs,
           "jobs": jobs, "torch_threads_per_fold": 2 // jobs, "folds": [r[0] for r in runs],
           "pooled": {"all": pool(kls, users, "table"),
                      "first_test_cuts": pool({n: v[first] for n, v in kls.items()}, users[first], "table")}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
