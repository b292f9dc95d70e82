"""The serving process's collector settings apply while serving and are undone after."""

import datetime as dt
import gc

from serving.cache import cache_entry, from_cache_entry
from serving.eligibility import MartRow
from serving.gc_tuning import YOUNG_THRESHOLD, tuned_for_serving


def test_start_up_objects_are_frozen_while_serving_and_everything_is_restored_after() -> None:
    before = gc.get_threshold()
    with tuned_for_serving():
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cached_lookups_leave_the_collectors_view_and_come_back_as_they_went_in() -> None:
    row = MartRow(dt.date(1980, 5, 17), "hypertension", dt.date(2024, 1, 1), None, "active")
    found, not_found = cache_entry("m_1", row), cache_entry("m_2", None)
    gc.collect()
    assert not gc.is_tracked(found) and not gc.is_tracked(not_found)
    assert from_cache_entry(found) == ("m_1", row)
    assert isinstance(from_cache_entry(found)[1], MartRow)
    assert from_cache_entry(not_found) == ("m_2", None)
