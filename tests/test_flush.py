"""The interval flush's turns: one partition per tick, each partition once per INTEREST_FLUSH_S."""
import asyncio

from stream_app.flush import Flusher, due_partition


def test_each_partition_has_its_turn_once_per_round():
    assert [due_partition(t, 6) for t in range(14)] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1]
    assert [due_partition(t, 1) for t in range(3)] == [0, 0, 0]


class Cache:
    """What flush_turn and flush read of the state cache: the partitions with changes."""

    def __init__(self, changed):
        self.changed = set(changed)
        self.bytes = 0

    def partitions_to_flush(self):
        return sorted(self.changed)

    def users(self):
        return 0


def test_a_tick_flushes_only_the_partition_whose_turn_it_is_and_only_when_it_changed():
    cache = Cache({1, 4})
    flusher = Flusher(table=None, cache=cache, context_topic="t", producer=None, consumer=None)
    flushed = []

    async def flush_partition(p):
        flushed.append((flusher.ticks - 1, p))  # the tick it came at
        cache.changed.discard(p)
        return 3

    flusher._flush_partition = flush_partition

    async def ticks(n):
        return [await flusher.flush_turn(6) for _ in range(n)]

    written = asyncio.run(ticks(6))
    assert flushed == [(1, 1), (4, 4)]  # partitions 0, 2, 3 and 5 had nothing to write
    assert written == [0, 3, 0, 0, 3, 0]
    cache.changed = {0, 1, 2, 3, 4, 5}
    asyncio.run(ticks(3))  # the next round starts again at partition 0
    assert flushed[2:] == [(6, 0), (7, 1), (8, 2)]
