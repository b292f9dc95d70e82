"""The in-process cache of mart lookups and what keeps it honest.

Rows are cached per (partner_id, employee_id), including "not found", and the whole cache is
dropped when the mart is rebuilt. Two signals say so: dbt's post-hook NOTIFYs
`mdp_mart_refreshed` (seen at once by a LISTEN connection), and, because a listening
connection can drop silently, a poll of `serving.mart_refreshes` plus the mart's table OID
every couple of seconds. `serving.app.Runtime` wires both to `LookupCache.clear`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable
from typing import Final

from serving.eligibility import MartRow

MISSING: Final = object()  # "not in the cache", distinct from a cached None ("not found")


def cache_entry(member_ref: str, row: MartRow | None) -> tuple[str | dt.date | None, ...]:
    """A lookup as a plain tuple of strings and dates. The collector stops tracking such
    tuples after one young collection; a NamedTuple stays tracked, and 200K cached rows made
    every full collection walk them (100+ ms pauses under the bench's uncached mix)."""
    return (member_ref,) if row is None else (member_ref, *row)


def from_cache_entry(entry: tuple[str | dt.date | None, ...]) -> tuple[str, MartRow | None]:
    """(member_ref, row or None for "not found") back from `cache_entry`."""
    return entry[0], MartRow._make(entry[1:]) if len(entry) > 1 else None  # type: ignore[return-value]


class LookupCache:
    """A bounded dict whose entries all go at once on `clear()`.

    `generation` guards against a race: a lookup that started before a refresh must not
    store its (stale) answer after the clear, so `put` takes the generation read before the
    query and ignores the value if the cache was cleared meanwhile.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self.generation = 0
        self._entries: dict[Hashable, object] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> object:
        return self._entries.get(key, MISSING)

    def put(self, key: Hashable, value: object, generation: int) -> None:
        if generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            # dicts keep insertion order: dropping the oldest entry is a cheap FIFO eviction
            del self._entries[next(iter(self._entries))]
        self._entries[key] = value

    def clear(self) -> None:
        self._entries.clear()
        self.generation += 1
