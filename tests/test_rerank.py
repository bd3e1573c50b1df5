"""The re-ranking blend (values worked by hand) and the re-rank request validation (a table of bodies)."""
import gzip
import json
import math
import zlib

import pytest

from interest_core.rerank import Item, log_lift, rerank, scaled_scores
from stream_app import rerank as served
from stream_app.rerank import (DEFAULT_WEIGHT, MAX_BODY_BYTES, MAX_ITEMS, RequestError, RerankRequest, decode_body,
                                parse_request, path_user_error, response_body)

LN = math.log
VEC = {"sports": 0.5, "tech": 0.3, "music": 0.2}  # k = 3, uniform prior q = 1/3
# log-lifts ln(p / q): sports ln 1.5 = .4055, tech ln .9 = -.1054, music ln .6 = -.5108; travel unknown: 0
ITEMS = [Item("A", "tech", 10.0), Item("B", "sports", 2.0), Item("C", "music", 7.0), Item("D", "travel", 5.0)]
# scaled scores (s - 2) / 8: B 0, D .375, C .625, A 1


def ids(ranked):
    return [it.item_id for it in ranked.items]


def test_scaled_scores_by_hand():
    assert scaled_scores([3.0, 1.0, 3.0, 2.0]) == [1.0, 0.0, 1.0, 0.5]
    assert scaled_scores([7.0]) == [0.5]
    assert scaled_scores([-1.0, -1.0]) == [0.5, 0.5]
    assert scaled_scores([2.0, 4.0, 10.0]) == [0.0, 0.25, 1.0]
    # shifted and stretched scores (other units, an offset) scale to the same values
    assert scaled_scores([20.0 - 7, 40.0 - 7, 100.0 - 7]) == [0.0, 0.25, 1.0]
    # finite scores whose range overflows a float: still in [0, 1], not NaN
    assert scaled_scores([1e308, -1e308, 0.0, 5e307]) == [1.0, 0.0, 0.5, 0.75]


def test_log_lift_by_hand():
    assert log_lift(0.5, 1 / 3) == pytest.approx(LN(1.5))
    assert log_lift(0.1, 0.1) == 0.0  # at the prior: neutral
    assert log_lift(0.0, 0.5) == pytest.approx(LN(1e-4 / 0.5))  # floored, finite
    assert log_lift(0.3, 0.0) == pytest.approx(LN(0.3 / 1e-4))


def test_blend_by_hand():
    r = rerank(VEC, ITEMS, 0.5)
    # A .5 + .5 ln .9 = .4473; B 0 + .5 ln 1.5 = .2027; D .1875 + 0; C .3125 + .5 ln .6 = .0571
    assert ids(r) == ["A", "B", "D", "C"]
    assert [it.blended for it in r.items] == pytest.approx(
        [0.5 + 0.5 * LN(0.9), 0.5 * LN(1.5), 0.1875, 0.3125 + 0.5 * LN(0.6)])
    assert [it.interest for it in r.items] == pytest.approx([0.3, 0.5, 1 / 3, 0.2])  # travel gets the prior 1/3
    assert r.personalized and r.weight == 0.5 and r.unknown_categories == ("travel",)
    assert [it.score for it in r.items] == [10.0, 2.0, 5.0, 7.0]
    # w .2: A .8 - .0211 = .7789; C .5 - .1022 = .3978; D .3; B .0811: the score order
    assert ids(rerank(VEC, ITEMS, 0.2)) == ids(rerank(VEC, ITEMS, 0.0)) == ["A", "C", "D", "B"]
    assert ids(rerank(VEC, ITEMS, 1.0)) == ["B", "D", "A", "C"]  # the lift alone: .41, 0, -.11, -.51


