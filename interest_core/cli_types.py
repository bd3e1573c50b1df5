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
