"""When the MLflow tracking server cannot be reached: log to a local store instead, and say so at the end.

Hours of fine-tuning must not fail because a tracking server is down, misnamed or behind a lost VPN.
The store is chosen once, when the experiment is created (the first job of a run): if the configured
server does not answer, every job of the run logs to a local SQLite store instead, so that parent and
child runs stay together and nothing is lost, and Snakemake's end-of-run message says so.

Nothing is sent to the server later. The local store is complete and browsable with ``mlflow ui``;
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


def unreachable_reason(uri: str, attempts: int = 3) -> str | None:
    """Why the tracking server at ``uri`` does not answer, or None when it does (local stores always do)."""
    if not uri.startswith(("http://", "https://")):
        return None
    from mlflow.tracking import MlflowClient  # here, not at the top: the Snakefile imports this module

    # MLflow's own retries would wait minutes per call; ours are few and short.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
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


def choose_store(uri: str, workdir: str | Path = ".") -> tuple[str, dict]:
    """The tracking URI this run logs to, and what to record about a fallback (empty when none)."""
    from vlmflow.tracking.runs import absolute_tracking_uri

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
