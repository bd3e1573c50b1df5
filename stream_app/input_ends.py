"""The owned input partitions' end offsets, asked of the broker by a client of their own.

The consumer learns a partition's end only from its fetches, and it fetches a partition only once
the records it holds of it were handed over: while the agent waits (a full cache, a slow model),
the end it knows stays where its last fetch found it, and the lag with it, however much input
arrives. So the worker asks the broker every :data:`END_REFRESH_S` (``stream_app.app``).

Not through Faust's consumer: its thread runs calls on two workers, which also run the fetches and
the commits, and aiokafka retries a partition without a leader (its broker down) until the 90 s
request timeout. Reads of the ends would have held the fetching and committing of every other
partition meanwhile. A kafka-python consumer of no group, in a thread of its own, waits alone, at
most :data:`END_READ_TIMEOUT_MS` a read, one read at a time.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

log = logging.getLogger("interest_stream")

END_REFRESH_S = 5.0  # how often the worker asks the broker for its input partitions' ends (the lag)
END_READ_TIMEOUT_MS = 10_000  # the longest one read waits (a partition without a leader)


class InputEnds:
    """The end offset of each input partition asked for last, by (topic, partition); a read that
    fails or times out keeps the ends known before."""

    def __init__(self, make_reader: Callable[[], object]) -> None:
        self._make, self._reader = make_reader, None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="input-ends")
        self.ends: dict[tuple[str, int], int] = {}

    def _read(self, tps: list[tuple[str, int]]) -> dict:
        from kafka import TopicPartition

        if self._reader is None:
            self._reader = self._make()
        return self._reader.end_offsets([TopicPartition(t, p) for t, p in tps], timeout_ms=END_READ_TIMEOUT_MS)

    async def refresh(self, tps) -> None:
        """Read the ends of ``tps`` (topic partitions); none: nothing is known any more."""
        tps = [(tp[0], tp[1]) for tp in tps]
        if not tps:
            self.ends = {}
            return
        try:
            got = await asyncio.get_running_loop().run_in_executor(self._thread, self._read, tps)
        except Exception as exc:  # a broker away, a rebalance: the fetches' ends still count
            log.debug("input end offsets not read: %r", exc)
            return
        self.ends = {(tp.topic, tp.partition): end for tp, end in got.items() if end is not None}

    def get(self, tp) -> int | None:
        return self.ends.get((tp[0], tp[1]))

    def close(self) -> None:
        """Close the reader in its own thread, after a read under way."""
        self._thread.submit(self._close)
        self._thread.shutdown(wait=False)

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.close()