def test_population_prior_changes_the_lift():
    vec = {"a": 0.2, "b": 0.8}
    items = [Item("x", "a", 1.0), Item("y", "b", 1.0)]
    # uniform q = .5: a ln .4 < b ln 1.6
    assert ids(rerank(vec, items, 1.0)) == ["y", "x"]
    # prior a .1, b .9: a ln 2 > b ln(.8/.9): the user wants a twice as much as people do
    r = rerank(vec, items, 1.0, prior={"a": 0.1, "b": 0.9})
    assert ids(r) == ["x", "y"] and r.items[0].blended == pytest.approx(LN(2))


def test_ties_are_deterministic():
    vec = {"a": 0.25, "b": 0.75}  # q = .5: ln .5 and ln 1.5
    # w = 1: Q and R share the category, so the same blended score; the higher own score goes first
    items = [Item("P", "zz", 5.0), Item("R", "b", 1.0), Item("Q", "b", 9.0), Item("S", "a", 20.0)]
    r = rerank(vec, items, 1.0)
    assert ids(r) == ["Q", "R", "P", "S"] and r.items[0].blended == r.items[1].blended
    # equal score and category: the earlier position first, whatever the input order
    twins = [Item("t1", "b", 2.0), Item("t2", "b", 2.0), Item("t0", "a", 1.0)]
    assert ids(rerank(vec, twins, 0.3)) == ["t1", "t2", "t0"]
    assert ids(rerank(vec, [twins[1], twins[0], twins[2]], 0.3)) == ["t2", "t1", "t0"]


def test_unknown_user_keeps_the_original_order():
    for vec in (None, {}):
        r = rerank(vec, ITEMS, 0.7)
        assert ids(r) == ["A", "B", "C", "D"] and not r.personalized
        assert all(it.blended is None and it.interest is None for it in r.items)
        assert r.unknown_categories == ()


def test_whole_vector_record_and_reexport():
    record = {"schema": 1, "user_id": "u1", "interests": VEC, "top": ["sports", "tech", "music"]}
    assert served.rerank is rerank
    assert ids(served.rerank(record, ITEMS, 0.5)) == ids(rerank(VEC, ITEMS, 0.5)) == ["A", "B", "D", "C"]
    assert rerank(VEC, [], 0.5).items == () and rerank(VEC, [], 0.5).personalized
    with pytest.raises(ValueError):
        rerank(VEC, ITEMS, 1.5)
    with pytest.raises(ValueError):
        rerank(VEC, [Item("x", "a", float("nan"))], 0.5)


# --- request validation ---------------------------------------------------------------------
def body(obj) -> bytes:
    return json.dumps(obj).encode()


OK_ITEM = {"item_id": "i1", "category": "sports", "score": 0.7}


def with_(**kw):
    it = dict(OK_ITEM)
    for k, v in kw.items():
        if v is ...:
            it.pop(k)
        else:
            it[k] = v
    return {"items": [OK_ITEM, it]}


