"""When scoring passes are due: on a fixed schedule, one interval apart.

The scoring timer ticks more often than the interval and starts a pass at the first tick at or
after the moment it is due. The next pass is due one interval after the previous one was due, not
one interval after the tick that started it, so the delay between a due moment and its tick does
not add up pass after pass (with a 1 s tick and a 10 s interval it had stretched the cycle to
about 10.5 s on average). A pass that overruns a whole interval is followed by the next one at the
next tick, and the schedule restarts from there.
"""
from __future__ import annotations


def next_due(due: float, now: float, interval: float) -> float:
    """When the pass after one due at ``due`` and started at ``now`` (``now >= due``) is due."""
    nxt = due + interval
    return nxt if nxt > now else now + interval
