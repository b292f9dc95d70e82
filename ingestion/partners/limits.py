"""Sizes no member field reaches: a value past them is a broken row or a broken file."""

# far past any name, email, id or program: a longer value rejects its row
MAX_VALUE_CHARS = 10_000
