"""MLflow conventions: where runs go, how they are named, tagged and nested.

Tracking URI: `MLFLOW_TRACKING_URI` when set (a team server), else SQLite at `mlruns/mlflow.db` with
artifacts under `mlruns/artifacts`. One experiment per dataset; a parent run per (backbone, strategy,
classifier) carrying mean ± sd metrics; a nested child run per fold. Every run carries the tags `dataset`,
`backbone`, `strategy`, `classifier`, `fold`, `protocol`, `git_commit`, `dvc_exp` (+ `dataset_digest`,
`dataset_n_images` and the other `dataset_*` counts of data.prepared.dataset_info when the dataset is prepared, and
`sonotune.fingerprint`, the configuration's hash).

What MLflow's UI shows (checked in MLflow 3.17's UI sources): an experiment without the tag `mlflow.experimentKind`
opens as a GenAI experiment (traces page, assistant panel), so `ensure_experiment` tags each one
`custom_model_development` (`EXPERIMENT_KIND`). The runs table keeps its state in the URL: `?viewStateShareKey=K`
loads the state saved in the experiment tag `mlflow.sharedViewState.K` (what its *Share* button writes), so each
experiment carries `PARENT_VIEW` (`parent_runs_view`: the parent runs, the configuration and AUC columns, best first)
and `runs_table_url` is the link that opens it. The compare page's parallel-coordinates plot opens on the first three
*differing* params in sorted order: every parent run logs its configuration as `config.backbone`, `config.classifier`
and `config.strategy` (`CONFIG_PARAMS`: "config." sorts before every other param we log), the strategy as text
(`strategy_label`, " 15 %") so the plot draws it as a category, not a number axis. One metric name per meaning:
`auc_mean` is the mean AUC over folds, logged first (`log_summary`: the compare view's first metric). Run names are
unique per experiment (`unique_run_name`: the DVC experiment's name when there is one, else a counter); the
experiment's description (`mlflow.note.content`) says how to filter and compare; the prepared dataset is an MLflow
dataset input (`log_dataset`); a logged model is named and tagged like its run (`model_name`, `model_tags`).

Crash recovery: a stage that resumes passes the old parent's id to `parent_run` (MLflow resumes it);
`discard_unfinished_folds` marks the interrupted fold runs FAILED and deletes them (soft delete, still in the
store), `fail_stale_runs` marks any other run of the same fingerprint still RUNNING as FAILED. So a rerun
after `kill -9` leaves one parent per configuration and no run RUNNING.

Faults (docs/failures.md): against a server, MLflow's HTTP client is given a short retry budget
(`HTTP_DEFAULTS`, each overridable in the environment) so a server lost mid-stage ends the stage in seconds, not
MLflow's default ~4 min per call; `failure_line` turns whatever MLflow raised into one line naming the URI (password
masked by `mask_credentials`); `check_local_store` refuses an empty, corrupt or read-only `mlruns/mlflow.db`
before any training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import time
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sonotune.errors import SonotuneError, mask_credentials, require_writable

LOCAL_STORE = Path("mlruns")
FINGERPRINT_TAG = "sonotune.fingerprint"
CONFIG_PARAMS = ("config.backbone", "config.classifier", "config.strategy")
HEADLINE = "auc_mean"
NOTE_TAG = "mlflow.note.content"
KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"  # else the UI opens on GenAI traces
PARENT_VIEW = "parent-runs"  # the key of the runs table's saved view (`parent_runs_view`)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's UI reads a saved view from the experiment tag PREFIX + key
PARENTS_FILTER = "tags.fold = 'all'"
TABLE_METRICS = (HEADLINE, "auc_sd", "auc_ci_low", "auc_ci_high")  # the runs table's AUC columns
RECORD_FILE = "mlflow.json"  # in runs/D/B/S/mlp/: the finetune parent's configuration params and tags
# tags of a run that say which configuration and fold it is (copied onto the models it logs)
CONFIGURATION_TAGS = ("dataset", "backbone", "strategy", "classifier", "fold", "repeat", "protocol", "dvc_exp")
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) wait ~4 min per call on a lost server, and a
# failing stage makes several calls (log, end fold run, end parent run): 2 retries, 1 s backoff and a 15 s
# timeout surface a refused connection in ~3 s per call and keep a slow upload alive (the timeout is per read)
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def local_uri() -> str:
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_uri()


def _uses_local_store() -> bool:
    # compared with the URI, not the variable's presence: mlflow.set_tracking_uri also sets the variable
    return tracking_uri() == local_uri()


def shorten_retries() -> None:
    """MLflow's HTTP retry budget cut to seconds (`HTTP_DEFAULTS`), unless the environment sets its own."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def configure() -> str:
    """Point MLflow at the project's store; return the URI."""
    import mlflow

    shorten_retries()
    if _uses_local_store():
        (LOCAL_STORE / "artifacts").mkdir(parents=True, exist_ok=True)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(dataset: str) -> str:
    return f"sonotune-{dataset}"


