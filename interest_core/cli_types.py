"""Command-line parameter types that both CLIs (``stream_app.cli``, ``models.cli``) share.

click's ``FloatRange`` lets ``nan`` through (every comparison with it is false) and ``inf`` through
an open upper end: ``simulate --days inf`` would never finish and ``tail --timeout nan`` ended in
a traceback. :class:`FiniteRange` refuses both as a usage error.
"""

from __future__ import annotations

import math

import click


class FiniteRange(click.FloatRange):
    """A ``click.FloatRange`` of finite numbers only."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


POSITIVE = FiniteRange(min=0, min_open=True)  # seconds, rates, days: more than zero

# The simulator's live --speedup, at most a simulated day per wall-clock second: a user's events are
# at least a wall-clock second apart, already a day of its interests' drift (48 h) and a quarter of
# the mean time between its shifts (4 days) there; faster, the shift schedule rounded to 0 ms and
# the simulator looped on it (1e12 sent nothing, forever). At least 0.001: a tiny one overflowed.
MIN_SPEEDUP, MAX_SPEEDUP = 0.001, 86_400.0
SPEEDUP = FiniteRange(min=MIN_SPEEDUP, max=MAX_SPEEDUP)
# Simulated users: each is built before the first event, about 2 KB and 0.3 ms (measured on 20,000)
MAX_SIM_USERS = 1_000_000
SIM_USERS = click.IntRange(1, MAX_SIM_USERS)

# The last ts that is still a date, 9999-12-31T23:59:59.999Z: Python's datetime ends there, and the
# worker's pages and replay's --from / --to read event times with it (Kafka and orjson reach further)
LAST_DATE_MS = 253_402_300_799_999
EVENT_TS = click.IntRange(0, LAST_DATE_MS)  # CONTRACT: ts is a non-negative integer of epoch ms
# torch.manual_seed's largest (numpy's SeedSequence takes any size, but the simulator writes the seed
# into every event_id, which the contract caps at 128 characters)
MAX_SEED = 2**64 - 1
SEED = click.IntRange(0, MAX_SEED)
