"""The warning when a model was trained on another window than the worker keeps."""
from stream_app.model_swap import window_mismatch


def test_window_mismatch_is_reported_with_both_windows():
    card = {"window": {"horizon_s": 259200, "max_events": 128}}
    assert window_mismatch(card, 259200, 128) is None
    msg = window_mismatch(card, 86400, 128)
    assert msg == ("the model was trained on windows of 259200 s / 128 events, the worker keeps "
                   "86400 s / 128 events (INTEREST_HORIZON_S / INTEREST_MAX_EVENTS): its inputs "
                   "differ from training")
    assert window_mismatch({}, 86400, 128) is None  # cards without a window: nothing to compare
