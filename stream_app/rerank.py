"""Re-ranking for the worker and for services that keep vectors themselves.

* :func:`rerank` is :func:`interest_core.rerank.rerank`, the one blend (its docstring has the
  formula): ``stream_app.rerank.rerank(vector, items, weight, prior=...)`` with the ``interests``
  of a vector read from ``user-interests`` (or the whole vector record), or None for an unknown
  user. ``prior`` is the model's ``category_prior`` (model.json); the worker passes its loaded
  model's, and a service reads it from the model.json of the version it serves.
* :func:`parse_request` is the pure validation of a ``POST /users/{user_id}/rerank`` body:
  bytes -> a :class:`RerankRequest`, or a :class:`RequestError` naming the field (errors are data,
  as in :mod:`stream_app.events`). :meth:`RequestError.body` is the 400 answer,
  :func:`response_body` the 200 answer.
* :func:`decode_body`: the body as sent under its ``Content-Encoding`` (gzip, deflate) -> the
  bytes :func:`parse_request` reads, or the error naming the body or the coding.
* :func:`path_user_error`: the 400 of every ``/users/{user_id}`` route whose user id is not UTF-8
  once percent-decoded.
* :func:`vector_prior`: the prior a vector is blended against: its own model's.

The body: ``{"items": [{"item_id": str, "category": str, "score": number}, ...], "weight": number}``.
``items`` holds 1 to :data:`MAX_ITEMS` objects; ``item_id`` and ``category`` are strings of 1 to
128 characters (the contract's limits for events), without lone surrogates; ``score`` is a finite number on any scale,
higher is better (not a bool, not NaN or infinite); ``weight`` is in [0, 1], default
:data:`DEFAULT_WEIGHT`. Other fields are ignored; repeated item ids are kept as given.

No Faust here: the web view only reads the body, calls these functions and the user's vector.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import orjson

from interest_core.rerank import Item, Ranked, RankedItem, rerank  # noqa: F401  (re-exported)

MAX_ITEMS = 1000  # CONTRACT: at most 1,000 candidates per request
# the contract's largest request, 1,000 items of two 128-character strings, is 3.1 MB when a client
# escapes every character as a surrogate pair (json.dumps's default: "\ud83d\ude00", 12 bytes)
MAX_BODY_BYTES = 4 << 20  # the web server reads no more either (stream_app.app: client_max_size)
STRING_LIMIT = 128  # item_id, category: the contract's limit for the same fields of events
# Default share of the interest: the middle, where a category the user wants e times more than
# people do is worth the whole range of the candidates' scores. Offline, with popularity as the
# score, more interest did better still (README "Re-ranking": the weights chosen on validation).
DEFAULT_WEIGHT = 0.5


@dataclass(frozen=True, slots=True)
class RerankRequest:
    items: tuple[Item, ...]
    weight: float


@dataclass(frozen=True, slots=True)
class RequestError:
    """Why a body cannot be used: the field (``body``, ``items``, ``items[3].score``, ``weight``,
    ``Content-Encoding``) and a human-readable message."""

    field: str
    error: str

    def body(self) -> dict:
        """The 400 answer (the contract's: 400 naming the field)."""
        return {"error": self.error, "field": self.field}


@dataclass(frozen=True, slots=True)
class _LongInteger:
    """A JSON integer with more digits than Python's ``int()`` converts (4,300 by default,
    ``sys.get_int_max_str_digits``): its digit count, so that its field is named like any other."""

    digits: int


def _int(text: str) -> int | _LongInteger:
    try:
        return int(text)
    except ValueError:  # over the digit limit (the JSON parser gives only well-formed integers)
        return _LongInteger(len(text.lstrip("-")))


def _number(v) -> float | None:
    """A finite float from a JSON number; None for anything else (bools included)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _kind(v) -> str:
    if isinstance(v, _LongInteger):
        return f"an integer of {v.digits} digits, beyond a float's range"
    if isinstance(v, int) and not isinstance(v, bool) and _number(v) is None:
        return f"an integer of {len(str(v).lstrip('-'))} digits, beyond a float's range"
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool", type(None): "null"}.get(
        type(v), repr(v)[:40])


def _lone_surrogate(s: str) -> int | None:
    """Position of the first lone UTF-16 surrogate in ``s`` (JSON's ``"\\ud800"``, which the
    standard library's parser lets through and no UTF-8 answer can carry), else None."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _decode(body: bytes):
    """JSON -> Python, or raise ValueError. orjson first; the standard library's parser only when
    orjson refuses, so that NaN, Infinity and 1e999 (which Python clients send) parse and are then
    rejected naming their field, as are integers too long for ``int()``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body, parse_int=_int)  # raises ValueError (JSONDecodeError, UnicodeDecodeError) if not JSON


def parse_request(body: bytes | None) -> RerankRequest | RequestError:
    """Validate a re-rank request body (module doc); the first problem found is returned."""
    if body is not None and len(body) > MAX_BODY_BYTES:
        return RequestError("body", f"body is {len(body)} bytes, limit {MAX_BODY_BYTES}")
    if not body:
        return RequestError("body", "body is empty, expected a JSON object")
    try:
        obj = _decode(body)
    except (ValueError, RecursionError) as exc:
        return RequestError("body", f"body is not JSON: {str(exc)[:120]}")
    if not isinstance(obj, dict):
        return RequestError("body", f"body is {_kind(obj)}, expected a JSON object")

    if "items" not in obj:
        return RequestError("items", "items is missing")
    raw = obj["items"]
    if not isinstance(raw, list):
        return RequestError("items", f"items must be a list, got {_kind(raw)}")
    if not raw:
        return RequestError("items", "items is empty")
    if len(raw) > MAX_ITEMS:
        return RequestError("items", f"items has {len(raw)} entries, limit {MAX_ITEMS}")
    items = []
    for n, it in enumerate(raw):
        where = f"items[{n}]"
        if not isinstance(it, dict):
            return RequestError(where, f"{where} must be an object, got {_kind(it)}")
        for name in ("item_id", "category"):
            if name not in it:
                return RequestError(f"{where}.{name}", f"{where}.{name} is missing")
            v = it[name]
            if not isinstance(v, str) or not v:
                got = "an empty string" if v == "" else _kind(v)
                return RequestError(f"{where}.{name}", f"{where}.{name} must be a non-empty string, got {got}")
            if len(v) > STRING_LIMIT:
                return RequestError(f"{where}.{name}", f"{where}.{name} has {len(v)} characters, limit {STRING_LIMIT}")
            if (bad := _lone_surrogate(v)) is not None:
                return RequestError(f"{where}.{name}", f"{where}.{name} is not valid Unicode: a lone surrogate "
                                                      f"\\u{ord(v[bad]):04x} at character {bad}")
        if "score" not in it:
            return RequestError(f"{where}.score", f"{where}.score is missing")
        score = _number(it["score"])
        if score is None:
            return RequestError(f"{where}.score", f"{where}.score must be a finite number, got {_kind(it['score'])}")
        items.append(Item(it["item_id"], it["category"], score))

    weight = DEFAULT_WEIGHT
    if "weight" in obj:
        weight = _number(obj["weight"])
        if weight is None:
            return RequestError("weight", f"weight must be a finite number, got {_kind(obj['weight'])}")
        if not 0.0 <= weight <= 1.0:
            return RequestError("weight", f"weight must be in [0, 1], got {weight}")
    return RerankRequest(tuple(items), weight)


CODINGS = ("gzip", "deflate", "identity")  # the Content-Encodings decode_body reads (x-gzip is gzip)


def _inflate(data: bytes, coding: str) -> bytes:
    """One coding undone, at most :data:`MAX_BODY_BYTES` + 1 bytes of it; ValueError naming why
    it is not that coding. gzip may be several members one after the other (RFC 1952); deflate is
    zlib data (RFC 1950), or raw deflate as some clients send it (aiohttp read both)."""
    out = bytearray()
    while True:
        wbits = 31 if coding == "gzip" else 15 if data[:1] and data[0] & 0xF == 8 else -15
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(data, MAX_BODY_BYTES + 1 - len(out))
        except zlib.error as exc:
            raise ValueError(str(exc).removeprefix("Error -3 while decompressing data: ")) from None
        if len(out) > MAX_BODY_BYTES:
            return bytes(out)
        if not d.eof:
            raise ValueError("truncated")
        data = d.unused_data
        if coding != "gzip" or data[:2] != b"\x1f\x8b":  # no further member
            break
    if data:
        raise ValueError(f"{len(data)} bytes follow its end")
    return bytes(out)


def decode_body(data: bytes, content_encoding: str) -> bytes | RequestError:
    """The body as the client wrote it, undoing each coding of ``content_encoding`` (the header's
    values joined with commas, applied in that order), or why not. aiohttp decoded gzip and deflate
    itself, but a truncated deflate body left the request waiting for ever, a truncated gzip one
    was read as far as it went, and br or zstd were a text/plain 400 asking to install a package;
    any other coding was read as if there were none."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for c in codings:
        if c not in CODINGS and c != "x-gzip":
            return RequestError("Content-Encoding", f"Content-Encoding {c!r} is not supported: "
                                f"{', '.join(CODINGS)}")
    for c in reversed(codings):
        if c == "identity" or not data:
            continue
        c = "gzip" if c == "x-gzip" else c
        try:
            data = _inflate(data, c)
        except ValueError as exc:
            return RequestError("body", f"body is not valid {c} (its Content-Encoding): {exc}")
        if len(data) > MAX_BODY_BYTES:
            return RequestError("body", f"body is over {MAX_BODY_BYTES} bytes once decoded ({c}), "
                                        f"limit {MAX_BODY_BYTES}")
    return data


def path_user_error(raw_path: str) -> RequestError | None:
    """Why the user id of ``/users/{user_id}[/...]`` cannot be read, or None. ``raw_path`` is the
    path as received, percent-escapes kept (``request.rel_url.raw_path``). aiohttp (yarl) decodes
    a path's escapes as UTF-8 and keeps those that are not as text: ``/users/%FF`` and
    ``/users/%ED%A0%80`` (a surrogate) reached the users whose ids are the literal texts ``%FF``
    and ``%ED%A0%80`` (``/users/%25FF``), another user's data."""
    raw = raw_path.split("/", 3)[2] if raw_path.startswith("/users/") else ""
    try:
        data = unquote_to_bytes(raw)
        data.decode("utf-8")
    except UnicodeEncodeError:  # a character the server passed as is that UTF-8 cannot hold
        return RequestError("user_id", "the user id in the path is not UTF-8")
    except UnicodeDecodeError as exc:
        bad = "".join(f"%{b:02X}" for b in data[exc.start:exc.end])
        return RequestError("user_id", f"the user id in the path is not UTF-8 once percent-decoded: {bad} at "
                                       f"byte {exc.start}")
    return None


def vector_prior(vector: dict | None, priors: dict, categories, serving_prior):
    """The ``category_prior`` to blend ``vector`` against: that of the model that computed it when
    this worker served that model (``priors``: version -> prior, ``ModelHolder.priors``); else the
    serving model's (``serving_prior``) when it has the vector's categories; else None (uniform over
    the vector's). After a swap to a model of other categories, an idle user's vector was blended
    against the new model's prior: p of one model over q of another, or a uniform fallback."""
    if vector is None:
        return None
    if vector["model_version"] in priors:
        return priors[vector["model_version"]]
    return serving_prior if set(categories) == set(vector["interests"]) else None


def response_body(user_id: str, model_version: str | None, ranked: Ranked) -> dict:
    """The 200 answer for a user's ranked candidates."""
    return {
        "user_id": user_id,
        "personalized": ranked.personalized,
        "model_version": model_version,
        "weight": ranked.weight,
        "items": [it.to_json() for it in ranked.items],
        "unknown_categories": list(ranked.unknown_categories),
    }