ERRORS = [  # (field, body)
    ("body", b""),
    ("body", None),
    ("body", b"{items: []}"),  # not JSON
    ("body", b"\xff\xfe"),  # not UTF-8, so not JSON
    ("body", b"[1, 2]"),  # not an object
    ("body", b'"items"'),
    ("body", b" " * (4 << 20) + b"{}"),  # over 4 MiB
    ("body", b"[" * 200_000 + b"]" * 200_000),  # nested 200,000 deep: orjson before 3.9.15 crashed the worker
    ("items", body({"weight": 0.5})),  # no items
    ("items", body({"items": None})),
    ("items", body({"items": {"item_id": "i1"}})),  # not a list
    ("items", body({"items": []})),  # empty
    ("items", body({"items": [OK_ITEM] * (MAX_ITEMS + 1)})),  # more than 1,000
    ("items[1]", body({"items": [OK_ITEM, "i2"]})),  # an item that is not an object
    ("items[1].item_id", body(with_(item_id=...))),
    ("items[1].item_id", body(with_(item_id=7))),
    ("items[1].item_id", body(with_(item_id=""))),
    ("items[1].item_id", body(with_(item_id="x" * 129))),
    ("items[1].category", body(with_(category=...))),
    ("items[1].category", body(with_(category=None))),
    ("items[1].category", body(with_(category=["sports"]))),
    ("items[1].category", body(with_(category="c" * 129))),
    ("items[1].item_id", b'{"items": [{"item_id": "i", "category": "c", "score": 1},'
                         b' {"item_id": "\\ud800", "category": "c", "score": 1}]}'),  # a lone surrogate
    ("items[1].category", body(with_(category="sports\udfff"))),
    ("items[1].score", body(with_(score=...))),
    ("items[1].score", body(with_(score="0.7"))),
    ("items[1].score", body(with_(score=True))),  # a bool is not a number
    ("items[1].score", body(with_(score=None))),
    ("items[1].score", body(with_(score=float("nan")))),  # Python's json writes NaN
    ("items[1].score", body(with_(score=float("inf")))),
    ("items[1].score", b'{"items": [{"item_id": "i", "category": "c", "score": 1},'
                       b' {"item_id": "j", "category": "c", "score": 1e999}]}'),  # overflows to infinity
    ("weight", body({"items": [OK_ITEM], "weight": 1.01})),
    ("weight", body({"items": [OK_ITEM], "weight": -0.1})),
    ("weight", body({"items": [OK_ITEM], "weight": "0.5"})),
    ("weight", body({"items": [OK_ITEM], "weight": False})),
    ("weight", body({"items": [OK_ITEM], "weight": None})),
    ("weight", body({"items": [OK_ITEM], "weight": float("nan")})),
]


@pytest.mark.parametrize("field,raw", ERRORS)
def test_request_errors_name_the_field(field, raw):
    res = parse_request(raw)
    assert isinstance(res, RequestError), res
    assert res.field == field, res.error
    assert res.body() == {"error": res.error, "field": field} and res.error


@pytest.mark.parametrize("digits", [401, 4300, 4301, 5001, 100_000])
@pytest.mark.parametrize("sign", ["", "-"])
def test_an_integer_of_any_length_is_named_by_its_field(digits, sign):
    """Over 4,300 digits was "body is not JSON: Exceeds the limit (4300 digits) for integer string
    conversion ... use sys.set_int_max_str_digits()", Python's advice, where 401 named the field."""
    number = sign + "9" * digits
    for where, raw in [("items[0].score", '{"items": [{"item_id": "i", "category": "c", "score": %s}]}'),
                       ("weight", '{"items": [{"item_id": "i", "category": "c", "score": 1}], "weight": %s}')]:
        res = parse_request((raw % number).encode())
        assert res == RequestError(where, f"{where} must be a finite number, got an integer of {digits} digits, "
                                          "beyond a float's range")
    res = parse_request(number.encode())
    assert res == RequestError("body", f"body is an integer of {digits} digits, beyond a float's range, "
                                       "expected a JSON object")
    res = parse_request(('{"items": [{"item_id": %s, "category": "c", "score": 1}]}' % number).encode())
    assert res == RequestError("items[0].item_id", f"items[0].item_id must be a non-empty string, got an integer "
                                                   f"of {digits} digits, beyond a float's range")


def test_every_field_has_an_error_case():
    fields = {f if not f.startswith("items[") else "items[n]" + f[f.index("]") + 1:] for f, _ in ERRORS}
    assert fields == {"body", "items", "items[n]", "items[n].item_id", "items[n].category", "items[n].score", "weight"}


