"""Public datasets as event logs in the contract's schema (one JSON object per line, sorted by ts).

MovieLens ``ml-latest-small`` (``load movielens DIR``; DIR holds ratings.csv, movies.csv, tags.csv):
* every rating is one ``click``: ``event_id`` ``"r-<userId>-<movieId>"``, ``user_id`` the userId as
  a string, ``ts`` = timestamp * 1000, ``item_id`` the movieId, ``category`` the movie's FIRST
  listed genre (``"(no genres listed)"`` kept as is for the 34 movies without one); extra fields
  ``genres`` (all genres, a list) and ``rating`` (the stars). ``ml-latest-small`` lists most
  films' genres in alphabetical order, so this is mostly the first in the alphabet (Action over
  Thriller; docs/model.md, "Loaders");
* every tag application is one ``search`` whose ``query`` is the tag text (trimmed, cut to 512
  characters; empty tags skipped): ``event_id`` ``"t-<userId>-<movieId>-<n>"`` (n counts that
  user's tags on that movie in file order), extra field ``movie_id``;
* ratings of movies missing from movies.csv get the category ``"(no genres listed)"``.

REES46 e-commerce sample (``load rees46 FILE``, the CSV of ``2019-Oct.csv``'s format, gzipped when
FILE ends in ``.gz``, as the Complete Journey's may be):
* ``view`` -> ``browse``; ``cart`` and ``purchase`` -> ``click``; ``remove_from_cart`` (and any
  other type) is skipped and counted;
* ``category`` = ``category_code`` (e.g. ``electronics.smartphone``); rows without a
  category_code (upstream leaves it empty for accessories) get ``"category_id:<category_id>"``
  so no event is dropped (rare ones become the unknown-category token of the encoding);
* ``ts`` = ``event_time`` (``YYYY-MM-DD hh:mm:ss UTC``) as epoch ms; ``user_id`` and ``item_id``
  (product_id) as strings; ``event_id`` ``"e-"`` + the first 16 hex digits of the SHA-1 of the raw
  CSV line, so an exact duplicate row is the same event (the window counts it once; the stats'
  ``repeated_rows`` says how many); extra fields
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

All three sort by (ts, event_id), and every event keeps to the contract: categories are cut to 128
characters and queries to 512, and a row that would make any other field break it (an empty id, an
id or event_id over 128 characters, a ts before 1970) or holds a value that cannot be read (a
timestamp ``'x'``, a price ``'abc'``, more or fewer fields than the header) stops the load with a
``ValueError`` naming the file, the line (the header is line 1) and the column, e.g.
``ratings.csv:7: timestamp 'x' is not an integer``; nothing is written (:func:`_write` runs only
once every row is read). So does a line that is not UTF-8, and a ``.gz`` that ends early or is not
one (:func:`_lines`).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import zlib
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from interest_core.window import MAX_TS, STRING_LIMITS

NO_GENRE = "(no genres listed)"
MAX_ID = STRING_LIMITS["event_id"]  # the contract's limit, the same for user_id, item_id and category


def _show(value: str) -> str:
    """A value for a message, cut: a row can hold a field of a million characters."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}..."


def _id(value: str, what: str, path, line: int) -> str:
    """``value`` as an id of the contract (1-128 characters), or a ValueError naming file, line and ``what``."""
    if not value:
        raise ValueError(f"{path}:{line}: {what} is empty")
    if len(value) > MAX_ID:
        raise ValueError(f"{path}:{line}: {what} has {len(value)} characters, more than the contract's {MAX_ID}")
    return value


def _int(raw: str, what: str, path, line: int) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{path}:{line}: {what} {_show(raw)} is not an integer") from None


def _number(raw: str, what: str, path, line: int) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):  # orjson would write nan as null
        raise ValueError(f"{path}:{line}: {what} {_show(raw)} is not a number")
    return v


def _ts(seconds: int, raw: str, what: str, path, line: int) -> int:
    """Epoch seconds as the contract's ts (epoch ms), or a ValueError when out of its range."""
    if seconds < 0:
        raise ValueError(f"{path}:{line}: {what} {_show(raw)} is before 1970 (ts is a non-negative epoch in ms)")
    if seconds * 1000 > MAX_TS:
        raise ValueError(f"{path}:{line}: {what} {_show(raw)} is too large (ts is epoch ms up to 2**63-1)")
    return seconds * 1000


