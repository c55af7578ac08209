"""A tracking server lost during a run loses nothing: fine-tunes log locally, send at the end, or later.

With an HTTP tracking server, each fine-tune's trainer (LLaMA-Factory through transformers' MLflowCallback)
logs into a run of a local SQLite store of its own, ``results/mlflow-buffer/<variant>/<name>/mlflow.db``,
never into the server. Logging to a
server lost mid-training drops every metric batch after MLflow's retries (the callback logs in the
background: measured about 250 s per batch with MLflow's default retries), and the callback's end of the run
then blocks about 8 minutes and raises, failing the fine-tune after its hours of training. The job's own
run on the server is opened when the job starts, under its variant's parent run, as before.

When the fine-tune ends, the job copies the local run into its server run: every metric with its steps and
timestamps, params, tags, artifacts and the final status (``copy_run``, through ``MlflowClient.log_batch``
and ``log_artifacts``). If the server does not answer then, the job still succeeds and leaves a marker,
``results/mlflow-pending/<local run id>.json``, naming both runs. (A job that starts while the server is
down trains too; its server run is opened when the run is sent, and its run reference then names it.)
Snakemake's last lines list the markers
(``vlmflow.tracking.offline.pending_notice``), and ``make sync-mlflow``, i.e.
``python -m vlmflow.tracking.buffer [PENDING_DIR]``, sends them once the server is back. A copy sends only
what the server run lacks, so a sync run twice (or one cut off half-way) makes no duplicates. A server that
never comes back leaves every fine-tune browsable with ``mlflow ui`` on the local store.

The price: the server shows a fine-tune's curves when it ends, not while it trains. The copy is MLflow's
public client calls: ``mlflow-export-import`` (last PyPI release 1.2.0, 2023, before MLflow 3) imports an
exported run as a new run, whereas here the server run exists already, holds the job's parent and name,
and must not get duplicates from a second sync.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from vlmflow.runtime.outputs import write_text_atomically
from vlmflow.tracking.offline import PENDING_DIR, bound_http_retries, unreachable_reason
from vlmflow.tracking.runs import ensure_experiment, read_run, retry_locked, start_child_run

log = logging.getLogger(__name__)
# One local store per fine-tune, results/mlflow-buffer/<variant>/<name>/: each is written by one job alone,
# so that no SQLite file has two writers, on one machine or, on a cluster, over a shared file system.
BUFFER_DIR = "results/mlflow-buffer"
# Tagged on a local run: the server run it is sent to.
SERVER_RUN_TAG = "vlmflow.server_run_id"
# Tags a copy leaves alone: the server run has its own parent and name, and needs no pointer to itself.
KEPT_TAGS = {"mlflow.parentRunId", "mlflow.runName", SERVER_RUN_TAG}
# MlflowClient.log_batch's limits per call (mlflow.utils.validation).
METRICS_PER_BATCH, PARAMS_OR_TAGS_PER_BATCH = 1000, 100


def buffer_experiment(experiment: str, run_name: str, workdir: str | Path = ".") -> tuple[str, str]:
    """The local store of the fine-tune ``run_name`` (``<variant>/<name>``) and the id of ``experiment`` in it."""
    folder = (Path(workdir) / BUFFER_DIR / run_name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, ensure_experiment(MlflowClient(uri), experiment, folder / "artifacts")


def buffered_fine_tune(
    parent: dict, run_file: str | Path, variant: str, name: str, tags: dict[str, str], fine_tune: Callable
) -> str | None:
    """Run ``fine_tune(store, run_id)`` into a local run, then send that run to its server run; return the
    server run's id, or None while the run waits to be sent.

    The server run is opened under the variant's parent when the job starts; if the server is down then,
    when the run is sent (at the job's end, or by the sync)."""
    bound_http_retries()
    server = parent["tracking_uri"]
    try:
        server_run_id = start_child_run(
            MlflowClient(server), parent["experiment_id"], parent["run_id"], variant, name, **tags
        )
    except Exception:
        reason = unreachable_reason(server, attempts=1)
        if reason is None:
            raise  # the server answers: a real error, not an outage
        log.warning("MLflow server %s is down (%s); the run opens when it is sent", server, reason)
        server_run_id = None
    run_name = f"{variant}/{name}"
    store, experiment_id = buffer_experiment(parent["experiment"], run_name)
    local = MlflowClient(store)
    local_tags = {"variant": variant, **tags} | ({SERVER_RUN_TAG: server_run_id} if server_run_id else {})
    local_run_id = retry_locked(lambda: local.create_run(experiment_id, tags=local_tags, run_name=run_name)).info.run_id
    pending = {
        "run_name": run_name,
        "server": server,
        "server_run_id": server_run_id,
        "experiment_id": parent["experiment_id"],
        "parent_run_id": parent["run_id"],
        "variant": variant,
        "name": name,
        "tags": tags,
        "buffer": store,
        "buffer_run_id": local_run_id,
        "run_reference": str(Path(run_file).resolve()),
    }
    try:
        fine_tune(store, local_run_id)
    except BaseException:
        retry_locked(lambda: local.set_terminated(local_run_id, "FAILED"))  # the trainer left it RUNNING
        raise
    finally:  # what training logged up to a failure is sent (or kept) too
        pending = send_or_keep(pending)
    return pending["server_run_id"]


def open_server_run(pending: dict) -> dict:
    """``pending`` with the server run its job could not open (the server was down): opened now, under the
    same parent, name and tags; the local run and the job's run reference then name it."""
    client = MlflowClient(pending["server"])
    where = pending["experiment_id"], pending["parent_run_id"], pending["variant"], pending["name"]
    server_run_id = start_child_run(client, *where, **pending["tags"])
    local = MlflowClient(pending["buffer"])
    retry_locked(lambda: local.set_tag(pending["buffer_run_id"], SERVER_RUN_TAG, server_run_id))
    reference = Path(pending["run_reference"])
    if reference.is_file():  # written when the job ended without a run; the sync gives it one
        write_text_atomically(reference, json.dumps({**read_run(reference), "run_id": server_run_id}, indent=2) + "\n")
    return {**pending, "server_run_id": server_run_id}


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def metric_identity(metric: Metric) -> tuple:
    """What makes two logged values the same entry (NaN never equals itself, so it is named)."""
    value = "nan" if math.isnan(metric.value) else metric.value
    return metric.key, metric.step, metric.timestamp, value


def copy_run(source: MlflowClient, source_run_id: str, target: MlflowClient, target_run_id: str) -> None:
    """Copy into the target run what it lacks of the source run: every metric entry (steps and timestamps
    kept), params, tags (but ``KEPT_TAGS``) and artifacts; then give it the source's status and end time."""
    run = retry_locked(lambda: source.get_run(source_run_id))
    present = target.get_run(target_run_id).data
    params = [Param(key, value) for key, value in run.data.params.items() if key not in present.params]
    tags = [
        RunTag(key, value)
        for key, value in run.data.tags.items()
        if key not in KEPT_TAGS and present.tags.get(key) != value
    ]
    metrics = []
    for key in run.data.metrics:
        sent = (
            {metric_identity(metric) for metric in target.get_metric_history(target_run_id, key)}
            if key in present.metrics
            else set()
        )
        history = retry_locked(lambda key=key: source.get_metric_history(source_run_id, key))
        metrics += [metric for metric in history if metric_identity(metric) not in sent]
    for batch in batches(params, PARAMS_OR_TAGS_PER_BATCH):
        target.log_batch(target_run_id, params=batch)
    for batch in batches(tags, PARAMS_OR_TAGS_PER_BATCH):
        target.log_batch(target_run_id, tags=batch)
    for batch in batches(metrics, METRICS_PER_BATCH):
        target.log_batch(target_run_id, metrics=batch)
    if source.list_artifacts(source_run_id):
        with tempfile.TemporaryDirectory() as folder:
            # Sent again whole: the same paths are overwritten with the same files.
            target.log_artifacts(target_run_id, source.download_artifacts(source_run_id, "", folder))
    target.set_terminated(target_run_id, run.info.status, end_time=run.info.end_time)
    log.info("sent %d metric entries, %d params, %d tags to %s", len(metrics), len(params), len(tags), target_run_id)


def send_or_keep(pending: dict, pending_dir: str | Path = PENDING_DIR) -> dict:
    """Copy a local run into its server run (opening it first if its job could not); if the server fails
    us, leave a pending marker instead. ``pending`` names both runs (``buffered_fine_tune`` writes it).

    Return it with the server run's id, and with ``error`` saying why it was not sent (None when it was):
    the job succeeds either way, nothing is lost."""
    bound_http_retries()
    marker = Path(pending_dir) / f"{pending['buffer_run_id']}.json"
    try:
        if pending["server_run_id"] is None:
            pending = open_server_run(pending)
        copy_run(
            MlflowClient(pending["buffer"]),
            pending["buffer_run_id"],
            MlflowClient(pending["server"]),
            pending["server_run_id"],
        )
    except Exception as error:  # any way a server fails: refused, timed out, 5xx, a proxy's error page
        pending = {**pending, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(marker, json.dumps(pending, indent=2) + "\n")
        log.warning("MLflow server did not take %s (%s); kept, see %s", pending["run_name"], pending["error"], marker)
        return pending
    marker.unlink(missing_ok=True)
    return {**pending, "error": None}


def sync_pending(pending_dir: str | Path = PENDING_DIR) -> int:
    """Send every pending run to its server; return the exit status (0 when all were sent).

    A server still down is said once, and its runs are kept, markers and local store alike."""
    bound_http_retries()
    markers = sorted(Path(pending_dir).glob("*.json"))
    if not markers:
        print(f"MLflow: nothing to send ({pending_dir} holds no pending run).")
        return 0
    pending = [json.loads(marker.read_text(encoding="utf-8")) for marker in markers]
    servers = sorted({entry["server"] for entry in pending})
    down = {server: reason for server in servers if (reason := unreachable_reason(server, attempts=1)) is not None}
    failed = 0
    for entry in pending:
        if entry["server"] in down:
            failed += 1
        elif (sent := send_or_keep(entry, pending_dir))["error"] is None:
            print(f"MLflow: sent {entry['run_name']} to {entry['server']} (run {sent['server_run_id']}).")
        else:
            failed += 1
            print(f"MLflow: could not send {entry['run_name']}, kept: {sent['error']}", file=sys.stderr)
    for server, reason in down.items():
        waiting = [entry["run_name"] for entry in pending if entry["server"] == server]
        print(
            f"MLflow: the tracking server {server} is unreachable ({reason}). Nothing was sent and nothing is lost: "
            f"{len(waiting)} run(s) stay in {pending_dir} and the local store ({', '.join(waiting)}). "
            "Start the server, then run `make sync-mlflow` again.",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":  # python -m vlmflow.tracking.buffer [PENDING_DIR]: send what a lost server missed
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(sync_pending(sys.argv[1] if len(sys.argv) > 1 else PENDING_DIR))
