"""Keeping the garbage collector's full passes out of latency-critical work.

A full collection walks every object the collector tracks. In a process that has imported
dlt, pandas, pyarrow and paramiko that took ~60 ms (measured in a partner import's child
process), and one came due inside nearly every import: a sixth of a 50K-row file's load.
Objects alive before the work (modules, configs, pools) are frozen out of the collector's
view while it runs; what the work itself allocates is still collected. Freezing is O(1).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """While the block runs, the objects that existed before it are not scanned for cycles;
    after it they are (and are collected if garbage by then)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
