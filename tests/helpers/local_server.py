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

__all__ = ["free_port", "start_mlflow", "start_mlflow_server", "stop_process_group", "wait_for_http"]


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


def start_mlflow(arguments: list[str], port: int, log_path: Path, timeout: float = 120) -> subprocess.Popen:
    """``mlflow <arguments>`` (``server`` or ``ui`` and their options) on 127.0.0.1:``port``, answering when this
    returns, its output appended to ``log_path``; stop it with ``stop_process_group`` (mlflow starts uvicorn as a
    child). Telemetry is off: a look at local runs phones no one."""
    command = [str(Path(sys.executable).parent / "mlflow"), *arguments, "--host", "127.0.0.1", "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:  # the child keeps its own handle
        process = subprocess.Popen(
            [*command, "--workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
            start_new_session=True,
        )
    wait_for_http(f"http://127.0.0.1:{port}/health", timeout, process)
    return process


def start_mlflow_server(port: int, store: Path, timeout: float = 120) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:``port`` over the SQLite file ``store`` (artifacts beside it); started
    again on the same port and store, it is the same server back."""
    arguments = ["server", "--backend-store-uri", f"sqlite:///{store}"]
    arguments += ["--artifacts-destination", str(store.parent / "server-artifacts")]
    return start_mlflow(arguments, port, store.parent / "mlflow-server.log", timeout)
