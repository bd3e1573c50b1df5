"""Public datasets as event logs in the contract's schema (one JSON object per line, sorted by ts).

MovieLens ``ml-latest-small`` (``load movielens DIR``; DIR holds ratings.csv, movies.csv, tags.csv):
* every rating is one ``click``: ``event_id`` ``"r-<userId>-<movieId>"``, ``user_id`` the userId as
  a string, ``ts`` = timestamp * 1000, ``item_id`` the movieId, ``category`` the movie's FIRST
  listed genre (``"(no genres listed)"`` kept as is for the 34 movies without one); extra fields
  ``genres`` (all genres, a list) and ``rating`` (the stars);
* every tag application is one ``search`` whose ``query`` is the tag text (trimmed, cut to 512
  characters; empty tags skipped): ``event_id`` ``"t-<userId>-<movieId>-<n>"`` (n counts that
  user's tags on that movie in file order), extra field ``movie_id``;
* ratings of movies missing from movies.csv get the category ``"(no genres listed)"``.

REES46 e-commerce sample (``load rees46 FILE``, the CSV of ``2019-Oct.csv``'s format):
* ``view`` -> ``browse``; ``cart`` and ``purchase`` -> ``click``; ``remove_from_cart`` (and any
  other type) is skipped and counted;
* ``category`` = ``category_code`` (e.g. ``electronics.smartphone``); rows without a
  category_code (upstream leaves it empty for accessories) get ``"category_id:<category_id>"``
  so no event is dropped (rare ones become the unknown-category token of the encoding);
* ``ts`` = ``event_time`` (``YYYY-MM-DD hh:mm:ss UTC``) as epoch ms; ``user_id`` and ``item_id``
  (product_id) as strings; ``event_id`` ``"e-"`` + the first 16 hex digits of the SHA-1 of the raw
  CSV line, so an exact duplicate row is the same event (the window counts it once); extra fields
  ``event_type`` (the upstream type), ``brand``, ``price``, ``session``;
* no dwell times and no searches exist in this data.

The Complete Journey (``load completejourney DIR``; DIR holds ``transactions.csv[.gz]`` and
``products.csv[.gz]``, see ``../shared/data/completejourney/SOURCE.md``):
* every purchase line is one ``click``: ``user_id`` the household_id, ``item_id`` the product_id,
  ``ts`` = ``transaction_timestamp`` (``YYYY-MM-DD hh:mm:ss``, read as UTC) as epoch ms,
  ``event_id`` ``"cj-<basket_id>-<product_id>"`` (a repeated product line of one basket, which
  the shared half never has, gets ``-<n>`` appended: identical lines are interchangeable, so
  their numbering cannot matter);
* ``category``: the product's ``product_category`` when it is one of :data:`CJ_CATEGORIES` (the 30
  most frequent by lines in the shared half, 48 % of its lines; a fixed list, so the held-back
  half loads to the same names and a model trained on one half reads the other), or with
  ``top=N`` one of the N most frequent of the file itself (ties by name); otherwise
  ``"OTHER <department>"`` (``"OTHER"`` for a product with no department
  or missing from products.csv). Why the department and not a single ``"OTHER"``: the remainder
  is half of all lines, and one catch-all would sit in every household's top 3; its department
  (produce, drug store, the rest of grocery) still says something about the household;
* extra fields ``basket_id``, ``quantity``, ``department``, ``product_category`` (the original,
  empty when missing).
* A basket's lines share one timestamp. The order of lines within a basket therefore carries no
  meaning, and nothing downstream may depend on it: the log is sorted by (ts, event_id), cuts
  never fall between two events of one timestamp (:mod:`models.data`), and time and basket
  targets (``target="time"`` / ``"next_baskets"``) take whole baskets.

All three sort by (ts, event_id), and every string fits the contract's length limits (ids 1-128,
query 1-512 characters).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

NO_GENRE = "(no genres listed)"


def _write(events: list[dict], out) -> None:
    """The log, written beside ``out`` (the file a link names) and moved over it once whole: a
    failure leaves ``out`` as it was. A device or a pipe (``/dev/stdout``) is written in place."""
    import orjson

    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    direct = os.path.exists(out) and not os.path.isfile(out)  # (both follow links: /dev/stdout is one)
    target = str(out) if direct else os.path.realpath(out)
    tmp = target if direct else f"{target}.part"
    try:
        with open(tmp, "wb") as f:
            for e in events:
                f.write(orjson.dumps(e) + b"\n")
        if not direct:
            os.replace(tmp, target)
    except BaseException:
        if not direct:
            Path(tmp).unlink(missing_ok=True)
        raise


def _movielens_rows(f, path, need: tuple[str, ...]):
    """``csv.DictReader`` over a MovieLens file, or a ``ValueError`` naming the columns it lacks."""
    reader = csv.DictReader(f)
    if not set(need) <= set(reader.fieldnames or ()):
        raise ValueError(f"{path}: has columns {reader.fieldnames}, expected {', '.join(need)} (MovieLens)")
    return reader


def movie_genres(path) -> dict[str, list[str]]:
    """Per film id of MovieLens' ``movies.csv``, its genres in the file's order (:data:`NO_GENRE`
    when it lists none)."""
    genres: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in _movielens_rows(f, path, ("movieId", "genres")):
            genres[row["movieId"]] = [g for g in row["genres"].split("|") if g] or [NO_GENRE]
    return genres


def movielens_events(data_dir) -> tuple[list[dict], dict]:
    d = Path(data_dir)
    for name in ("ratings.csv", "movies.csv"):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d}: no {name} (expected MovieLens ml-latest-small)")
    genres = movie_genres(d / "movies.csv")
    events: list[dict] = []
    stats = {"ratings": 0, "tags": 0, "tags_skipped_empty": 0, "movies_without_genre_row": 0}
    with open(d / "ratings.csv", newline="", encoding="utf-8") as f:
        for row in _movielens_rows(f, d / "ratings.csv", ("userId", "movieId", "rating", "timestamp")):
            g = genres.get(row["movieId"])
            if g is None:
                stats["movies_without_genre_row"] += 1
                g = [NO_GENRE]
            events.append({
                "event_id": f"r-{row['userId']}-{row['movieId']}", "user_id": row["userId"],
                "type": "click", "ts": int(row["timestamp"]) * 1000, "item_id": row["movieId"],
                "category": g[0][:128], "genres": g, "rating": float(row["rating"]),
            })
            stats["ratings"] += 1
    if (d / "tags.csv").exists():
        seen: dict[tuple[str, str], int] = {}
        with open(d / "tags.csv", newline="", encoding="utf-8") as f:
            for row in _movielens_rows(f, d / "tags.csv", ("userId", "movieId", "tag", "timestamp")):
                text = (row["tag"] or "").strip()[:512]
                if not text:
                    stats["tags_skipped_empty"] += 1
                    continue
                key = (row["userId"], row["movieId"])
                seen[key] = n = seen.get(key, 0) + 1
                events.append({
                    "event_id": f"t-{row['userId']}-{row['movieId']}-{n}", "user_id": row["userId"],
                    "type": "search", "ts": int(row["timestamp"]) * 1000, "query": text,
                    "movie_id": row["movieId"],
                })
                stats["tags"] += 1
    return events, stats


def rees46_events(path) -> tuple[list[dict], dict]:
    kinds = {"view": "browse", "cart": "click", "purchase": "click"}
    events: list[dict] = []
    stats = {"rows": 0, "skipped_type": 0, "no_category_code": 0}
    with open(path, newline="", encoding="utf-8") as f:
        header = f.readline()
        cols = next(csv.reader([header]))
        need = {"event_time", "event_type", "product_id", "category_id", "category_code", "user_id"}
        if not need <= set(cols):
            raise ValueError(f"{path}: not a REES46 events CSV (columns {cols})")
        for line in f:
            if not line.strip():
                continue
            row = dict(zip(cols, next(csv.reader([line]))))
            stats["rows"] += 1
            kind = kinds.get(row["event_type"])
            if kind is None:
                stats["skipped_type"] += 1
                continue
            cat = row["category_code"]
            if not cat:
                stats["no_category_code"] += 1
                cat = f"category_id:{row['category_id']}"
            when = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
            ev = {
                "event_id": "e-" + hashlib.sha1(line.rstrip("\r\n").encode()).hexdigest()[:16],
                "user_id": row["user_id"], "type": kind, "ts": int(when.timestamp()) * 1000,
                "item_id": row["product_id"], "category": cat[:128], "event_type": row["event_type"],
            }
            if row.get("brand"):
                ev["brand"] = row["brand"]
            if row.get("price"):
                ev["price"] = float(row["price"])
            if row.get("user_session"):
                ev["session"] = row["user_session"]
            events.append(ev)
    return events, stats


def load_movielens(data_dir, out) -> dict:
    events, stats = movielens_events(data_dir)
    _write(events, out)
    return {"events": len(events), **stats}


def load_rees46(path, out) -> dict:
    events, stats = rees46_events(path)
    _write(events, out)
    return {"events": len(events), **stats}


# The 30 most frequent product categories (by purchase lines) of the shared half; the rest become
# "OTHER <department>". Fixed rather than recomputed per file, so both halves map alike.
CJ_CATEGORIES = (
    "BAG SNACKS", "BAKED BREAD/BUNS/ROLLS", "BAKED SWEET GOODS", "BEEF", "CANDY - CHECKLANE", "CANDY - PACKAGED",
    "CANNED JUICES", "CHEESE", "COLD CEREAL", "CONDIMENTS/SAUCES", "CONVENIENT BRKFST/WHLSM SNACKS",
    "COUPON/MISC ITEMS", "CRACKERS/MISC BKD FD", "DELI MEATS", "EGGS", "FLUID MILK PRODUCTS", "FROZEN PIZZA",
    "FRZN MEAT/MEAT DINNERS", "FRZN VEGETABLE/VEG DSH", "HISPANIC", "ICE CREAM/MILK/SHERBTS", "LUNCHMEAT",
    "MEAT - SHELF STABLE", "MILK BY-PRODUCTS", "REFRGRATD JUICES/DRNKS", "SOFT DRINKS", "SOUP", "TROPICAL FRUIT",
    "VEGETABLES - SHELF STABLE", "YOGURT",
)


def _open_csv(d: Path, stem: str):
    """``stem.csv.gz`` or ``stem.csv`` inside ``d`` (text mode)."""
    for name, opener in ((f"{stem}.csv.gz", gzip.open), (f"{stem}.csv", open)):
        if (d / name).exists():
            return opener(d / name, "rt", newline="", encoding="utf-8")
    raise FileNotFoundError(f"{d}: no {stem}.csv.gz or {stem}.csv (expected The Complete Journey)")


def completejourney_events(data_dir, top: int | None = None) -> tuple[list[dict], dict]:
    d = Path(data_dir)
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    products: dict[str, tuple[str, str]] = {}
    with _open_csv(d, "products") as f:
        reader = csv.DictReader(f)
        if not {"product_id", "department", "product_category"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{d}: products has columns {reader.fieldnames}, expected product_id, department, "
                             "product_category")
        for row in reader:
            products[row["product_id"]] = ((row["department"] or "").strip(), (row["product_category"] or "").strip())
    need = {"household_id", "basket_id", "product_id", "transaction_timestamp"}
    lines = []
    with _open_csv(d, "transactions") as f:
        reader = csv.DictReader(f)
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{d}: transactions has columns {reader.fieldnames}, expected {sorted(need)}")
        for row in reader:
            lines.append((row["household_id"], row["basket_id"], row["product_id"], row["transaction_timestamp"],
                          row.get("quantity") or ""))
    if top is None:
        kept = set(CJ_CATEGORIES)
    else:
        freq = Counter(products.get(p, ("", ""))[1] for _, _, p, _, _ in lines)
        freq.pop("", None)
        kept = {c for c, _ in sorted(freq.items(), key=lambda x: (-x[1], x[0]))[:top]}  # ties by name
    stats = {"lines": len(lines), "households": 0, "baskets": 0, "categories_kept": len(kept), "category_list": "fixed" if top is None else f"top {top} of the file",
             "lines_in_kept_categories": 0, "products_missing": 0, "repeated_lines": 0}
    events: list[dict] = []
    seen: dict[str, int] = {}
    stamp_cache: dict[str, int] = {}
    households, baskets = set(), set()
    for hh, basket, product, stamp, qty in lines:
        dept, cat = products.get(product, ("", ""))
        if product not in products:
            stats["products_missing"] += 1
        if cat in kept:
            category = cat
            stats["lines_in_kept_categories"] += 1
        else:
            category = f"OTHER {dept}" if dept else "OTHER"
        ts = stamp_cache.get(stamp)
        if ts is None:
            try:
                when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            except ValueError:
                raise ValueError(f"{d}: bad transaction_timestamp {stamp!r} (expected YYYY-MM-DD hh:mm:ss)") from None
            ts = stamp_cache[stamp] = int(when.timestamp()) * 1000
        eid = f"cj-{basket}-{product}"
        n = seen.get(eid, 0) + 1
        seen[eid] = n
        if n > 1:
            stats["repeated_lines"] += 1
            eid = f"{eid}-{n}"
        ev = {"event_id": eid[:128], "user_id": hh, "type": "click", "ts": ts, "item_id": product,
              "category": category[:128], "basket_id": basket, "department": dept, "product_category": cat}
        try:
            ev["quantity"] = int(qty)
        except ValueError:
            pass
        events.append(ev)
        households.add(hh)
        baskets.add(basket)
    stats["households"], stats["baskets"] = len(households), len(baskets)
    return events, stats


def load_completejourney(data_dir, out, top: int | None = None) -> dict:
    events, stats = completejourney_events(data_dir, top)
    _write(events, out)
    return {"events": len(events), **stats}