def experiment_description(dataset: str) -> str:
    """The experiment's description (Markdown, shown above its runs): what a run is and how to compare them."""
    return (
        f"**sonotune study on `{dataset}`.** One parent run per configuration (backbone × fine-tuning strategy × "
        f"classifier), one nested run per fold.\n\n"
        f"Compare configurations: open the runs table with `?viewStateShareKey={PARENT_VIEW}` after `/runs` in "
        f"the address (the parent runs, filtered by `{PARENTS_FILTER}`, with the configuration and AUC columns, best "
        f"first; add `and tags.classifier = 'svm'` or `and tags.dvc_exp = '<experiment>'` to narrow), select them "
        f"and press *Compare*. Its parallel-coordinates plot opens on {', '.join(CONFIG_PARAMS)} and `{HEADLINE}` "
        f"(the mean ROC AUC over folds). The report stage adds the 95 % interval `auc_ci_low`/`auc_ci_high`.")


def parent_runs_view() -> dict:
    """The runs table as MLflow's UI restores it from a saved view (its search facets and UI state): the parent
    runs, best `HEADLINE` first, with the configuration params and the AUC metrics as columns."""
    columns = [f"params.`{name}`" for name in CONFIG_PARAMS] + [f"metrics.`{name}`" for name in TABLE_METRICS]
    return {"searchFilter": PARENTS_FILTER, "orderByKey": f"metrics.`{HEADLINE}`", "orderByAsc": False,
            "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}


def runs_table_url(base: str, experiment_id: str) -> str:
    """The link that opens the experiment's runs table on `parent_runs_view` (`base`: the UI's address)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={PARENT_VIEW}"


def experiment_tags(dataset: str) -> dict[str, str]:
    """The tags every sonotune experiment carries: its kind, its description and the parent runs' saved view."""
    return {KIND_TAG: EXPERIMENT_KIND, NOTE_TAG: experiment_description(dataset),
            VIEW_TAG_PREFIX + PARENT_VIEW: json.dumps(parent_runs_view())}


def ensure_experiment(dataset: str) -> str:
    """Id of the dataset's experiment, created (artifacts under mlruns/artifacts when local) if needed, with the
    tags of `experiment_tags` it lacks or holds other values of (the description only when missing: a teammate's
    edit is kept)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = experiment_name(dataset)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = (LOCAL_STORE / "artifacts" / name).resolve().as_uri() if _uses_local_store() else None
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # another worker (a DVC queue job, a teammate) created it between our look-up and our create
        experiment = mlflow.get_experiment_by_name(name)
    client = mlflow.MlflowClient()
    for key, value in experiment_tags(dataset).items():
        if experiment.tags.get(key) != value and not (key == NOTE_TAG and key in experiment.tags):
            retry_unique_race(lambda: client.set_experiment_tag(experiment.experiment_id, key, value))
    return experiment.experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(dataset: str, backbone: str, strategy: int, classifier: str, protocol: str, fold: str) -> dict:
    return {
        "dataset": dataset,
        "backbone": backbone,
        "strategy": str(strategy),
        "classifier": classifier,
        "protocol": protocol,
        "fold": fold,
        "git_commit": git_commit(),
        "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
    }


def dataset_tags(info: dict | None) -> dict[str, str]:
    """A prepared dataset's digest and counts (`data.prepared.dataset_info`) as `dataset_*` tags; {} for None."""
    return {f"dataset_{key}": str(value) for key, value in (info or {}).items() if key != "dataset"}


def run_name(backbone: str, strategy: int, classifier: str, fold: int | None = None) -> str:
    base = f"{backbone}-{strategy}-{classifier}"
    return base if fold is None else f"{base}-fold{fold}"


def unique_run_name(experiment_id: str, base: str) -> str:
    """`base@<DVC experiment>` under `dvc exp run`, else `base`; `#2`, `#3`, … appended while a run of the
    experiment (deleted ones included) already has that name."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    exp = os.environ.get("DVC_EXP_NAME", "")
    name = f"{base}@{exp}" if exp else base
    quoted = name.replace("'", "\\'")
    taken = {run.info.run_name for run in MlflowClient().search_runs(
        [experiment_id], filter_string=f"attributes.run_name LIKE '{quoted}%'", run_view_type=ViewType.ALL,
        max_results=1000)}
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}#{n}"
    return candidate


def strategy_label(strategy) -> str:
    """A strategy as the compare view's category: " 15 %" (not a number, so the plot draws no 0.00000–15.00000 axis;
    right-aligned, so the categories' text order is their numeric order)."""
    return f"{int(strategy):>3} %"


def configuration_params(backbone: str, strategy: int, classifier: str) -> dict[str, str]:
    """The configuration as params (`CONFIG_PARAMS`): the compare view's default axes."""
    values = {"backbone": backbone, "classifier": classifier, "strategy": strategy_label(strategy)}
    return {name: values[name.removeprefix("config.")] for name in CONFIG_PARAMS}


@contextmanager
def parent_run(dataset: str, backbone: str, strategy: int, classifier: str, protocol: str, params: dict,
               *, run_id: str | None = None, extra_tags: dict | None = None):
    """A parent run with tags, the configuration params (`configuration_params`) and `params`; ends FAILED
    (not RUNNING) if the body raises.

    With `run_id`, that run is resumed (status back to RUNNING, FINISHED at the end) instead of a new one.
    """
    import mlflow

    configure()
    experiment_id = ensure_experiment(dataset)
    tags = run_tags(dataset, backbone, strategy, classifier, protocol, fold="all") | (extra_tags or {})
    if run_id is not None:
        context = mlflow.start_run(run_id=run_id, tags=tags)
    else:
        name = unique_run_name(experiment_id, run_name(backbone, strategy, classifier))
        context = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags)
    with context as run:
        mlflow.log_params(configuration_params(backbone, strategy, classifier) | params)
        yield run


