"""The worker with parts of its per-event work taken out, for bench/ingest_split.py (not a test).

``faust -A ingest_split_app worker`` with ``BENCH_SPLIT`` set to:

* ``hold``: each event is only counted (no validation, no state) and released at once, but still
  read through ``stream.noack()``, held until its partition's flush and acknowledged then: the
  worker's app, tables, timers and web server, and Faust's machinery as the worker drives it;
* ``align``: the same with the worker's own :class:`stream_app.alignment.Aligner` in front.

The full worker is ``stream_app.app`` itself. Everything else is the worker's code unchanged: the
replacements are made here, after it registered its agents and before Faust starts.
"""
import os

from stream_app.app import app  # what Faust runs; first, as stream_app.ingest imports from it
from stream_app import ingest, metrics
from stream_app.alignment import Aligner

VARIANTS = ("hold", "align")
variant = os.environ.get("BENCH_SPLIT")
if variant not in VARIANTS:
    raise SystemExit(f"BENCH_SPLIT must be one of {', '.join(VARIANTS)}, got {variant!r}")


def count_only(m, deliveries) -> None:
    """:func:`stream_app.ingest.process` (same parameters) without validation or state: accepted."""
    metrics.ACCEPTED.inc()
    return None  # no dead letter


class PassThrough(Aligner):
    """Releases every message when it arrives (no alignment)."""

    def add(self, topic, partition, timestamp, message, now) -> bool:
        self.queues.setdefault(partition, []).append(message)
        return True

    def ready(self, partition, caught_up, now):
        waiting = self.queues.pop(partition, None)
        return iter(waiting or ())

    def expired(self, caught_up, now):
        for p in list(self.queues):
            yield from self.ready(p, caught_up, now)

    def drain(self, partitions=None):
        for p in list(self.queues) if partitions is None else [p for p in partitions if p in self.queues]:
            yield from self.ready(p, None, 0.0)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())


REPLACED = ingest.process  # what count_only stands in for (tests/test_packaging.py compares the two)
ingest.process = count_only  # apply_released looks the name up at each call
if variant == "hold":
    app.aligner = PassThrough(app.aligner.topics)
