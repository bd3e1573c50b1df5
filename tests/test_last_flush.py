"""The last flush before a rebalance or shutdown (stream_app.app.InterestApp._consumer_wait_empty)
waits for the answers to the vector batches still under way, so that it writes the users of a
refused batch as pending for the partitions' next owner."""
import asyncio
import time

import faust

import stream_app.app as app_module
from stream_app.app import app


def test_the_last_flush_comes_after_the_answer_to_every_vector_batch_or_the_wait(monkeypatch):
    order = []

    class Flusher:
        async def flush(self, reason, partitions=None):
            order.append(("flush", reason))

    async def faust_wait_empty(self, consumer, logger):
        order.append("faust waits for acknowledgements")

    monkeypatch.setattr(app, "flusher", Flusher())
    monkeypatch.setattr(faust.App, "_consumer_wait_empty", faust_wait_empty)
    monkeypatch.setattr(app_module, "LETTER_WAIT_S", 0.3)

    async def run():
        loop = asyncio.get_running_loop()
        refused, unanswered = loop.create_future(), loop.create_future()
        refused.add_done_callback(lambda f: order.append("refused: its users pending again"))
        monkeypatch.setattr(app, "vector_sends", {refused, unanswered})
        loop.call_later(0.05, refused.set_exception, RuntimeError("MessageSizeTooLargeError"))
        t0 = time.monotonic()
        await app._consumer_wait_empty(None, None)
        return time.monotonic() - t0

    waited = asyncio.run(run())
    assert order == ["refused: its users pending again", ("flush", "rebalance"), "faust waits for acknowledgements"]
    assert 0.3 <= waited < 1.0  # the unanswered batch is waited for LETTER_WAIT_S, no longer