def _whole(reader: csv.DictReader, row: dict, path) -> None:
    """A ValueError for a row with fewer or more fields than the header (DictReader fills the missing
    ones with None and puts the extra ones under None, which shifted or crashed what read them)."""
    if None in row or None in row.values():
        n = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, ()))
        raise ValueError(f"{path}:{reader.line_num}: the header has {len(reader.fieldnames)} fields, this row {n}")


def _write(events: list[dict], out) -> None:
    """The log, sorted by (ts, event_id), written whole to ``out`` (:func:`write_whole`)."""
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    write_whole([(out, events)])


def write_whole(files: list[tuple]) -> None:
    """Each ``(path, rows)`` as JSON lines, written beside the path (the file a link names) and
    moved over it once every file is whole: a failure or a Ctrl-C leaves the earlier files as they
    were, and no half log that training would take as whole. A device or a pipe (``/dev/stdout``)
    is written in place. The first file is moved last: a log is never newer than its truth. An
    OSError names the path the user gave (a full disk's write names no file)."""
    import orjson

    done, given = [], {}  # (part, target) of each file opened; part -> the path the user gave
    path = None
    try:
        for path, rows in files:
            direct = os.path.exists(path) and not os.path.isfile(path)  # (both follow links: /dev/stdout is one)
            target = str(path) if direct else os.path.realpath(path)
            part = target if direct else f"{target}.part"
            given[part] = str(path)
            with open(part, "wb") as f:
                done.append((part, target))
                for r in rows:
                    f.write(orjson.dumps(r) + b"\n")
        for part, target in reversed(done):
            if part != target:
                os.replace(part, target)
    except BaseException as exc:
        for part, target in done:
            if part != target:
                Path(part).unlink(missing_ok=True)
        if isinstance(exc, OSError) and (exc.filename is None or exc.filename in given):
            exc.filename = given.get(exc.filename, str(path))
        raise


