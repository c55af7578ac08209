"""A cache of one JSON file per key, ``<folder>/<key[:2]>/<key>.json``, shared by runs and datasets: the OCR's text
per image (vlmflow.data.ocr.OcrCache) and the teacher's answers (vlmflow.prompting.teacher.TeacherCache).

Entries are written atomically, so parallel jobs and killed ones never leave half an entry; an entry that cannot be
read is treated as missing (redone, never fatal) with a warning naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vlmflow.runtime.outputs import write_text_atomically

log = logging.getLogger(__name__)
T = TypeVar("T")


class JsonCache:
    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder)
        self.what = what  # in warnings: "OCR", "teacher"

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def read(self, key: str, decode: Callable[[dict], T]) -> T | None:
        """``decode`` of the entry, or None when there is none or it cannot be read or decoded."""
        path = self.path(key)
        try:
            return decode(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignoring unreadable %s cache entry %s: %s", self.what, path, error)
            return None

    def write(self, key: str, entry: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(entry, ensure_ascii=False))