def test_valid_requests():
    items = [OK_ITEM, {"item_id": "i2", "category": "tech", "score": 3, "extra": [1]}]
    assert parse_request(body({"items": items, "weight": 0})) == RerankRequest(
        (Item("i1", "sports", 0.7), Item("i2", "tech", 3.0)), 0.0)
    req = parse_request(body({"items": [OK_ITEM]}))
    assert req.weight == DEFAULT_WEIGHT == 0.5
    assert parse_request(body({"items": [OK_ITEM], "weight": 1})).weight == 1.0  # limits inclusive
    assert len(parse_request(body({"items": [OK_ITEM] * MAX_ITEMS})).items) == MAX_ITEMS
    long = {"item_id": "x" * 128, "category": "é" * 128, "score": -1e300}  # characters, not bytes
    assert isinstance(parse_request(body({"items": [long]})), RerankRequest)
    # the contract's largest request as json.dumps sends it: each emoji a 12-byte escape, 3.1 MB
    largest = json.dumps({"items": [{"item_id": "😀" * 128, "category": "😀" * 128, "score": 1}] * MAX_ITEMS})
    assert len(largest) > 3_000_000 and len(parse_request(largest.encode()).items) == MAX_ITEMS


def test_response_body():
    req = parse_request(body({"items": [{"item_id": "A", "category": "tech", "score": 10},
                                        {"item_id": "D", "category": "travel", "score": 5}], "weight": 1}))
    out = response_body("u1", "v9", rerank(VEC, req.items, req.weight))
    assert out == {"user_id": "u1", "personalized": True, "model_version": "v9", "weight": 1.0,
                   "items": [{"item_id": "D", "category": "travel", "score": 5.0, "blended": 0.0,
                              "interest": pytest.approx(1 / 3)},
                             {"item_id": "A", "category": "tech", "score": 10.0, "blended": pytest.approx(LN(0.9)),
                              "interest": 0.3}],
                   "unknown_categories": ["travel"]}
    out = response_body("nobody", "v9", rerank(None, req.items, req.weight))
    assert out["personalized"] is False and [i["item_id"] for i in out["items"]] == ["A", "D"]
    assert out["items"][0]["blended"] is None and out["unknown_categories"] == []
    json.dumps(out)  # serialisable as is


def test_readme_example(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- rerank-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "README rerank-example", "exec"), {})
    expected = block.strip().splitlines()[-1].lstrip("# ")
    assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize("raw_path, error", [
    ("/users/%FF", "%FF at byte 0"),
    ("/users/%ED%A0%80/rerank", "%ED at byte 0"),  # a surrogate, which UTF-8 has no bytes for
    ("/users/ab%C3(/explain", "%C3 at byte 2"),  # a sequence cut short
    ("/users/%C3%A9%FE/view", "%FE at byte 2"),
])
def test_a_user_id_not_utf8_once_percent_decoded_is_an_error(raw_path, error):
    """aiohttp kept such escapes as text: /users/%FF answered for the user whose id is "%FF"."""
    assert path_user_error(raw_path) == RequestError(
        "user_id", f"the user id in the path is not UTF-8 once percent-decoded: {error}")


@pytest.mark.parametrize("raw_path", ["/users/%25FF", "/users/u1", "/users/%C3%A9/rerank", "/users/caf\u00e9",
                                      "/users/./explain", "/users/a%2Fb/view", "/health", "/"])
def test_user_ids_that_are_utf8_are_not_errors(raw_path):
    assert path_user_error(raw_path) is None


BODY = b'{"items": [{"item_id": "a", "category": "tech", "score": 1}]}'


def gz(data: bytes) -> bytes:
    """gzip with a fixed time in its header: the bytes name these tests, and pytest-xdist stops when
    its processes collect different names (a second apart, gzip's own header time differs)."""
    return gzip.compress(data, mtime=0)


GZ = gz(BODY)
ZL = zlib.compress(BODY)  # zlib framing (RFC 1950): 2 header bytes, 4 of checksum


@pytest.mark.parametrize("coding, data", [
    ("", BODY), ("identity", BODY), ("gzip", GZ), ("x-gzip", GZ), (" GZIP ", GZ), ("deflate", ZL),
    ("deflate", ZL[2:-4]),  # raw deflate, as some clients send it
    ("gzip", gz(BODY[:30]) + gz(BODY[30:])),  # two members (RFC 1952)
    ("gzip, identity", GZ), ("deflate, gzip", gz(ZL)),  # applied in the order listed
    ("gzip", b""),  # an empty body is empty, whatever its coding (parse_request names it)
])
def test_decode_body_undoes_each_coding(coding, data):
    assert decode_body(data, coding) == (b"" if data == b"" else BODY)


