"""The one core the live worker and ``replay`` share: an input message applied to a user's state,
and users' states scored into contract vectors. No Kafka, no Faust: each driver keeps the states
where it likes (the worker in :class:`stream_app.state_cache.StateCache`, replay in a dict) and
calls these functions, so the two cannot drift apart.

Scoring is split where the worker needs it split: :func:`snapshot` copies what a state's score
depends on and encodes it (in the event loop, between events), :func:`infer` runs ONNX Runtime
(the worker plans the runs in the event loop, :func:`plan`, runs them in a thread while events keep
arriving and change the states, and gathers their outputs, :func:`gather`), and :func:`publish`
turns the result into vectors, each with drift against the vector last published for its user,
and records it in that user's state. :func:`score_states` does all three at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import state as st, vectors as vector_math
from .events import Rejected, validate

LATE = Rejected("late", "older than the user's window by more than the grace period")
DROPPED = Rejected("late", "at or before the newest event this worker no longer holds for the user (an idle "
                   "user's window is dropped, and so are the oldest rows of a state over "
                   "INTEREST_MAX_STATE_BYTES), so a repeat of one of them cannot be told from a new event")


@dataclass(frozen=True, slots=True)
class Ingested:
    outcome: str  # accepted, duplicate (duplicate_offset: known by its input offset), late or a dead-letter reason
    state: dict | None  # the changed state (accepted only)
    rejected: Rejected | None  # why it is a dead letter (late included)


def ingest(expected_type: str, key: bytes | None, value: bytes | None, lookup: Callable[[bytes], dict | None],
           limits: st.Limits, now_ms: int, future_ms: int, origin=None, record: bool = True) -> Ingested:
    """One input message through validation and the user's state (``lookup(key)``, called only
    for a valid event). A duplicate or late event leaves the state unchanged.

    ``origin``: the input record (its ``topic``, ``partition`` and ``offset``: Faust's message; the
    record itself, so that nothing is allocated for it per event; None: not known). An event that
    would be ``late`` at or before the offset the state recorded was applied or judged before, and
    is read again after its id left the state: a ``duplicate`` (outcome ``duplicate_offset``).
    ``record``: every record of its partition before it was read (False while a hole the fetcher
    skipped is unsettled at or before it), so an accepted event records it in the state
    (:func:`stream_app.state.note_input`). The check needs no such condition: the state's offset
    was recorded under it (or capped since, :func:`stream_app.state.cap_input`)."""
    result = validate(expected_type, key, value, now_ms, future_ms)
    if isinstance(result, Rejected):
        return Ingested(result.reason, None, result)
    state = lookup(key)
    outcome, new = st.apply(state, result, limits, now_ms)
    if outcome in ("late", "dropped"):
        if origin is not None and st.seen_input(state, origin.topic, origin.partition, origin.offset):
            return Ingested("duplicate_offset", None, None)
        return Ingested("late", None, LATE if outcome == "late" else DROPPED)
    if new is not None and origin is not None and record:
        st.note_input(new, origin.topic, origin.partition, origin.offset)
    return Ingested(outcome, new, None)


@dataclass(frozen=True, slots=True)
class ScoreInput:
    """What one user's vector depends on, copied out of the state at one moment."""

    key: bytes
    seq: int  # the state's seq: the vector saw every event up to it
    newest: int  # the window's newest ts (the vector's ts)
    events: int  # events in the window
    window: list  # WindowEvent, oldest first (what the model reads)
    ids: list  # the window's tokens (model.encoder.encode)
    profile: np.ndarray  # (P,) the model's profile input
    lift: np.ndarray | None = None  # (k,) what the window's items add (the spec's item lift), None: none
    # the state it was copied from, for its identity only: a user forgotten and created again while
    # the model runs has another state, which this vector must not go into (None: not checked)
    source: dict | None = None


def snapshot(key: bytes, state: dict, model, horizon_ms: int) -> ScoreInput:
    """Copy and encode one state's scoring inputs (the state itself keeps changing afterwards).
    The encoding is done here, not in :func:`infer`: Python work in the scoring thread would
    contend for the GIL with the event loop, while ONNX Runtime releases it, so the thread's run
    overlaps the loop's work on the other core."""
    prof = model.profile_inputs([st.profile(state)], 1)[0]
    window = st.window_events(state)
    lift = model.encoder.item_lift.vector(window) if model.encoder.item_lift is not None else None  # (k,)
    return ScoreInput(key, state["seq"], state["newest"], st.events_in_window(state, horizon_ms),
                      window, model.encoder.encode(window), prof, lift, state)


def infer(model, inputs: Sequence[ScoreInput], batch: int) -> np.ndarray:
    """(n, k) interest distributions of ``inputs``: :func:`plan`, ``model.run``, :func:`gather`."""
    runs = plan(model, inputs, batch)
    return gather(model, inputs, runs, model.run(runs))


def plan(model, inputs: Sequence[ScoreInput], batch: int):
    """The model's runs on ``inputs``, padded (:meth:`~stream_app.model_runtime.LoadedModel.plan`).
    The worker plans in the event loop, so that its scoring thread does nothing but ``model.run``:
    numpy work there waited for the event loop to give the GIL back (``bench/score_overlap.py``)."""
    profiles = np.stack([i.profile for i in inputs]) if inputs and model.encoder.profile_size else None
    return model.plan([i.ids for i in inputs], profiles, batch)


def gather(model, inputs: Sequence[ScoreInput], runs, outputs) -> np.ndarray:
    """(n, k) distributions of ``inputs`` from the outputs of their planned runs, with their windows'
    item lifts."""
    lifts = np.stack([i.lift for i in inputs]) if inputs and model.encoder.item_lift is not None else None
    return model.gather(runs, outputs, lifts)


def publish(inputs: Sequence[ScoreInput], probs: np.ndarray, model, lookup: Callable[[bytes], dict | None]
            ) -> list[tuple[bytes, dict, dict]]:
    """Vectors of scored inputs as ``(key, vector, state)``: drift against the user's last
    published vector, which the vector then replaces in the state (``lookup`` gives the state
    now). A user forgotten meanwhile is skipped, and so is one whose state is another object than
    the snapshot's: forgotten and created again (its old interests must not be published after the
    forget), or read again from the table after a flush dropped it (still pending: scored next pass)."""
    out = []
    for inp, row in zip(inputs, probs):
        state = lookup(inp.key)
        if state is None or (inp.source is not None and state is not inp.source):
            continue
        vec = vector_math.build_vector(inp.key.decode(), row, model.categories, inp.newest, model.version,
                                       inp.events, state.get("out"))
        st.record_vector(state, vec, inp.seq)
        out.append((inp.key, vec, state))
    return out


def score_states(pairs: Sequence[tuple[bytes, dict]], model, horizon_ms: int, batch: int
                 ) -> list[tuple[bytes, dict, dict]]:
    """Score ``(key, state)`` pairs in order and record each vector in its state (replay, tests)."""
    states = dict(pairs)
    inputs = [snapshot(k, s, model, horizon_ms) for k, s in pairs]
    return publish(inputs, infer(model, inputs, batch), model, states.get)
