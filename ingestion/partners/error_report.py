"""The per-file error report sent back to the partner: `Line,<key field>,Errors`."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from ingestion.partners.config import PartnerConfig
from ingestion.partners.validation import Reject


def key_column_label(config: PartnerConfig) -> str:
    """The partner's own name for the identifier column (SSNs are shown as last 4 only)."""
    identifier = config.inbound.identifier
    for source, target in config.inbound.column_mappings.items():
        if target == identifier:
            return f"{source} (last 4)" if identifier == "ssn" else source
    return identifier


def write_error_report(path: Path, config: PartnerConfig, rejects: Iterable[Reject]) -> int:
    """Write rejects sorted by line; returns how many rows were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Line", key_column_label(config), "Errors"])
        for reject in sorted(rejects, key=lambda r: r.line):
            errors = "; ".join(reject.errors)
            writer.writerow([reject.line, _inert(reject.key or ""), _inert(errors)])
            count += 1
    return count


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert(text: str) -> str:
    """A cell a spreadsheet shows as text: a partner's value starting with `=` (or + - @)
    would run as a formula when the report is opened in Excel (CSV injection, OWASP)."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
