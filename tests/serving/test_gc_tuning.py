"""The serving process's collector settings apply while serving and are undone after."""

import gc

from serving.gc_tuning import YOUNG_THRESHOLD, tuned_for_serving


def test_start_up_objects_are_frozen_while_serving_and_everything_is_restored_after() -> None:
    before = gc.get_threshold()
    with tuned_for_serving():
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
