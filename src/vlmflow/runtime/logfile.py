"""Send a workflow script's logging and warnings to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to(path: str | Path) -> None:
    """Log to ``path`` (created with its folder) and mirror to stderr, so `snakemake` shows progress."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(path, mode="w", encoding="utf-8"), logging.StreamHandler(sys.stderr)]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught  # the error that stops a job belongs in the rule's log too


def _log_uncaught(kind, error, traceback) -> None:
    logging.getLogger("vlmflow").critical("%s: %s", kind.__name__, error, exc_info=(kind, error, traceback))
