"""The model this worker serves, and its hot swap (:class:`ModelHolder`, one per app).

The model pair (model.onnx + model.json) is read from the directory ``INTEREST_MODEL_DIR``
resolves to. Every ``INTEREST_MODEL_POLL_S`` seconds the path is resolved again and both files
are stat-ed; when the target or a file changed, the pair is loaded, checked with a test inference
and swapped in if its ``version`` or its model.json differs from the serving one's (a card
corrected in place, e.g. its ``window``, keeps the version). A pair that fails is refused with an
error and the old model keeps serving.
"""
from __future__ import annotations

import logging
import os

from . import metrics

log = logging.getLogger("interest_stream.scoring")


def window_mismatch(card: dict, horizon_s: int, max_events: int, profile_retention_s: int | None = None) -> str | None:
    """A warning when the model was trained on another window (or profile retention) than the
    worker keeps."""
    trained = card.get("window") or {}
    if not trained:
        return None
    problems = []
    if (trained.get("horizon_s"), trained.get("max_events")) != (horizon_s, max_events):
        problems.append(f"the model was trained on windows of {trained.get('horizon_s')} s / "
                        f"{trained.get('max_events')} events, the worker keeps {horizon_s} s / {max_events} "
                        "events (INTEREST_HORIZON_S / INTEREST_MAX_EVENTS)")
    if "profile_retention_s" in trained and profile_retention_s is not None \
            and trained["profile_retention_s"] != profile_retention_s:
        problems.append(f"the model's profiles restart after {trained['profile_retention_s']} s idle, the "
                        f"worker's after {profile_retention_s} s (INTEREST_PROFILE_RETENTION_S)")
    if not problems:
        return None
    return "; ".join(problems) + ": its inputs differ from training"


def fingerprint(path: str) -> tuple:
    """The directory ``path`` resolves to, and both files' mtime, size and change time. Both files
    count: a pair copied into place one file after the other is refused while it is mixed, and
    loaded once the second file is there, whichever came last. The inode's change time too: a pair
    refused as unreadable is loaded once its permissions are fixed."""
    resolved = os.path.realpath(path)
    out: list = [resolved]
    for name in ("model.json", "model.onnx"):
        try:
            st = os.stat(os.path.join(resolved, name))
            out += [st.st_mtime_ns, st.st_size, st.st_ctime_ns]
        except OSError:
            out += [-1, -1, -1]
    return tuple(out)


class ModelHolder:
    def __init__(self, path: str, threads: int, window: tuple[int, int, int] | None = None) -> None:
        self.path = path
        self.threads = threads
        self.window = window  # (horizon_s, max_events, profile_retention_s) the worker keeps
        self.model = None
        self._seen: tuple | None = None  # (resolved dir, both files' mtime and size) last tried
        # set by `interest-stream worker`, which loads the model before Faust starts (to refuse a
        # bad one in one line): (its fingerprint, taken before, and the model), served by
        # load_initial instead of loading the pair a second time
        self.preloaded: tuple | None = None
        self.priors: dict[str, dict | None] = {}  # version -> category_prior of every model served (rerank)

    def load_initial(self):
        """Load the first model; raises ModelError (the worker refuses to start)."""
        from .model_runtime import ModelError

        if not self.path:
            raise ModelError("INTEREST_MODEL_DIR is not set: the worker needs an exported model "
                             "(model.onnx + model.json; see `interest-stream export`)")
        preloaded, self.preloaded = self.preloaded, None
        if preloaded is not None and (preloaded[1].path, preloaded[1].threads) == (self.path, self.threads):
            seen, self.model = preloaded
        else:
            try:
                seen, self.model = self.load_first(self.path, self.threads)
            except ModelError as exc:  # as `interest-stream worker` says it: the setting to change
                raise ModelError(f"INTEREST_MODEL_DIR: {exc}") from None
        self._seen = seen
        self.priors[self.model.version] = self.model.card.get("category_prior")
        metrics.MODEL.labels(self.model.version).set(1)
        log.info("serving model %s from %s", self.model.version, self.model.resolved_dir)
        self._check_window(self.model)
        return self.model

    @staticmethod
    def load_first(path: str, threads: int) -> tuple:
        """(the pair's fingerprint, the model): the fingerprint is taken before the load, so a pair
        deployed while this one loads is loaded at the next poll. Raises ModelError."""
        from .model_runtime import LoadedModel

        seen = fingerprint(path)
        return seen, LoadedModel.load(path, threads=threads)

    def _check_window(self, model) -> None:
        if self.window is not None:
            problem = window_mismatch(model.card, *self.window)
            if problem:
                log.warning("%s", problem)

    def poll(self) -> bool:
        """Load the model again if the path now names another pair, or the pair's files changed;
        True when swapped (another version, or the same one with another model.json).
        Blocking (file I/O and a test inference): call it in an executor."""
        from .model_runtime import LoadedModel, ModelError

        fp = fingerprint(self.path)
        if fp == self._seen:
            return False
        self._seen = fp
        try:
            candidate = LoadedModel.load(self.path, threads=self.threads)
        except Exception as exc:  # ModelError, or anything else a file can do: the worker keeps serving
            metrics.MODEL_REFUSED.inc()
            log.error("refused the model at %s (still serving %s): %s", fp[0],
                      self.model.version if self.model else None,
                      exc if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}")
            return False
        old = self.model
        same = old is not None and candidate.version == old.version
        if same and candidate.card == old.card:  # the serving pair again (e.g. a refused deploy undone)
            return False
        self.model = candidate  # one reference swap: a running pass keeps the model it started with
        self.priors[candidate.version] = candidate.card.get("category_prior")
        if old is not None:
            metrics.MODEL.remove(old.version)
        metrics.MODEL.labels(candidate.version).set(1)
        log.warning("model swapped: %s -> %s%s", old.version if old else None, candidate.version,
                    " (same graph and encoding, another model.json)" if same else "")
        self._check_window(candidate)
        return True

    @property
    def version(self) -> str | None:
        return self.model.version if self.model is not None else None