@pytest.mark.parametrize("coding, data, field, error", [
    ("gzip", b"not gzip", "body", "body is not valid gzip (its Content-Encoding): incorrect header check"),
    ("gzip", GZ[:-8], "body", "body is not valid gzip (its Content-Encoding): truncated"),  # no trailer
    ("gzip", GZ[:-8] + b"\0\0\0\0" + GZ[-4:], "body",
     "body is not valid gzip (its Content-Encoding): incorrect data check"),
    ("gzip", GZ + b"junk", "body", "body is not valid gzip (its Content-Encoding): 4 bytes follow its end"),
    ("deflate", ZL[:len(ZL) // 2], "body", "body is not valid deflate (its Content-Encoding): truncated"),
    ("deflate", ZL[2:len(ZL) // 2], "body", "body is not valid deflate (its Content-Encoding): truncated"),
    ("gzip", gz(b" " * (MAX_BODY_BYTES + 1)), "body",
     f"body is over {MAX_BODY_BYTES} bytes once decoded (gzip), limit {MAX_BODY_BYTES}"),
    ("gzip", gz(b" " * (64 * MAX_BODY_BYTES)), "body",  # 256 MiB: decoded only up to the limit
     f"body is over {MAX_BODY_BYTES} bytes once decoded (gzip), limit {MAX_BODY_BYTES}"),
    ("br", BODY, "Content-Encoding", "Content-Encoding 'br' is not supported: gzip, deflate, identity"),
    ("zstd", BODY, "Content-Encoding", "Content-Encoding 'zstd' is not supported: gzip, deflate, identity"),
    ("gzip, compress", GZ, "Content-Encoding",
     "Content-Encoding 'compress' is not supported: gzip, deflate, identity"),
])
def test_decode_body_names_what_it_cannot_decode(coding, data, field, error):
    """aiohttp decoded bodies before: a truncated deflate body left the request waiting for ever, a
    gzip body without its trailer was read as far as it went, br and zstd were its text/plain 400
    naming a package to install, and other codings were read as if absent."""
    assert decode_body(data, coding) == RequestError(field, error)


def test_decode_body_takes_a_body_of_the_limit():
    assert decode_body(gz(b" " * MAX_BODY_BYTES), "gzip") == b" " * MAX_BODY_BYTES


OLD = {"model_version": "v1", "interests": {"books": 0.5, "sports": 0.3, "tech": 0.2}}


@pytest.mark.parametrize("priors, categories, serving, want", [
    ({"v1": {"books": 0.2, "sports": 0.3, "tech": 0.5}}, ("anime", "pets"), {"anime": 0.3, "pets": 0.7},
     {"books": 0.2, "sports": 0.3, "tech": 0.5}),  # its own model's, served before the swap
    ({"v1": None}, ("anime", "pets"), {"anime": 0.3, "pets": 0.7}, None),  # its own had none: uniform
    ({}, ("tech", "books", "sports"), {"books": 0.1, "sports": 0.1, "tech": 0.8},
     {"books": 0.1, "sports": 0.1, "tech": 0.8}),  # unknown here (a restart): the serving one, same categories
    ({}, ("anime", "pets"), {"anime": 0.3, "pets": 0.7}, None),  # other categories: uniform over the vector's
    ({}, ("books", "sports"), {"books": 0.5, "sports": 0.5}, None),  # some of them only: uniform too
])
def test_a_vector_is_blended_against_its_own_models_prior(priors, categories, serving, want):
    """After a swap to a model of other categories, an idle user's vector was blended against the
    new model's prior: books' p of the old model over q 0.1 of the new, sports' with a uniform fallback."""
    assert served.vector_prior(OLD, priors, categories, serving) == want
    assert served.vector_prior(None, priors, categories, serving) is None
