"""Lease GPUs to one job: distinct device ids per job, held with ``flock`` for as long as the job lives.

Snakemake only counts GPUs (``resources: gpu=n`` against ``--resources gpu=4``); it never tells a job
which devices are its own, so without a lease every fold job would train on device 0. A lease takes
``count`` ids from the machine's pool and holds each as an exclusive ``flock`` on a lock file of its
own. The kernel drops ``flock`` locks when the holding process dies, ``kill -9`` included, so a
crashed job never strands a device and there is no stale-lock cleanup.

Acquisition happens under one short-lived allocator lock and is all-or-nothing: a job that wants two
devices either gets both or holds none while it waits, so two jobs each wanting two of four devices
can never hold one each and wait on each other forever.

The lock directory must be local to the machine (device ids are per machine, and ``flock`` on network
file systems is unreliable): the default is ``/tmp/vlmflow-gpu-locks-<uid>``, never a folder beside
the results, which may be shared between cluster nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

POOL_VARIABLE = "VLMFLOW_GPU_POOL"
LOCK_DIR_VARIABLE = "VLMFLOW_GPU_LOCK_DIR"
ALLOCATOR_LOCK = "allocator.lock"
# While waiting, say so at once and then this often, so a stalled job is visibly waiting, not hung.
WAIT_LOG_SECONDS = 60.0


@dataclass(frozen=True)
class GpuLease:
    """The devices a job holds and the rendezvous port its launcher (torchrun) should use."""

    devices: tuple[str, ...]
    master_port: int | None

    @property
    def env(self) -> dict[str, str]:
        """Variables for the job's subprocesses; empty for a CPU job (``count == 0``)."""
        if not self.devices:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.devices), "MASTER_PORT": str(self.master_port)}


def default_lock_dir() -> Path:
    """``$VLMFLOW_GPU_LOCK_DIR``, else a per-user folder in ``/tmp``.

    Per user so that nobody trips over another user's folder permissions; users sharing GPUs can point
    ``VLMFLOW_GPU_LOCK_DIR`` at one folder they can all write. ``/tmp`` rather than ``$TMPDIR``, which
    batch systems often make per job, and jobs that do not share the folder do not see each other.
    """
    return Path(os.environ.get(LOCK_DIR_VARIABLE) or f"/tmp/vlmflow-gpu-locks-{os.getuid()}")


def gpu_pool(pool: str | Iterable[str | int] | None = None) -> list[str]:
    """The device ids jobs may lease: ``pool``, else ``$VLMFLOW_GPU_POOL``, else ``$CUDA_VISIBLE_DEVICES``,
    else one id per GPU that ``nvidia-smi -L`` lists, else none."""
    if pool is None:
        pool = os.environ.get(POOL_VARIABLE) or None  # VLMFLOW_GPU_POOL= (empty) means unset
    if pool is None:
        pool = os.environ.get("CUDA_VISIBLE_DEVICES")  # here empty means no GPUs, as it does to CUDA
    if pool is None:
        return [str(index) for index in range(_nvidia_smi_gpu_count())]
    return _parse_ids(pool)


def _parse_ids(pool: str | Iterable[str | int]) -> list[str]:
    entries = pool.split(",") if isinstance(pool, str) else pool
    ids: list[str] = []
    for entry in (str(entry).strip() for entry in entries):
        if re.fullmatch(r"-\d+", entry):
            break  # CUDA hides every device from the first invalid index on; "-1" hides them all
        if entry and entry not in ids:
            ids.append(entry)
    return ids


