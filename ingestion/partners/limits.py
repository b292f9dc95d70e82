"""Sizes no member field reaches: a value past them is a broken row or a broken file."""

# far past any name, email, id or program: a longer value rejects its row
MAX_VALUE_CHARS = 10_000
# the longest member id the eligibility API takes in a check: a longer one loaded could
# never be checked, so its row is rejected at import
MAX_MEMBER_ID_CHARS = 64
