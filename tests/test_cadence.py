import pytest

from stream_app.cadence import next_due, pause


def test_a_pass_started_late_by_its_tick_keeps_the_schedule():
    # due at 10.0, its tick came at 10.2: the next is due at 20.0, not 20.2
    assert next_due(10.0, 10.2, 10.0) == 20.0
    assert next_due(20.0, 20.2, 10.0) == 30.0


def test_a_pass_due_exactly_on_a_tick():
    assert next_due(10.0, 10.0, 10.0) == 20.0


def test_after_an_overrun_the_schedule_restarts_from_the_pass_that_ran_late():
    # due at 20.0, but the previous pass ran until 31.5: started at 31.75, the next is 41.75
    assert next_due(20.0, 31.75, 10.0) == 41.75
    # exactly one interval late: 30.0 has just passed, so 40.0 (not a second pass at once)
    assert next_due(20.0, 30.0, 10.0) == 40.0


def test_a_paced_batch_and_its_pause_last_its_work_divided_by_the_share():
    # 0.05 s of work (the model's run and the loop's part) at a share of 0.2: 0.25 s in all, and
    # 0.01 s of it went by before the pause
    assert pause(0.05, 0.01, 0.2) == pytest.approx(0.24)
    # a cycle that waited for the model as long as that already: no pause
    assert pause(0.05, 0.3, 0.2) == 0.0
