"""Garbage-collector settings for the serving process.

The API allocates a few dozen short-lived containers per request and keeps up to 200K cached
lookups. With CPython's defaults that meant ~200 young collections a second and, as the cache
grew, full collections of 100+ ms that stalled every request in flight (measured under the
bench's uncached mix: 13 full collections, 1.3 s, in 10 s). Now objects alive after start-up
(modules, the app, pools) are frozen out of the collector's view, cached lookups are tuples
the collector stops tracking (`serving.cache.cache_entry`), and young collections run less
often: a young collection walks what survived since the last one, so the threshold bounds
the pause (~3 ms at 5,000).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from mdp.gc_pauses import startup_objects_frozen

YOUNG_THRESHOLD = 5_000


@contextlib.contextmanager
def tuned_for_serving() -> Iterator[None]:
    """While serving: start-up objects frozen, fewer young collections; restored after."""
    previous = gc.get_threshold()
    # no collect before freezing: it would cost every app start (tests start hundreds)
    with startup_objects_frozen():
        gc.set_threshold(YOUNG_THRESHOLD, *previous[1:])
        try:
            yield
        finally:
            gc.set_threshold(*previous)
