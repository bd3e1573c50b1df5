"""The exported model as the worker runs it: load a ``model.onnx`` + ``model.json`` pair, check it,
score windows. No torch: numpy, onnxruntime, orjson and the models package's pure-Python encoding.

``LoadedModel.load(path)`` resolves ``path`` ONCE (it is usually a symlink that operators re-point
atomically, CONTRACT.md "Model artifacts") and reads both files from that resolved directory, so a
re-point in the middle of a load cannot mix two pairs. Everything that can be wrong with a pair
raises :class:`ModelError` naming the path and the reason; a pair is only returned after a test
inference gave finite probabilities that sum to 1.

Scoring: each window is encoded with exactly the encoder the spec in ``model.json`` rebuilds
(:class:`interest_core.encoding.Encoder`), sequences are grouped by token length to cut padding,
RIGHT padded (the model's head reads the last real position), and run through one ONNX Runtime
session in batches: :meth:`LoadedModel.plan` pads them into runs, :meth:`LoadedModel.run` runs them
and :meth:`LoadedModel.gather` puts the answers back in order (``predict`` does all three; the
worker runs only the middle one in its scoring thread). An empty window is valid: it encodes to
``[BOS] [END]`` and the model answers with its population-prior-driven distribution (the worker
normally never scores a user without events).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson

from interest_core.encoding import Encoder, pad_right
from interest_core.item_lift import apply as apply_item_lift, window_lifts
from interest_core.rerank import PRIOR_SHAPE, is_prior
from interest_core.window import WindowEvent
from interest_core.artifacts import CARD_FILE, INPUT_NAMES, MODEL_FILE, OUTPUT_NAME, PROFILE_INPUT, content_version
from interest_core.errors import InterestStreamError

REQUIRED_KEYS = ("version", "categories", "encoding", "max_len", "quantized")
SUPPORTED_SCHEMAS = (1,)
SUM_TOL = 1e-4  # probabilities sum to 1 within this (CONTRACT: interests sum to 1 within 1e-4)
DEFAULT_BATCH = 256  # rows per ONNX Runtime call at most
DEFAULT_BATCH_TOKENS = 4096  # padded tokens per run at most (see plan); docs/performance.md, "Scoring"


@dataclass(frozen=True, slots=True)
class Runs:
    """The ONNX Runtime runs that score ``n`` token sequences (:meth:`LoadedModel.plan`): each run's
    inputs, padded, and which of the ``n`` rows it answers."""

    n: int
    rows: list  # (rows,) int64 indices into the sequences, one array per run
    feeds: list  # {input name: array}, one per run


class ModelError(InterestStreamError):
    """A model pair cannot be served: missing, unreadable, inconsistent or failing its test run."""



def _test_windows(encoder: Encoder) -> list[list[WindowEvent]]:
    """Small windows that touch every token family: empty, clicks/browses over all categories, an
    unknown category, searches."""
    t0 = 1_700_000_000_000
    cats = list(encoder.categories)
    full = []
    for i, c in enumerate(cats):
        full.append(WindowEvent(t0 + i * 30_000, "click", c, f"{c}-1"))
        full.append(WindowEvent(t0 + i * 30_000 + 5_000, "browse", c, f"{c}-2", dwell_ms=12_000))
    full.append(WindowEvent(t0 + 10_000_000, "search", query="test query"))
    full.append(WindowEvent(t0 + 10_060_000, "click", "__unknown__", "x-1"))
    return [[], full[:3], full, [WindowEvent(t0, "search", query="hello")]]


class LoadedModel:
    """One checked model pair and its ONNX Runtime session. Build with :meth:`load`.

    Attributes: ``version``, ``categories`` (tuple, output order), ``k``, ``quantized``,
    ``max_len``, ``window`` (training window dict or None), ``resolved_dir`` (str), ``path`` (as
    given), ``encoder``, ``card`` (model.json), ``threads``. Thread-safe for concurrent ``predict``
    calls (ONNX Runtime's ``run`` is)."""

    def __init__(self, *, path, resolved_dir, card, encoder, session, threads):
        self.path = str(path)
        self.resolved_dir = str(resolved_dir)
        self.card = card
        self.version: str = card["version"]
        self.categories: tuple[str, ...] = tuple(card["categories"])
        self.k = len(self.categories)
        self.quantized: bool = bool(card["quantized"])
        self.max_len: int = int(card["max_len"])
        # {"horizon_s", "max_events"} the model was trained with, when the card records it
        self.window: dict | None = card.get("window") if isinstance(card.get("window"), dict) else None
        self.encoder = encoder
        self.pad_id = encoder.pad_id
        self.session = session
        self.threads = threads

    def __repr__(self) -> str:
        return (f"LoadedModel(version={self.version!r}, k={self.k}, quantized={self.quantized}, "
                f"dir={self.resolved_dir!r})")

    # --- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, path, threads: int = 1) -> "LoadedModel":
        """Resolve ``path`` once, read and check the pair there, run a test inference."""
        given = str(path)
        resolved = os.path.realpath(given)

        def fail(reason: str) -> ModelError:
            where = given if resolved == os.path.abspath(given) else f"{given} -> {resolved}"
            return ModelError(f"model at {where}: {reason}")

        if not os.path.exists(resolved):
            # a link to nothing, or a loop of links, was "no such directory" too
            raise fail("a symbolic link to nothing (dangling, or a loop of links)" if os.path.lexists(given)
                       else "no such directory")
        if not os.path.isdir(resolved):
            raise fail("not a directory (expected one holding model.onnx and model.json)")
        card_path, graph_path = Path(resolved, CARD_FILE), Path(resolved, MODEL_FILE)
        for p in (card_path, graph_path):
            try:  # a directory the worker may not enter raised PermissionError here: a traceback
                mode = p.stat().st_mode
            except FileNotFoundError:
                raise fail(f"missing {p.name} (export writes model.onnx and model.json side by side)") from None
            except OSError as exc:  # not allowed in, a loop of links
                raise fail(f"{p.name} cannot be read: {exc}") from None
            if not stat.S_ISREG(mode):  # a directory or a FIFO was "missing model.json"
                raise fail(f"{p.name} is not a file ({'a directory' if stat.S_ISDIR(mode) else 'not a regular file'})")
        try:
            raw = card_path.read_bytes()
        except OSError as exc:  # was "model.json is not readable JSON: [Errno 13] ..."
            raise fail(f"model.json cannot be read: {exc}") from None
        try:
            card = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise fail(f"model.json is not readable JSON: {exc}") from None
        if not isinstance(card, dict):
            raise fail("model.json is not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in card]
        if missing:
            raise fail(f"model.json lacks required keys {missing}")
        if card.get("schema", 1) not in SUPPORTED_SCHEMAS:
            raise fail(f"model.json schema {card.get('schema')!r} is not supported (knows {list(SUPPORTED_SCHEMAS)})")
        version = card["version"]
        if not isinstance(version, str) or not version:
            raise fail(f"model.json version must be a non-empty string, got {version!r}")
        cats = card["categories"]
        if not isinstance(cats, list) or not cats:
            raise fail("model.json categories must be a non-empty list")
        if not all(isinstance(c, str) and c for c in cats):
            raise fail("model.json categories must be non-empty strings")
        if len(set(cats)) != len(cats):
            dup = sorted({c for c in cats if cats.count(c) > 1})
            raise fail(f"model.json categories are not unique (repeated: {dup})")
        if not isinstance(card["quantized"], bool):
            raise fail(f"model.json quantized must be true/false, got {card['quantized']!r}")
        window = card.get("window")  # what training kept; null for older exports
        if window is not None and (not isinstance(window, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in window.values())):
            raise fail(f"model.json window must be null or an object of integers (horizon_s, max_events, "
                       f"profile_retention_s), got {window!r}")
        if not is_prior(card.get("category_prior")):  # the re-ranking's prior (POST /users/{id}/rerank)
            raise fail(f"model.json category_prior must be {PRIOR_SHAPE}, got "
                       f"{orjson.dumps(card['category_prior']).decode()[:60]}")
        spec = card["encoding"]
        if not isinstance(spec, dict):
            raise fail("model.json encoding must be the encoder spec object")
        try:
            encoder = Encoder.from_spec(spec)
        except Exception as exc:  # KeyError, ValueError, tokenizer parse errors
            raise fail(f"the encoding spec does not rebuild an encoder: {type(exc).__name__}: {exc}") from None
        if not isinstance(card["max_len"], int) or card["max_len"] != encoder.max_len:
            raise fail(f"model.json max_len {card['max_len']!r} differs from the encoding's {encoder.max_len}")

        try:
            graph = graph_path.read_bytes()
        except OSError as exc:  # e.g. another user's file, or the directory replaced meanwhile
            raise fail(f"model.onnx cannot be read: {exc}") from None
        session = cls._session(graph, threads, fail)
        ins = [i.name for i in session.get_inputs()]
        outs = [o.name for o in session.get_outputs()]
        want = INPUT_NAMES + ((PROFILE_INPUT,) if encoder.profile_size else ())
        if sorted(ins) != sorted(want) or OUTPUT_NAME not in outs:
            raise fail(f"model.onnx has inputs {ins} and outputs {outs}; expected inputs "
                       f"{list(want)} and output {OUTPUT_NAME!r}")
        for i in session.get_inputs():
            if i.name == PROFILE_INPUT:
                if i.type != "tensor(float)" or len(i.shape) != 2 or i.shape[1] != encoder.profile_size:
                    raise fail(f"model.onnx input {i.name} is {i.type} {i.shape}, expected tensor(float) "
                               f"(batch, {encoder.profile_size}) for the encoding's profile")
            elif i.type != "tensor(int64)":
                raise fail(f"model.onnx input {i.name} is {i.type}, expected tensor(int64)")
        oshape = next(o.shape for o in session.get_outputs() if o.name == OUTPUT_NAME)
        if len(oshape) != 2:
            raise fail(f"model.onnx output {OUTPUT_NAME} has shape {oshape}, expected (batch, k)")
        if isinstance(oshape[1], int) and oshape[1] != len(cats):
            raise fail(f"k mismatch: the graph outputs {oshape[1]} probabilities but model.json lists "
                       f"{len(cats)} categories")
        if tuple(cats) != encoder.categories:
            raise fail("model.json categories differ from the encoding spec's categories")
        expected = content_version(graph, spec)
        if expected != version:
            raise fail(f"version {version!r} does not match the content hash of model.onnx and the "
                       f"encoding ({expected!r}): the pair is inconsistent (mixed or edited files)")

        model = cls(path=given, resolved_dir=resolved, card=card, encoder=encoder, session=session,
                    threads=threads)
        model._self_test(fail)
        return model

    @staticmethod
    def _session(graph: bytes, threads: int, fail):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 4  # fatal only: a failure comes back as the exception; at 3 (errors) a failed
        # run also wrote ONNX Runtime's own coloured line to stderr, beside the one-line error and inside
        # INTEREST_LOG_FORMAT=json's log
        try:
            return ort.InferenceSession(graph, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise fail(f"model.onnx cannot be loaded by ONNX Runtime: {msg}") from None

    def _self_test(self, fail) -> None:
        windows = _test_windows(self.encoder)
        ones = [10**6 * (1 + s) for s in range(len(self.encoder.profile_scales))]  # stored form: millionths
        profiles = [{"t": w[-1].ts, "c": {c: ones for c in self.encoder.categories[:3]}} if w else None
                    for w in windows]
        try:
            probs = self.predict(windows, profiles, batch_size=3)  # two batches, padding included
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise fail(f"test inference failed: {msg}") from None
        if probs.shape != (len(windows), self.k):
            raise fail(f"k mismatch: test inference gave shape {probs.shape}, expected "
                       f"({len(windows)}, {self.k}) for {self.k} categories")
        if not np.all(np.isfinite(probs)):
            raise fail("test inference gave non-finite values")
        if probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
            raise fail(f"test inference gave values outside [0, 1] (min {probs.min():.3g}, max {probs.max():.3g})")
        worst = float(np.abs(probs.sum(1) - 1.0).max())
        if worst > SUM_TOL:
            raise fail(f"test inference probabilities do not sum to 1 (off by {worst:.3g})")

    # --- scoring ------------------------------------------------------------------------
    def encode(self, window: Sequence[WindowEvent]) -> list[int]:
        """Token ids of one window (events in ts order), exactly as training encoded them."""
        return self.encoder.encode(window)

    def profile_inputs(self, profiles: Sequence[dict | None] | None, n: int) -> np.ndarray:
        """(n, P) float32 profile inputs of stored profiles (:mod:`interest_core.window`), each as of
        its newest event (``t``), the vector's ``ts``; None: no profile (zeros)."""
        out = np.zeros((n, self.encoder.profile_size), np.float32)
        if profiles is not None and self.encoder.profile_size:
            vec = self.encoder.profile_vector
            for i, p in enumerate(profiles):
                if p:
                    out[i] = vec(p)
        return out

    def predict(self, windows: Sequence[Sequence[WindowEvent]], profiles: Sequence[dict | None] | None = None,
                batch_size: int = DEFAULT_BATCH, max_batch_tokens: int = DEFAULT_BATCH_TOKENS) -> np.ndarray:
        """Interest distributions (n, k) float64, rows in the order of ``windows``; ``profiles``
        (one per window, or None) are the users' long-term profiles for specs that read one."""
        enc = self.encoder.encode
        return self.predict_ids([enc(w) for w in windows], self.profile_inputs(profiles, len(windows)),
                                batch_size, max_batch_tokens, self.item_lifts(windows))

    def item_lifts(self, windows: Sequence[Sequence[WindowEvent]]) -> np.ndarray | None:
        """(n, k) what each window's items add to the graph's logits (the spec's item lift,
        :mod:`interest_core.item_lift`); None for a model without one."""
        return window_lifts(self.encoder.item_lift, windows)

    def predict_ids(self, seqs: Sequence[Sequence[int]], profiles: np.ndarray | None = None,
                    batch_size: int = DEFAULT_BATCH, max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
                    lifts: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`predict` for already encoded token lists (each 1..max_len ids), their
        profile inputs (n, P) (None: zeros) and their windows' item lifts (:meth:`item_lifts`;
        None: none, as for a model without one): :meth:`plan`, :meth:`run`, :meth:`gather`."""
        runs = self.plan(seqs, profiles, batch_size, max_batch_tokens)
        return self.gather(runs, self.run(runs), lifts)

    def plan(self, seqs: Sequence[Sequence[int]], profiles: np.ndarray | None = None,
             batch_size: int = DEFAULT_BATCH, max_batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Runs:
        """The session runs that score ``seqs`` (each 1..max_len ids) with their profile inputs
        (n, P) (None: zeros): the padded inputs of each run and the rows it answers.

        Sequences are sorted by length and cut into runs of at most ``batch_size`` rows and at
        most ``max_batch_tokens`` padded tokens (rows x longest), so long sequences go in smaller
        runs whose attention scores (rows x heads x T x T) stay cache-sized."""
        n = len(seqs)
        runs = Runs(n, [], [])
        if n == 0:
            return runs
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(f"batch_size and max_batch_tokens must be >= 1, got {batch_size}, {max_batch_tokens}")
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
        if lens.min() < 1 or lens.max() > self.max_len:
            raise ValueError(f"token sequences must hold 1..{self.max_len} ids, got lengths "
                             f"{int(lens.min())}..{int(lens.max())}")
        if profiles is None:
            profiles = np.zeros((n, self.encoder.profile_size), np.float32)
        order = np.argsort(lens, kind="stable")  # group by length: each run pads to its longest
        sorted_lens = lens[order]
        s = 0
        while s < n:
            e = min(n, s + batch_size)
            # rows x longest (the last row's length, lengths ascending) within the token budget
            while e - s > 1 and (e - s) * int(sorted_lens[e - 1]) > max_batch_tokens:
                e = s + max(1, min(e - s - 1, max_batch_tokens // int(sorted_lens[e - 1])))
            idx = order[s:e]
            ids, mask = pad_right([seqs[i] for i in idx], self.pad_id)  # training's convention
            feed = {"input_ids": ids, "attention_mask": mask}
            if self.encoder.profile_size:
                feed[PROFILE_INPUT] = np.ascontiguousarray(profiles[idx], dtype=np.float32)
            runs.rows.append(idx)
            runs.feeds.append(feed)
            s = e
        return runs

    def run(self, runs: Runs) -> list[np.ndarray]:
        """Each planned run's output (rows, k): ONNX Runtime and nothing else, so that in the scoring
        thread it needs the GIL only to start each run and take its result (numpy work in the
        thread, such as the padding, waited for the event loop to give the GIL back)."""
        run = self.session.run
        return [run([OUTPUT_NAME], feed)[0] for feed in runs.feeds]

    def gather(self, runs: Runs, outputs: Sequence[np.ndarray], lifts: np.ndarray | None = None) -> np.ndarray:
        """(n, k) float64 distributions, rows in the order of the planned sequences, from each run's
        output, with the windows' item lifts (:meth:`item_lifts`) added (None: none)."""
        out = np.empty((runs.n, self.k), dtype=np.float64)
        for idx, got in zip(runs.rows, outputs, strict=True):
            out[idx] = got
        return out if lifts is None else apply_item_lift(out, lifts)
