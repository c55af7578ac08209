"""Outputs that appear whole or not at all.

A job killed mid-write (``kill -9``, a lost node) must not leave a truncated table at an output's
name. A script writes every output under a temporary name beside it (same folder, so the final
rename is atomic; same suffix, so writers that pick the format from it still do) and renames them
all at the end::

    output = staged(snakemake.output)
    table.to_parquet(output.table)
    output.commit()

Snakemake offers ``shadow:`` for this, but a shadowed job's log also stays hidden until the job
ends, and progress of long jobs must be visible; so this small module does it by hand.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = ".partial."


def partial_path(path: str | Path) -> Path:
    """The temporary name an output is written under: ``dir/.partial.<name>``."""
    path = Path(path)
    return path.with_name(PREFIX + path.name)


class StagedOutputs:
    """Each named output of a job as its temporary path (``output.table``); ``commit()`` renames them."""

    def __init__(self, outputs, names: tuple[str, ...] = ()) -> None:
        self._final: list[Path] = []
        for name, value in outputs.items():
            if names and name not in names:
                continue
            paths = [value] if isinstance(value, (str, Path)) else list(value)  # expand() gives a list
            partials = [str(self._stage(Path(path))) for path in paths]
            setattr(self, name, partials[0] if isinstance(value, (str, Path)) else partials)

    def _stage(self, path: Path) -> Path:
        partial = partial_path(path)
        _remove(partial)  # left by an earlier killed attempt
        partial.parent.mkdir(parents=True, exist_ok=True)
        self._final.append(path)
        return partial

    def commit(self) -> None:
        """Move every written output into place; fail naming any output the script did not write."""
        missing = [str(path) for path in self._final if not partial_path(path).exists()]
        if missing:
            raise FileNotFoundError(f"the script did not write these outputs: {', '.join(missing)}")
        for path in self._final:
            _remove(path)
            os.replace(partial_path(path), path)


def staged(outputs, *names: str) -> StagedOutputs:
    """Stage a job's named outputs (``snakemake.output``), all of them or only ``names``."""
    return StagedOutputs(outputs, names)


def write_text_atomically(path: str | Path, text: str) -> None:
    """``Path.write_text`` through ``write_bytes_atomically`` (small files outside a staged script, cache
    entries)."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    """``Path.write_bytes`` through a unique temporary name in the same folder, renamed into place: a reader,
    a killed writer or a parallel one never leaves or sees half a file."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{partial_path(path).name}.")
    try:
        os.fchmod(handle, 0o644)  # mkstemp's files are private; these are shared like any output
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
