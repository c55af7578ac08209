"""Staged outputs: written under temporary names, renamed into place only when the whole job succeeded."""

import threading

import pandas as pd
import pytest
from snakemake.iocontainers import Namedlist

from vlmflow.runtime.outputs import partial_path, staged, write_text_atomically


def job_outputs(tmp_path):
    return Namedlist(
        fromdict={
            "table": str(tmp_path / "out" / "table.parquet"),
            "reports": [str(tmp_path / "out" / f"fold{k}.csv") for k in range(2)],
        }
    )


def test_outputs_appear_only_at_commit_and_keep_their_suffix(tmp_path):
    output = staged(job_outputs(tmp_path))
    assert output.table.endswith(".partial.table.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(output.table)
    for path in output.reports:
        pd.DataFrame({"b": [2]}).to_csv(path)
    assert not (tmp_path / "out" / "table.parquet").exists()  # a kill here leaves no file at the real name
    output.commit()
    assert pd.read_parquet(tmp_path / "out" / "table.parquet")["a"].tolist() == [1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fold0.csv", "fold1.csv", "table.parquet"]


def test_a_script_that_fails_midway_leaves_the_real_names_untouched(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "table.parquet").write_text("previous")
    output = staged(job_outputs(tmp_path))
    with open(output.table, "w") as half:
        half.write("trunc")  # then the job dies: commit never runs
    assert (tmp_path / "out" / "table.parquet").read_text() == "previous"
    again = staged(job_outputs(tmp_path))  # the rerun starts from a clean temporary name
    assert not partial_path(tmp_path / "out" / "table.parquet").exists()
    with pytest.raises(FileNotFoundError, match="fold0.csv"):
        pd.DataFrame({"a": [1]}).to_parquet(again.table)
        again.commit()


def test_atomic_writes_from_parallel_writers_leave_one_whole_shared_file(tmp_path):
    path = tmp_path / "entry.json"
    texts = [f'{{"writer": {n}, "padding": "{"x" * 100_000}"}}' for n in range(8)]
    writers = [threading.Thread(target=write_text_atomically, args=(path, text)) for text in texts]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert path.read_text(encoding="utf-8") in texts  # one writer's whole text, never a mix
    assert [entry.name for entry in tmp_path.iterdir()] == ["entry.json"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644
