"""What the worker, training and export share, and nothing else: the per-user window and its
long-term profile (:mod:`interest_core.window`), the encoding of a window into token ids
(:mod:`interest_core.encoding`), the names and the content hash of the model artifacts
(:mod:`interest_core.artifacts`) and the project's error base (:mod:`interest_core.errors`).

It imports none of ``stream_app``, ``models`` and ``export`` (a test checks it), so each of them
depends on it and never on each other's internals; no torch, no Kafka.
"""
