"""The reader of the input partitions' end offsets (stream_app.input_ends), over a fake reader."""
from __future__ import annotations

import asyncio
import threading

from kafka.errors import KafkaTimeoutError

from stream_app.input_ends import END_READ_TIMEOUT_MS, InputEnds


class Reader:
    def __init__(self, ends: dict, fail: bool = False):
        self.ends, self.fail, self.calls, self.threads, self.closed = ends, fail, [], set(), False

    def end_offsets(self, tps, timeout_ms):
        self.calls.append((sorted((tp.topic, tp.partition) for tp in tps), timeout_ms))
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise KafkaTimeoutError("Failed to get offsets by timestamps in 10000 ms")
        return {tp: self.ends[(tp.topic, tp.partition)] for tp in tps}

    def close(self):
        self.closed = True


def test_ends_are_read_in_a_thread_of_their_own_and_a_failed_read_keeps_the_last():
    reader = Reader({("events.click", 0): 12, ("events.click", 1): 0})
    ends = InputEnds(lambda: reader)

    async def run():
        await ends.refresh([("events.click", 0), ("events.click", 1)])
        assert ends.ends == {("events.click", 0): 12, ("events.click", 1): 0}
        reader.ends[("events.click", 0)] = 20
        reader.fail = True  # a broker away: the ends known before stay
        await ends.refresh([("events.click", 0)])
        assert ends.get(("events.click", 0)) == 12
        reader.fail = False
        await ends.refresh([("events.click", 0)])
        assert ends.get(("events.click", 0)) == 20 and ends.get(("events.click", 1)) is None
        await ends.refresh([])  # nothing owned (a rebalance): nothing known, no read
        assert ends.ends == {}

    asyncio.run(run())
    assert [c[1] for c in reader.calls] == [END_READ_TIMEOUT_MS] * 3
    assert len(reader.calls) == 3 and all(name.startswith("input-ends") for name in reader.threads)
    ends.close()
    ends._thread.shutdown(wait=True)
    assert reader.closed