def log_summary(summary: dict, extra: dict | None = None) -> None:
    """A parent run's fold summary, the headline (`HEADLINE`) logged first: MLflow's compare view opens on the first
    metric a run logged."""
    import mlflow

    mlflow.log_metrics({HEADLINE: float(summary[HEADLINE])} | summary | (extra or {}))


def log_dataset(manifest, info: dict | None, dataset: str) -> None:
    """The prepared dataset as an MLflow dataset input of the active run (its Datasets column): the manifest's
    path, group and label columns, named after the dataset and carrying the prepared digest."""
    import mlflow

    columns = [c for c in ("path", "group", "label") if c in manifest.columns]
    digest = str((info or {}).get("digest", ""))[:36] or None  # MLflow keeps at most 36 characters
    source = f"prepared/{dataset}"
    with warnings.catch_warnings():
        # MLflow registers its local-artifact source twice and warns that a path "can be interpreted in multiple
        # ways" (both the same class) on every call
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        data = mlflow.data.from_pandas(manifest[columns].reset_index(drop=True), source=source, targets="label",
                                       name=dataset, digest=digest)
    retry_unique_race(lambda: mlflow.log_input(data, context="training"))


# What SQLite, PostgreSQL and MySQL say when two clients insert the same unique row at once
UNIQUE_RACE_MARKERS = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def is_unique_race(exc: BaseException) -> bool:
    """The store refused an insert because another client inserted the same unique row between its look-up and
    its insert (e.g. two parallel jobs logging one dataset): retrying finds the row and succeeds."""
    return any(marker in str(exc) for marker in UNIQUE_RACE_MARKERS)


