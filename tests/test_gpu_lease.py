"""The GPU lease on a simulated pool: lock files in tmp_path stand in for a machine's devices."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from vlmflow.runtime.gpu_lease import POOL_VARIABLE, gpu_pool, lease_gpus

from conftest import BIN, without_slurm_controller

POOL = "0,1,2,3"

# A job that leases devices, says which, then keeps them until it is killed or its time is up.
HOLDER = """
import sys, time
from vlmflow.runtime.gpu_lease import lease_gpus
with lease_gpus({count}, pool="0,1,2,3", lock_dir="{lock_dir}") as lease:
    print(",".join(lease.devices), flush=True)
    time.sleep({seconds})
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No pool variables from the machine running the tests."""
    for name in (POOL_VARIABLE, "VLMFLOW_GPU_LOCK_DIR", "CUDA_VISIBLE_DEVICES", "MASTER_PORT", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def test_concurrent_leases_get_distinct_devices_and_set_the_environment(tmp_path):
    with lease_gpus(2, pool=POOL, lock_dir=tmp_path) as first:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(first.devices)
        with lease_gpus(2, pool=POOL, lock_dir=tmp_path, set_environ=False) as second:
            assert len(first.devices) == len(second.devices) == 2
            assert set(first.devices) | set(second.devices) == {"0", "1", "2", "3"}
            assert second.env == {
                "CUDA_VISIBLE_DEVICES": ",".join(second.devices),
                "MASTER_PORT": str(second.master_port),
            }
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(first.devices)
            with pytest.raises(TimeoutError, match="GPU 0: pid"):
                with lease_gpus(1, pool=POOL, lock_dir=tmp_path, timeout=0):
                    pass
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and "MASTER_PORT" not in os.environ


def test_waiting_lease_gets_the_device_when_its_holder_lets_go(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(lock_dir=tmp_path, count=1, seconds=1.5)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "0"
        started = time.monotonic()
        with lease_gpus(1, pool="0", lock_dir=tmp_path, timeout=20, poll_seconds=0.1) as lease:
            waited = time.monotonic() - started
        assert lease.devices == ("0",)
        assert 0.5 < waited < 15
        assert "waiting for 1 of GPUs 0" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_a_lease_that_cannot_get_all_its_devices_holds_none(tmp_path):
    with lease_gpus(3, pool=POOL, lock_dir=tmp_path):
        with pytest.raises(TimeoutError, match="GPU 3: free"):
            with lease_gpus(2, pool=POOL, lock_dir=tmp_path, timeout=0):
                pass
        with lease_gpus(1, pool=POOL, lock_dir=tmp_path, timeout=0) as lease:
            assert lease.devices == ("3",)


def test_count_zero_is_a_no_op(tmp_path):
    with lease_gpus(0, pool="", lock_dir=tmp_path / "locks") as lease:
        assert lease.devices == () and lease.env == {} and lease.master_port is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


def test_more_devices_than_the_pool_fails_at_once_even_when_all_are_held(tmp_path):
    with lease_gpus(4, pool=POOL, lock_dir=tmp_path):
        started = time.monotonic()
        with pytest.raises(ValueError, match=r"asks for 5 GPUs but the pool has 4 \(0,1,2,3\).*VLMFLOW_GPU_POOL"):
            with lease_gpus(5, pool=POOL, lock_dir=tmp_path, timeout=10):
                pass
        assert time.monotonic() - started < 1


def test_no_gpus_found_says_how_to_name_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    with pytest.raises(ValueError, match="no GPUs were found.*VLMFLOW_GPU_POOL"):
        with lease_gpus(1, lock_dir=tmp_path):
            pass


def test_locks_are_released_when_the_job_raises(tmp_path):
    with pytest.raises(RuntimeError, match="training failed"):
        with lease_gpus(3, pool=POOL, lock_dir=tmp_path):
            raise RuntimeError("training failed")
    with lease_gpus(4, pool=POOL, lock_dir=tmp_path, timeout=0) as lease:
        assert lease.devices == ("0", "1", "2", "3")


def test_a_job_killed_with_sigkill_gives_its_devices_back(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(lock_dir=tmp_path, count=4, seconds=60)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == POOL
        with pytest.raises(TimeoutError):
            with lease_gpus(1, pool=POOL, lock_dir=tmp_path, timeout=0.2, poll_seconds=0.05):
                pass
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        started = time.monotonic()
        with lease_gpus(4, pool=POOL, lock_dir=tmp_path, timeout=5) as lease:
            assert lease.devices == ("0", "1", "2", "3")
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()


def test_master_port_is_free_to_bind(tmp_path):
    with lease_gpus(1, pool=POOL, lock_dir=tmp_path) as lease:
        assert os.environ["MASTER_PORT"] == str(lease.master_port)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", lease.master_port))
            server.listen()


def test_pool_comes_from_the_argument_then_the_variables_then_nvidia_smi(tmp_path, monkeypatch):
    fake_smi = tmp_path / "nvidia-smi"
    fake_smi.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
        "echo '  MIG 1g.10gb Device 0: (UUID: MIG-b)'\n"
        "echo 'GPU 1: NVIDIA H100 (UUID: GPU-c)'\n"
    )
    fake_smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_pool() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 1,3")
    assert gpu_pool() == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,3")
    assert gpu_pool() == ["2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_pool() == []
    monkeypatch.setenv(POOL_VARIABLE, "4,5,6")
    assert gpu_pool() == ["4", "5", "6"]
    assert gpu_pool([7, 6]) == ["7", "6"]


# Ten jobs needing 1 or 2 GPUs; each records what it held and when, in wall-clock time.
SNAKEFILE = """
GPUS = {gpus}

