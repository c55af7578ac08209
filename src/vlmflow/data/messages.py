"""How error messages name records: a few ids, never a flood."""

from __future__ import annotations

from collections.abc import Iterable


def name_ids(ids: Iterable, limit: int = 10) -> str:
    """A few ids for an error message; a 10,000-record test set must not flood the log."""
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