def retry_unique_race(call, attempts: int = 5, pause: float = 0.2):
    """`call()`, retried up to `attempts` times while the store answers with a unique-constraint race
    (`is_unique_race`); any other error, or the race persisting, is raised."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as exc:
            if not is_unique_race(exc) or attempt == attempts - 1:
                raise
            time.sleep(pause * (attempt + 1))


def write_record(folder: Path, params: dict, tags: dict) -> Path:
    """`folder/RECORD_FILE`: the configuration params and tags a finetune parent logged, for the svm stage's parent
    to log the same (`read_record`). Nothing run- or machine-specific: it is a DVC output."""
    path = folder / RECORD_FILE
    path.write_text(json.dumps({"params": params, "tags": tags}, indent=2, default=str) + "\n")
    return path


def read_record(folder: Path) -> dict | None:
    """The record `write_record` left in `folder`, or None (outputs of a sonotune that wrote none)."""
    path = folder / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def derived_fingerprint(base: str, extra: dict) -> str:
    """A fingerprint of `base` (another run's) and `extra` (what this run adds), 16 hex digits."""
    text = json.dumps({"base": base, "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_name(run) -> str:
    """A logged model's name: its run's name, with the characters MLflow refuses in model names replaced."""
    return re.sub(r"[/:.%\"']", "_", run.info.run_name or "model")


def model_tags(run) -> dict[str, str]:
    """The configuration tags of `run` (`CONFIGURATION_TAGS`) plus its id, for the model it logs."""
    tags = {k: v for k, v in run.data.tags.items() if k in CONFIGURATION_TAGS}
    return tags | {"run_name": run.info.run_name or "", "source_run_id": run.info.run_id}


def resumable_run_id(run_id: str | None) -> str | None:
    """`run_id` if it names a run that exists and is not deleted, else None."""
    if run_id is None:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    configure()
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    return run_id if run.info.lifecycle_stage == "active" else None


def _fail(client, run) -> None:
    if run.info.status == "RUNNING":
        client.set_terminated(run.info.run_id, status="FAILED")


def fail_stale_runs(dataset: str, fingerprint: str, keep: str | None) -> list[str]:
    """Mark every RUNNING run of this user tagged with `fingerprint` but `keep` FAILED (a crashed earlier attempt;
    a teammate's run of the same configuration may be alive: never touched)."""
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_USER

    configure()
    client = MlflowClient()
    user = _mlflow_user().replace("'", "\\'")
    stale = client.search_runs(
        [ensure_experiment(dataset)],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}' and attributes.status = 'RUNNING' "
                      f"and tags.`{MLFLOW_USER}` = '{user}'",
    )
    stale = [run for run in stale if run.info.run_id != keep]
    for run in stale:
        _fail(client, run)
    return [run.info.run_id for run in stale]


def _mlflow_user() -> str:
    """The `mlflow.user` tag MLflow gives this process's runs (MLFLOW_TRACKING_USERNAME, else the login name)."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_USER

    return resolve_tags()[MLFLOW_USER]


def fail_run_tree(run_id: str | None) -> None:
    """Mark a run and its children FAILED where they are still RUNNING (a discarded attempt)."""
    if resumable_run_id(run_id) is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    _fail(client, run)
    for child in client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    ):
        _fail(client, child)


def discard_unfinished_folds(parent, keep: set[str]) -> list[str]:
    """Fail and soft-delete the parent's fold runs not in `keep` (folds interrupted by a crash, rerun now)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    discarded = []
    for child in children:
        if child.info.run_id not in keep:
            _fail(client, child)
            client.delete_run(child.info.run_id)
            discarded.append(child.info.run_id)
    return discarded


@contextmanager
def resumed_run(run_id: str):
    """Reopen a finished run (e.g. a fold run, to log the best fold's model) and close it FINISHED again."""
    import mlflow

    with mlflow.start_run(run_id=run_id, nested=True) as run:
        yield run


def log_keras_model(model, example, run) -> None:
    """Log a Keras 3 model (`.keras` format) to the active run `run` with MLflow's keras flavor, named and tagged
    like the run (`model_name`, `model_tags`); `example` (a few inputs) gives its signature."""
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(example, verbose=0))
    mlflow.keras.log_model(model, name=model_name(run), signature=signature, tags=model_tags(run))


@contextmanager
def fold_run(parent, fold: int, repeat: int = 0):
    """A fold's run nested under `parent`, with the parent's tags and `fold`, `repeat` (of repeated CV)."""
    import mlflow

    tags = {k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")} | {
        "fold": str(fold), "repeat": str(repeat)}
    # the parent's (unique) name: the fold runs of two experiments differ too
    name = f"{parent.info.run_name}-repeat{repeat}-fold{fold}" if repeat else f"{parent.info.run_name}-fold{fold}"
    with mlflow.start_run(
        experiment_id=parent.info.experiment_id, run_name=name, nested=True, tags=tags
    ) as run:
        yield run


@contextmanager
def artifact_dir() -> Iterator[Path]:
    """A scratch folder whose files are logged as artifacts of the active run on exit."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
        mlflow.log_artifacts(tmp)


def check_local_store(db: Path | None = None) -> None:
    """Refuse an empty, unreadable or read-only SQLite store before any training (a server is checked by
    `team.check_tracking`). A missing file is fine: MLflow creates it."""
    if not _uses_local_store() and db is None:
        return
    db = db or LOCAL_STORE / "mlflow.db"
    require_writable(db.parent, "the MLflow store")
    if not db.exists():
        return
    if db.stat().st_size == 0:
        raise SonotuneError(f"{db}: empty file where the MLflow store should be (its runs are gone; MLflow would "
                           f"silently start a new one): restore it from a backup, or delete it to start afresh")
    check = _quick_check(db)
    if check != "ok":
        raise SonotuneError(f"{db}: not a readable MLflow store ({check}): restore it from a backup, or move it "
                           f"away to start a new store")
    if not os.access(db, os.W_OK):
        raise SonotuneError(f"{db}: read-only: the stage could not record its runs; make it writable")


def _quick_check(db: Path) -> str:
    """"ok" when `db` is an intact SQLite file holding MLflow's runs table, else SQLite's reason."""
    try:
        connection = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        check = connection.execute("PRAGMA quick_check").fetchone()[0]
        connection.execute("SELECT count(*) FROM runs").fetchone()
        return check
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        connection.close()


def _is_tracking_error(exc: BaseException) -> bool:
    names = {f"{type(e).__module__}.{type(e).__name__}" for e in _chain(exc)}
    return any(name.startswith(("mlflow.", "requests.", "urllib3.", "sqlalchemy.")) for name in names)


def _chain(exc: BaseException) -> list[BaseException]:
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _short_reason(exc: BaseException) -> str:
    import requests

    for link in _chain(exc):
        if isinstance(link, (requests.ConnectionError, ConnectionError)):
            return LOST
        if isinstance(link, requests.Timeout):
            return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s"
    text = " ".join(str(exc).split())
    if "Max retries exceeded" in text or "Connection refused" in text or "Failed to establish" in text:
        return LOST
    return text[:160] + ("…" if len(text) > 160 else "")


LOST = "connection refused or lost"


def lost_server_line(uri: str, reason: str) -> str:
    """The one line of a stage whose tracking server went away (found by MLflow's call or by `ServerWatch`)."""
    from sonotune.team import redact

    return mask_credentials(
        f"MLflow tracking server {redact(uri)} lost mid-stage ({reason}); finished folds are kept: restart it "
        f"(`sonotune server`) and rerun the same command to resume")


def failure_line(exc: BaseException) -> str | None:
    """One line for an error of the tracking store (server lost, store corrupt or read-only), or None when
    `exc` did not come from MLflow or its transport."""
    if not _is_tracking_error(exc):
        return None
    from sonotune.team import is_server, redact

    uri, reason = tracking_uri(), _short_reason(exc)
    if is_server(uri) and reason == LOST:
        return lost_server_line(uri, reason)
    return mask_credentials(
        f"MLflow tracking store {redact(uri)} failed ({reason}); finished folds are kept: make the store reachable "
        f"and writable (`sonotune server`, MLFLOW_TRACKING_URI) and rerun the same command to resume"
    )


class ServerWatch:
    """A daemon thread asking the tracking server's /health every `interval` s while a stage trains (a fold may
    call MLflow only once in many minutes): after `failures` failed checks in a row it records why in `lost`
    and interrupts the main thread, which unwinds like Ctrl-C (open runs FAILED, finished folds kept)."""

    def __init__(self, uri: str, interval: float = 10.0, failures: int = 2):
        self.uri, self.interval, self.failures = uri, interval, failures
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sonotune-server-watch", daemon=True)

    def start(self) -> "ServerWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        from sonotune.team import TrackingUnavailable, check_tracking_server

        misses = 0
        while not self._stop.wait(self.interval):
            try:
                check_tracking_server(self.uri, timeout=min(5.0, self.interval))
                misses = 0
            except TrackingUnavailable as exc:
                misses += 1
                if misses >= self.failures and not self._stop.is_set():
                    refused = "Connection refused" in str(exc) or "Connection aborted" in str(exc)
                    found = re.search(r"\(([^)]*)\)", str(exc))
                    self.lost = LOST if refused else found.group(1) if found else str(exc)
                    self._interrupt_main()
                    return

    @staticmethod
    def _interrupt_main() -> None:
        """Stop the stage now, even inside an MLflow call waiting on a hung server: later calls (the FAILED
        marks on the way out) give up at once, and a real SIGINT breaks the socket wait under way (a simulated
        one would wait for it to time out, up to three × MLFLOW_HTTP_REQUEST_TIMEOUT)."""
        os.environ.update(MLFLOW_HTTP_REQUEST_TIMEOUT="2", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def line(self) -> str:
        """The one line of a stage stopped by this watch."""
        return lost_server_line(self.uri, self.lost)


def watch_server(uri: str | None = None) -> ServerWatch | None:
    """Start a `ServerWatch` when the tracking URI is a server; None for a local store."""
    from sonotune.team import is_server

    uri = uri or tracking_uri()
    return ServerWatch(uri).start() if is_server(uri) else None
