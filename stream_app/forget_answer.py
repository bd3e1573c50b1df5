"""The answer to a forget request, both ends of it (pure): the headers the worker puts on the
user's tombstone, and the line `interest-stream forget` prints for them.

The tombstone (value None) says whether the worker held a state for the user when it applied the
request (``interest-held-state``: ``1`` or ``0``) and which request it answers
(``interest-forget-request``: the control record's ``partition@offset``), so that each command
reads the answer to its own request. A request applied again after a worker restart, its delete
written before the crash, finds no state: the line says that this can happen.
"""
from __future__ import annotations

HELD_STATE_HEADER = "interest-held-state"
REQUEST_HEADER = "interest-forget-request"


def tombstone_headers(forget) -> list[tuple[str, bytes]]:
    """The headers of a held forget request's tombstone (a
    :class:`~stream_app.state_cache.Forget`: its control message and whether the worker held a
    state for the user)."""
    m = forget.message
    return [(HELD_STATE_HEADER, b"1" if forget.held_state else b"0"),
            (REQUEST_HEADER, f"{m.partition}@{m.offset}".encode())]


def forget_report(user: str, where: str, headers, request_id: str) -> str | None:
    """What ``forget`` prints for a tombstone of its user at ``where`` with these record headers
    (``[(name, bytes)]``); None for the tombstone of another request (another ``forget`` of the
    user). A tombstone without the worker's headers (a worker older than them) is the plain line."""
    found = dict(headers or ())
    answers = found.get(REQUEST_HEADER)
    if answers is not None and answers != request_id.encode():
        return None
    line = f"forgotten: {user} (tombstone at {where})"
    if found.get(HELD_STATE_HEADER) == b"0":
        line += (f"; the worker held no state for {user} when it applied this request: is the id right? "
                 "(a request applied again after a worker restart also finds none)")
    return line
