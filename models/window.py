"""The per-user window: one definition shared by training, evaluation and the worker.

A user's window is their accepted, de-duplicated events with ``ts`` in
``(newest_ts - horizon, newest_ts]`` (CONTRACT.md, "Per-user window"). The model reads the most
recent ``max_events`` of them. Events are kept in a model-independent form (no token ids), so a
new model with another vocabulary reads the same state.

Everything here is pure Python (no torch, no Kafka) so every side imports the same code.
Times are epoch milliseconds everywhere; seconds from settings are converted once, in
:func:`seconds_to_ms`.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable, Sequence

EVENT_TYPES = ("click", "browse", "search")

DEFAULT_HORIZON_S = 86_400  # CONTRACT: INTEREST_HORIZON_S, how far back a window reaches
DEFAULT_MAX_EVENTS = 128  # CONTRACT: INTEREST_MAX_EVENTS, most events the model reads
DEFAULT_GRACE_S = 3_600  # CONTRACT: INTEREST_GRACE_S, lateness accepted beyond the window


def seconds_to_ms(seconds: float) -> int:
    """The one place settings in seconds become event-time milliseconds."""
    return int(round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class WindowEvent:
    """One accepted event in the model-independent form the window keeps."""

    ts: int  # event time, epoch ms
    type: str  # click / browse / search
    category: str | None = None  # click, browse
    item: str | None = None  # click, browse
    dwell_ms: int | None = None  # browse, optional
    query: str | None = None  # search

    def to_row(self) -> list:
        """Compact list form used in stored state (smaller than a dict in JSON)."""
        return [self.ts, self.type, self.category, self.item, self.dwell_ms, self.query]

    @classmethod
    def from_row(cls, row: Sequence) -> "WindowEvent":
        return cls(row[0], row[1], row[2], row[3], row[4], row[5])

    @classmethod
    def from_event(cls, event: dict) -> "WindowEvent":
        """From a validated input event (contract schema)."""
        return cls(
            ts=event["ts"],
            type=event["type"],
            category=event.get("category"),
            item=event.get("item_id"),
            dwell_ms=event.get("dwell_ms"),
            query=event.get("query"),
        )


def window_start(newest_ts: int, horizon_ms: int) -> int:
    """Exclusive lower bound of the window: events need ``ts > window_start``."""
    return newest_ts - horizon_ms


def late_bound(newest_ts: int, horizon_ms: int, grace_ms: int) -> int:
    """Events with ``ts <= late_bound`` are older than the window by more than the grace."""
    return newest_ts - horizon_ms - grace_ms


def window_slice(
    events: Sequence[WindowEvent], newest_ts: int, horizon_ms: int, max_events: int
) -> list[WindowEvent]:
    """The events the model reads: those of ``events`` (sorted by ts) in the window ending at
    ``newest_ts``, at most the ``max_events`` most recent."""
    ts = [e.ts for e in events]
    hi = bisect_right(ts, newest_ts)
    lo = bisect_right(ts, window_start(newest_ts, horizon_ms), 0, hi)
    lo = max(lo, hi - max_events)
    return list(events[lo:hi])


def category_counts(events: Iterable[WindowEvent]) -> dict[str, int]:
    """Counts per category of clicks and browses (searches carry no category)."""
    out: dict[str, int] = {}
    for e in events:
        if e.category is not None and e.type != "search":
            out[e.category] = out.get(e.category, 0) + 1
    return out
