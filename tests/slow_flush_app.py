"""The worker with a pause after each partition's flush (for tests that kill it in the middle of
one): ``faust -A slow_flush_app worker`` with ``SLOW_FLUSH_PAUSE_S`` set. Test harness only; the
worker itself has no such hook."""
import asyncio
import os

from stream_app.app import app

_flush_partition = app.flusher._flush_partition


async def _slow_flush_partition(p: int, reason: str = "interval") -> int:
    n = await _flush_partition(p, reason)
    if n:
        await asyncio.sleep(float(os.environ.get("SLOW_FLUSH_PAUSE_S", "1")))
    return n


app.flusher._flush_partition = _slow_flush_partition
