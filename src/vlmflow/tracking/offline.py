"""When the MLflow tracking server cannot be reached: log to a local store instead, and say so at the end.

Hours of fine-tuning must not fail because a tracking server is down, misnamed or behind a lost VPN.
The store is chosen once, when the experiment is created (the first job of a run): if the configured
server does not answer, every job of the run logs to a local SQLite store instead, so that parent and
child runs stay together and nothing is lost, and Snakemake's end-of-run message says so.

Nothing of that run is sent to the server later. (A server lost *during* a run is another matter: the
fine-tunes keep what they could not send and ``make sync-mlflow`` sends it, see vlmflow.tracking.buffer;
``pending_notice`` is its end-of-run message.) The local store is complete and browsable with ``mlflow ui``;
the experiment reference ``results/mlflow_experiment.json`` keeps naming it, so later runs keep
logging there. Deleting that file makes the next run try the server again, and reruns every job
that logs to MLflow (training included): that is the price of one experiment per store.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
OFFLINE_STORE = "sqlite:///results/mlflow-offline.db"
# One marker per run a lost server missed (vlmflow.tracking.buffer writes them, `make sync-mlflow` sends them).
PENDING_DIR = "results/mlflow-pending"


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (which can be lost), not a local store."""
    return uri.startswith(("http://", "https://"))


def bound_http_retries(max_retries: int = 0, timeout: int = 10) -> None:
    """Make MLflow give up on a server that does not answer in seconds: its default retries wait minutes
    per call (7 retries, doubling from 2 s up to 120 s). A person's own settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout))


def unreachable_reason(uri: str, attempts: int = 3) -> str | None:
    """Why the tracking server at ``uri`` does not answer, or None when it does (local stores always do)."""
    if not is_server(uri):
        return None
    from mlflow.tracking import MlflowClient  # here, not at the top: the Snakefile imports this module

    bound_http_retries()  # MLflow's own retries would wait minutes per call; ours are few and short
    reason = None
    for attempt in range(attempts):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            return None
        except Exception as error:  # any failure to answer: refused, timed out, 5xx, proxy page
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            log.warning("MLflow server %s did not answer (attempt %d of %d): %s", uri, attempt + 1, attempts, reason)
            time.sleep(2**attempt)
    return reason


def absolute_tracking_uri(uri: str, workdir: str | Path = ".") -> str:
    """Make a relative ``sqlite:///results/mlflow.db`` absolute, so every job writes to the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        path = (Path(workdir) / uri[len(prefix) :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"{prefix}{path}"
    return uri


def choose_store(uri: str, workdir: str | Path = ".") -> tuple[str, dict]:
    """The tracking URI this run logs to, and what to record about a fallback (empty when none)."""
    uri = absolute_tracking_uri(uri, workdir)
    reason = unreachable_reason(uri)
    if reason is None:
        return uri, {}
    offline = absolute_tracking_uri(OFFLINE_STORE, workdir)
    log.warning("MLflow server %s unreachable; this run logs to %s instead", uri, offline)
    return offline, {"unreachable": {"uri": uri, "error": reason}}


def unreachable_notice(experiment_reference: str | Path) -> str | None:
    """The end-of-run message when the run logged to the local store instead of the server, else None."""
    path = Path(experiment_reference)
    if not path.is_file():
        return None
    reference = json.loads(path.read_text(encoding="utf-8"))
    if "unreachable" not in reference:
        return None
    server, store = reference["unreachable"], reference["tracking_uri"]
    return (
        f"MLflow: the tracking server {server['uri']} could not be reached ({server['error']}).\n"
        f"Every run was logged to the local store {store} instead; nothing is lost. Browse it with:\n"
        f"  mlflow ui --backend-store-uri {store} --host 127.0.0.1\n"
        f"Nothing is sent to the server later. To log there, start the server and delete {path}: "
        "the next run then logs to the server, rerunning every job that logs to MLflow."
    )


def pending_notice(pending_dir: str | Path = PENDING_DIR) -> str | None:
    """The end-of-run message naming the runs a lost tracking server missed and their local stores, else None."""
    markers = sorted(Path(pending_dir).glob("*.json"))
    if not markers:
        return None
    pending = [json.loads(marker.read_text(encoding="utf-8")) for marker in markers]
    servers = ", ".join(sorted({entry["server"] for entry in pending}))
    browse = "\n".join(
        f"  {entry['run_name']}: mlflow ui --backend-store-uri {entry['buffer']} --host 127.0.0.1" for entry in pending
    )
    return (
        f"MLflow: the tracking server {servers} stopped answering during the run; {len(pending)} fine-tune "
        "run(s) wait in local stores to be sent to it. Nothing is lost.\n"
        "Once the server answers again, send them with:\n"
        f"  make sync-mlflow    (or: python -m vlmflow.tracking.buffer {pending_dir})\n"
        f"Until then, browse each with:\n{browse}"
    )
