"""The worker whose fetcher skips records once, as faust-streaming's does around an assignment (its
issue 216): ``faust -A fetcher_skip_app worker`` with ``SKIP_FETCH=topic:partition:start:end``, so
offsets ``start``..``end - 1`` of that partition are not handed over the first time they are
fetched, and ``SKIP_FETCH_PAUSE_S``: the record after them waits that long first, so the agent has
applied what came before it when the worker finds the hole. The whole fetcher waits meanwhile: at
3 s, more than the aligner's 2 s for a topic that delivers nothing, the other topics' events went
ahead of the skipped clicks and 5 of them were `late`, until the aligner counted its wait to the
beginning of a completed fetch (:mod:`stream_app.alignment`). Test harness only; the worker itself
has no such hook."""
import asyncio
import os

from stream_app.app import app  # noqa: F401  (the worker's app, which faust -A runs)
from stream_app.consumer import Consumer

_topic, _partition, _start, _end = os.environ["SKIP_FETCH"].rsplit(":", 3)
_partition, _start, _end = int(_partition), int(_start), int(_end)
_pause = float(os.environ.get("SKIP_FETCH_PAUSE_S", "1"))
_given_once: set[int] = set()
_hand_over = Consumer._hand_over


async def _skipped() -> None:
    """What the fetcher awaits for a record it skips: nothing reaches the agent."""


async def _after_a_pause(consumer, message):
    await asyncio.sleep(_pause)
    return await _hand_over(consumer, message)


def _skipping_hand_over(self, message):
    if message.topic == _topic and message.partition == _partition and message.offset not in _given_once:
        if _start <= message.offset < _end:
            _given_once.add(message.offset)
            return _skipped()
        if message.offset == _end:
            _given_once.add(message.offset)
            return _after_a_pause(self, message)
    return _hand_over(self, message)


Consumer._hand_over = _skipping_hand_over