rule all:
    input:
        expand("records/{{job}}.json", job=GPUS),

rule hold:
    output:
        "records/{{job}}.json",
    resources:
        gpu=lambda wildcards: GPUS[wildcards.job],
    script:
        "hold_gpus.py"
"""

HOLD_SCRIPT = """
import json, os, time
from pathlib import Path
from vlmflow.runtime.gpu_lease import lease_gpus

with lease_gpus(snakemake.resources.gpu, poll_seconds=0.1) as lease:
    start = time.time()
    visible = os.environ["CUDA_VISIBLE_DEVICES"]
    time.sleep(0.8)
    end = time.time()
record = {"job": snakemake.wildcards.job, "devices": lease.devices, "visible": visible, "start": start, "end": end}
Path(snakemake.output[0]).write_text(json.dumps(record))
"""


def test_snakemake_jobs_never_share_a_device(tmp_path):
    gpus = {f"job{index}": 2 if index % 3 == 0 else 1 for index in range(10)}
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(gpus=gpus))
    (tmp_path / "hold_gpus.py").write_text(textwrap.dedent(HOLD_SCRIPT))
    env = without_slurm_controller({**os.environ, POOL_VARIABLE: POOL, "VLMFLOW_GPU_LOCK_DIR": str(tmp_path / "locks")})
    command = [str(BIN / "snakemake"), "--cores", "8", "--resources", "gpu=4", "--directory", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]

    records = [json.loads(path.read_text()) for path in sorted((tmp_path / "records").glob("*.json"))]
    assert {record["job"]: len(record["devices"]) for record in records} == gpus
    for record in records:
        assert len(set(record["devices"])) == len(record["devices"])
        assert record["visible"] == ",".join(record["devices"])
    assert {device for record in records for device in record["devices"]} == {"0", "1", "2", "3"}
    for first in records:
        for second in records:
            overlapping = first is not second and first["start"] < second["end"] and second["start"] < first["end"]
            if overlapping:
                assert not set(first["devices"]) & set(second["devices"]), (first, second)
    # The check above means something only if jobs did run side by side.
    assert any(
        first["start"] < second["end"] and second["start"] < first["end"]
        for first in records
        for second in records
        if first is not second
    )


def test_under_slurm_the_allocated_devices_are_used_without_locks(tmp_path, monkeypatch):
    # SLURM numbers each job's GPUs from 0: two jobs on one node both see device 0, and must not wait.
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with (
        lease_gpus(1, lock_dir=tmp_path, timeout=0.1) as first,
        lease_gpus(1, lock_dir=tmp_path, timeout=0.1) as second,
    ):
        assert first.devices == second.devices == ("0",)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and first.master_port != second.master_port
    with pytest.raises(ValueError, match="asks for 2 GPUs"):
        with lease_gpus(2, lock_dir=tmp_path):
            pass