@contextmanager
def _lines(path):
    """A dataset file's lines as text, gzipped when its name ends in ``.gz``, each decoded on its own:
    a byte that is not UTF-8, a gzip that ends early and a row the csv module cannot parse are named
    by file and line (a text file decodes 8 KiB ahead of the line read, and names neither)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        lines = _Lines(f, path)
        try:
            yield lines
        except csv.Error as exc:  # raised by a reader of these lines, at the last line it read
            raise ValueError(f"{path}:{lines.n}: not CSV ({exc})") from None


class _Lines:
    """The lines of a binary file as text, split where text mode with ``newline=""`` splits (at
    ``\n``, ``\r\n`` and a lone ``\r``), with their ends; ``n`` is the number of the last one."""

    def __init__(self, f, path):
        self._f, self.path, self.n, self._rest = f, path, 0, []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if not self._rest:
            try:
                self._rest = next(self._f).splitlines(keepends=True)[::-1]  # (a binary file splits at \n only)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # at the first line it could not read
                raise ValueError(f"{self.path}:{self.n + 1}: not a whole gzip file ({exc})") from None
        raw = self._rest.pop()
        self.n += 1
        try:  # (a UTF-8 sequence never holds the byte of \r or \n; a file's first line may start
            # with the byte order mark Excel and Windows tools write, which is not part of its header)
            return raw.decode("utf-8-sig" if self.n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.path}:{self.n}: not UTF-8 text (byte {raw[exc.start]:#04x} at character "
                             f"{len(raw[:exc.start].decode('utf-8')) + 1})") from None


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
    with _lines(path) as f:
        reader = _movielens_rows(f, path, ("movieId", "genres"))
        for row in reader:
            _whole(reader, row, path)
            genres[row["movieId"]] = [g for g in row["genres"].split("|") if g] or [NO_GENRE]
    return genres


def _movielens_ts(row: dict, path, line: int) -> int:
    raw = row["timestamp"]
    return _ts(_int(raw, "timestamp", path, line), raw, "timestamp", path, line)


def movielens_events(data_dir) -> tuple[list[dict], dict]:
    d = Path(data_dir)
    for name in ("ratings.csv", "movies.csv"):
        if not (d / name).exists():
            raise FileNotFoundError(f"{d}: no {name} (expected MovieLens ml-latest-small)")
    genres = movie_genres(d / "movies.csv")
    events: list[dict] = []
    stats = {"ratings": 0, "tags": 0, "tags_skipped_empty": 0, "movies_without_genre_row": 0}
    path = d / "ratings.csv"
    with _lines(path) as f:
        reader = _movielens_rows(f, path, ("userId", "movieId", "rating", "timestamp"))
        for row in reader:
            _whole(reader, row, path)
            n = reader.line_num
            user, movie = _id(row["userId"], "userId", path, n), _id(row["movieId"], "movieId", path, n)
            g = genres.get(movie)
            if g is None:
                stats["movies_without_genre_row"] += 1
                g = [NO_GENRE]
            events.append({
                "event_id": _id(f"r-{user}-{movie}", "event_id r-<userId>-<movieId>", path, n), "user_id": user,
                "type": "click", "ts": _movielens_ts(row, path, n), "item_id": movie,
                "category": g[0][:MAX_ID], "genres": g, "rating": _number(row["rating"], "rating", path, n),
            })
            stats["ratings"] += 1
    path = d / "tags.csv"
    if path.exists():
        seen: dict[tuple[str, str], int] = {}
        with _lines(path) as f:
            reader = _movielens_rows(f, path, ("userId", "movieId", "tag", "timestamp"))
            for row in reader:
                _whole(reader, row, path)
                n = reader.line_num
                text = (row["tag"] or "").strip()[:STRING_LIMITS["query"]]
                if not text:
                    stats["tags_skipped_empty"] += 1
                    continue
                user, movie = _id(row["userId"], "userId", path, n), _id(row["movieId"], "movieId", path, n)
                key = (user, movie)
                seen[key] = k = seen.get(key, 0) + 1
                events.append({
                    "event_id": _id(f"t-{user}-{movie}-{k}", "event_id t-<userId>-<movieId>-<n>", path, n),
                    "user_id": user, "type": "search", "ts": _movielens_ts(row, path, n), "query": text,
                    "movie_id": movie,
                })
                stats["tags"] += 1
    return events, stats


def rees46_events(path) -> tuple[list[dict], dict]:
    kinds = {"view": "browse", "cart": "click", "purchase": "click"}
    events: list[dict] = []
    stats = {"rows": 0, "skipped_type": 0, "no_category_code": 0, "repeated_rows": 0}
    ids: set[str] = set()  # a repeated row is the same event, counted once downstream: say how many
    with _lines(path) as f:
        header = next(f, "")
        cols = next(csv.reader([header]))
        need = {"event_time", "event_type", "product_id", "category_id", "category_code", "user_id"}
        if not need <= set(cols):
            raise ValueError(f"{path}: not a REES46 events CSV (columns {cols})")
        for n, line in enumerate(f, 2):
            if not line.strip():
                continue
            fields = next(csv.reader([line]))
            if len(fields) != len(cols):
                raise ValueError(f"{path}:{n}: the header has {len(cols)} fields, this row {len(fields)}")
            row = dict(zip(cols, fields))
            stats["rows"] += 1
            kind = kinds.get(row["event_type"])
            if kind is None:
                stats["skipped_type"] += 1
                continue
            cat = row["category_code"]
            if not cat:
                stats["no_category_code"] += 1
                cat = f"category_id:{row['category_id']}"
            try:
                when = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
            except ValueError:
                raise ValueError(f"{path}:{n}: event_time {_show(row['event_time'])} is not "
                                 "YYYY-MM-DD hh:mm:ss UTC") from None
            ev = {
                "event_id": "e-" + hashlib.sha1(line.rstrip("\r\n").encode()).hexdigest()[:16],
                "user_id": _id(row["user_id"], "user_id", path, n), "type": kind,
                "ts": _ts(int(when.timestamp()), row["event_time"], "event_time", path, n),
                "item_id": _id(row["product_id"], "product_id", path, n), "category": cat[:MAX_ID],
                "event_type": row["event_type"],
            }
            if ev["event_id"] in ids:
                stats["repeated_rows"] += 1
            ids.add(ev["event_id"])
            if row.get("brand"):
                ev["brand"] = row["brand"]
            if row.get("price"):
                ev["price"] = _number(row["price"], "price", path, n)
            if row.get("user_session"):
                ev["session"] = row["user_session"]
            events.append(ev)
    return events, stats


def _no_events(source, events: list, stats: dict) -> None:
    """A dataset that makes no event (a file of its header only, every row skipped) is an error
    before ``out`` is touched: an empty log was written, which every later command refused."""
    if not events:
        counts = ", ".join(f"{k} {v}" for k, v in stats.items())
        raise ValueError(f"{source}: no events to write ({counts}); nothing was written")


def load_movielens(data_dir, out) -> dict:
    events, stats = movielens_events(data_dir)
    _no_events(data_dir, events, stats)
    _write(events, out)
    return {"events": len(events), **stats}


def load_rees46(path, out) -> dict:
    events, stats = rees46_events(path)
    _no_events(path, events, stats)
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


def _cj_csv(d: Path, stem: str) -> Path:
    """``stem.csv.gz`` or ``stem.csv`` inside ``d``."""
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        if (d / name).exists():
            return d / name
    raise FileNotFoundError(f"{d}: no {stem}.csv.gz or {stem}.csv (expected The Complete Journey)")


def completejourney_events(data_dir, top: int | None = None) -> tuple[list[dict], dict]:
    d = Path(data_dir)
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    products: dict[str, tuple[str, str]] = {}
    path = _cj_csv(d, "products")
    with _lines(path) as f:
        reader = csv.DictReader(f)
        if not {"product_id", "department", "product_category"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: has columns {reader.fieldnames}, expected product_id, department, "
                             "product_category")
        for row in reader:
            _whole(reader, row, path)
            products[row["product_id"]] = (row["department"].strip(), row["product_category"].strip())
    need = {"household_id", "basket_id", "product_id", "transaction_timestamp"}
    lines = []
    tx = _cj_csv(d, "transactions")
    with _lines(tx) as f:
        reader = csv.DictReader(f)
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{tx}: has columns {reader.fieldnames}, expected {sorted(need)}")
        for row in reader:
            _whole(reader, row, tx)
            n = reader.line_num
            lines.append((_id(row["household_id"], "household_id", tx, n), _id(row["basket_id"], "basket_id", tx, n),
                          _id(row["product_id"], "product_id", tx, n), row["transaction_timestamp"],
                          row.get("quantity") or "", n))
    if top is None:
        kept = set(CJ_CATEGORIES)
    else:
        freq = Counter(products.get(p, ("", ""))[1] for _, _, p, _, _, _ in lines)
        freq.pop("", None)
        kept = {c for c, _ in sorted(freq.items(), key=lambda x: (-x[1], x[0]))[:top]}  # ties by name
    stats = {"lines": len(lines), "households": 0, "baskets": 0, "categories_kept": len(kept),
             "category_list": "fixed" if top is None else f"top {top} of the file",
             "lines_in_kept_categories": 0, "products_missing": 0, "repeated_lines": 0}
    events: list[dict] = []
    seen: dict[str, int] = {}
    stamp_cache: dict[str, int] = {}
    households, baskets = set(), set()
    for hh, basket, product, stamp, qty, n in lines:
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
                raise ValueError(f"{tx}:{n}: transaction_timestamp {_show(stamp)} is not "
                                 "YYYY-MM-DD hh:mm:ss") from None
            ts = stamp_cache[stamp] = _ts(int(when.timestamp()), stamp, "transaction_timestamp", tx, n)
        eid = f"cj-{basket}-{product}"
        k = seen.get(eid, 0) + 1
        seen[eid] = k
        if k > 1:
            stats["repeated_lines"] += 1
            eid = f"{eid}-{k}"
        # refused rather than cut to 128 characters: a cut id can equal another, and the window counts both once
        ev = {"event_id": _id(eid, "event_id cj-<basket_id>-<product_id>", tx, n), "user_id": hh, "type": "click",
              "ts": ts, "item_id": product, "category": category[:MAX_ID], "basket_id": basket, "department": dept,
              "product_category": cat}
        if qty:
            ev["quantity"] = q = _int(qty, "quantity", tx, n)
            if not -2**63 <= q < 2**63:  # orjson writes no more than 64 bits; signed, as readers of a log expect
                raise ValueError(f"{tx}:{n}: quantity {_show(qty)} is too large")
        events.append(ev)
        households.add(hh)
        baskets.add(basket)
    stats["households"], stats["baskets"] = len(households), len(baskets)
    return events, stats


def load_completejourney(data_dir, out, top: int | None = None) -> dict:
    events, stats = completejourney_events(data_dir, top)
    _no_events(data_dir, events, stats)
    _write(events, out)
    return {"events": len(events), **stats}
