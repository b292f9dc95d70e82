"""Start-up objects leave the collector's view for a block of work and come back after it."""

import gc

from mdp.gc_pauses import startup_objects_frozen


def test_objects_from_before_the_block_are_frozen_during_it_and_thawed_after() -> None:
    before = [[] for _ in range(10)]  # tracked containers that exist before the block
    with startup_objects_frozen():
        assert gc.get_freeze_count() >= len(before)
        during = []
        assert gc.is_tracked(during)
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_made_during_the_block_is_still_collected() -> None:
    with startup_objects_frozen():
        cycle: list = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
