"""What the worker, training and export share, and nothing else: the per-user window and its
long-term profile (:mod:`interest_core.window`), the encoding of a window into token ids
(:mod:`interest_core.encoding`), the names and the content hash of the model artifacts
(:mod:`interest_core.artifacts`), the re-ranking blend of candidates with a vector
(:mod:`interest_core.rerank`) and the project's error base (:mod:`interest_core.errors`).

It imports none of ``stream_app``, ``models`` and ``export`` (a test checks it), so each of them
depends on it and never on each other's internals; no torch, no Kafka.
"""
