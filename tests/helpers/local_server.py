"""Servers started on this machine for a while (the MLflow UI, the tests' servers): a free port of
127.0.0.1, a wait until one answers, and a stop of its whole process group (servers such as mlflow
start their workers as children)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.error import URLError

from vlmflow.runtime.gpu_lease import free_port  # the library's one free_port (torchrun's MASTER_PORT)

__all__ = ["free_port", "start_mlflow_server", "stop_process_group", "wait_for_http"]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers, failing early if the server process has died."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server serving {url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (URLError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and all its children: SIGTERM, then SIGKILL."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start_mlflow_server(port: int, store: Path, timeout: float = 120) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:``port`` over the SQLite file ``store`` (artifacts beside it),
    answering when this returns; stop it with ``stop_process_group``. Started again on the same port and
    store, it is the same server back."""
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{store}",
        "--artifacts-destination",
        str(store.parent / "server-artifacts"),
    ]
    log = open(store.parent / "mlflow-server.log", "a")  # noqa: SIM115 - the server writes it while it runs
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", timeout, process)
    return process
