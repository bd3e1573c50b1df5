"""A Faust app that only decodes: the ceiling of any Faust agent on this machine.

Used by bench/ingest.py to split the worker's cost into Faust's per-event machinery and the
project's own work (validation, state, changelog). Reads the same three input topics from the
beginning in its own consumer group, and when it has seen BENCH_FLOOR_EVENTS events writes
``{"events": n, "seconds": s}`` to BENCH_FLOOR_OUT (timed from the first event). With
BENCH_FLOOR_CONSUMER=worker it uses the worker's consumer (stream_app/consumer.py) instead of
Faust's, which delivers messages without Faust's four tasks per message.
"""
import os
import time

import faust
import orjson

prefix = os.environ["INTEREST_TOPIC_PREFIX"]
n_target = int(os.environ["BENCH_FLOOR_EVENTS"])
app = faust.App(f"{prefix}faust-floor-{os.getpid()}",
                broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
                store="memory://", autodiscover=False, web_enabled=False,
                datadir=os.environ["BENCH_FLOOR_DATADIR"],
                consumer_auto_offset_reset="earliest", topic_allow_declare=False,
                topic_disable_leader=True)
if os.environ.get("BENCH_FLOOR_CONSUMER") == "worker":  # the worker's delivery (stream_app/consumer.py)
    from stream_app.consumer import Consumer

    app.transport.Consumer = Consumer
topic = app.topic(*(f"{prefix}events.{t}" for t in ("click", "browse", "search")),
                  key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
seen = {"n": 0, "t0": None}


@app.agent(topic)
async def decode(stream):
    async for event in stream.events():
        if seen["t0"] is None:
            seen["t0"] = time.monotonic()
        orjson.loads(event.message.value)
        seen["n"] += 1
        if seen["n"] == n_target:
            with open(os.environ["BENCH_FLOOR_OUT"], "w") as f:
                f.write(orjson.dumps({"events": seen["n"],
                                      "seconds": time.monotonic() - seen["t0"]}).decode())