def _nvidia_smi_gpu_count() -> int:
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    # MIG instances are indented under their GPU; count whole GPUs only.
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def free_port() -> int:
    """A TCP port nothing listens on now: the kernel's pick for a socket bound to port 0.

    The port is released before the launcher binds it, so another process could take it in between;
    the kernel picks from a range of thousands, which makes that rare.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def lease_gpus(
    count: int,
    *,
    pool: str | Iterable[str | int] | None = None,
    lock_dir: str | Path | None = None,
    timeout: float | None = None,
    poll_seconds: float = 1.0,
    set_environ: bool = True,
) -> Iterator[GpuLease]:
    """Hold ``count`` distinct devices of the pool (see ``gpu_pool``) for the body of the ``with``.

    Waits, logging, while too few are free; ``timeout`` seconds (None: no limit) then raises
    ``TimeoutError``. Yields a ``GpuLease`` whose ``env`` (``CUDA_VISIBLE_DEVICES``, ``MASTER_PORT``)
    goes to the job's subprocesses; with ``set_environ`` it is also set in ``os.environ`` for the body
    and restored after, for in-process CUDA use. That suits one process per job (Snakemake ``script:``
    and ``shell:``), not ``run:`` blocks, which share one process's environment between threads.
    ``count == 0`` (a CPU job) holds nothing and changes nothing.
    """
    count = int(count)
    if count < 0:
        raise ValueError(f"cannot lease {count} GPUs")
    if count == 0:
        yield GpuLease(devices=(), master_port=None)
        return
    devices = gpu_pool(pool)
    if os.environ.get("SLURM_JOB_ID") and pool is None and os.environ.get(POOL_VARIABLE) is None:
        # SLURM already gave this job its own GPUs in CUDA_VISIBLE_DEVICES, and may number them from 0
        # in every job of a node: locking those numbers would serialize jobs that do not share a device.
        if count <= len(devices):
            log.info(
                "SLURM job %s: using its allocated GPU(s) %s", os.environ["SLURM_JOB_ID"], ",".join(devices[:count])
            )
            lease = GpuLease(devices=tuple(devices[:count]), master_port=free_port())
            with _environment(lease.env if set_environ else {}):
                yield lease
            return
    if count > len(devices):
        found = f"the pool has {len(devices)} ({','.join(devices)})" if devices else "no GPUs were found"
        raise ValueError(
            f"a job asks for {count} GPUs but {found}: ask for fewer (train.gpus_per_run), or list the "
            f"machine's devices in {POOL_VARIABLE} (e.g. {POOL_VARIABLE}=0,1,2,3) or CUDA_VISIBLE_DEVICES"
        )
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    held = _acquire(devices, count, lock_dir, timeout, poll_seconds)
    try:
        lease = GpuLease(devices=tuple(held), master_port=free_port())
        log.info("leased GPU(s) %s, MASTER_PORT %d (locks in %s)", ",".join(lease.devices), lease.master_port, lock_dir)
        with _environment(lease.env if set_environ else {}):
            yield lease
    finally:
        for descriptor in held.values():
            os.close(descriptor)  # closing the only descriptor drops its flock
        log.info("released GPU(s) %s", ",".join(held))


def _acquire(
    devices: list[str], count: int, lock_dir: Path, timeout: float | None, poll_seconds: float
) -> dict[str, int]:
    started = time.monotonic()
    next_message = started
    while True:
        with _allocator(lock_dir):
            held = _try_lock(devices, count, lock_dir)
            holders = None if held else _holders(devices, lock_dir)
        if held:
            return held
        waited = time.monotonic() - started
        if timeout is not None and waited >= timeout:
            raise TimeoutError(f"no {count} of GPUs {','.join(devices)} came free in {timeout:g} s; held by: {holders}")
        if time.monotonic() >= next_message:
            pool = ",".join(devices)
            log.warning("waiting for %d of GPUs %s (%.0f s so far); held by: %s", count, pool, waited, holders)
            next_message += WAIT_LOG_SECONDS
        time.sleep(poll_seconds if timeout is None else min(poll_seconds, max(0.0, timeout - waited)))


@contextlib.contextmanager
def _allocator(lock_dir: Path) -> Iterator[None]:
    # Only the allocator's holder takes device locks, so a multi-device lease is all-or-nothing.
    descriptor = os.open(lock_dir / ALLOCATOR_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _try_lock(devices: list[str], count: int, lock_dir: Path) -> dict[str, int]:
    """Lock the first ``count`` free devices and return {device: descriptor}, or lock none and return {}."""
    held: dict[str, int] = {}
    try:
        for device in devices:
            descriptor = os.open(_lock_path(lock_dir, device), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            held[device] = descriptor
            _write_holder(descriptor)
            if len(held) == count:
                return held
    except BaseException:
        for descriptor in held.values():
            os.close(descriptor)
        raise
    for descriptor in held.values():
        os.close(descriptor)
    return {}


def _lock_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _write_holder(descriptor: int) -> None:
    # Only for the waiting message: the lock itself is the flock, not this text.
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"pid {os.getpid()} since {datetime.now():%Y-%m-%d %H:%M:%S}".encode(), 0)


def _holders(devices: list[str], lock_dir: Path) -> str:
    """Who holds each device, from the text its holder wrote into the lock file."""
    described = []
    for device in devices:
        path = _lock_path(lock_dir, device)
        with open(path, "a+", encoding="utf-8") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                holder = "free"  # a killed holder's text stays behind; only the flock tells
            except BlockingIOError:
                lock_file.seek(0)
                holder = lock_file.read().strip() or "held"
        described.append(f"GPU {device}: {holder}")
    return "; ".join(described)


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
