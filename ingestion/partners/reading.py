"""Which reader a file gets: pyarrow's parser for a plain CSV, else the streaming readers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingestion.partners.batches import RowBatch, batches_from_rows
from ingestion.partners.config import Inbound
from ingestion.partners.csv_arrow import read_csv_batches
from ingestion.partners.formats import mapped_fields, read_rows

# Arrow rows are compact and the whole file is in memory already; fewer, larger batches
# spare the validator per-batch passes (its repeat check is linear in the keys seen so far)
ARROW_BATCH_ROWS = 50_000


def read_batches(path: Path, inbound: Inbound, size: int, arrow: bool = True) -> Iterator[RowBatch]:
    """The rows of a partner file in batches (of `size` rows from the streaming readers), with
    the same values, line numbers and row problems whichever reader serves it.

    With `arrow`, a CSV may be served by pyarrow's parser, and iterating may then raise
    ArrowPathUnfit: throw away what was read and ask again with `arrow=False`."""
    if arrow and inbound.format == "csv":
        batches = read_csv_batches(path, inbound, max(size, ARROW_BATCH_ROWS))
        if batches is not None:
            return iter(batches)
    return batches_from_rows(read_rows(path, inbound), mapped_fields(inbound), size)
