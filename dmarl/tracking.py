"""MLflow tracking: one experiment per benchmark, a run per (algorithm, task, seed), optional
parent run, stable metric names, operative config and checkpoints as artifacts.

The default store is the embedded ``sqlite:///mlflow.db`` in the working directory; a flag or
``MLFLOW_TRACKING_URI`` points at a tracking server instead.
"""
from __future__ import annotations

import getpass
import importlib.metadata
import json
import os
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dmarl import __version__
from dmarl.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "dmarl"
TRACKED_PACKAGES = ("torch", "mujoco", "gymnasium-robotics", "mpe2", "jaxmarl", "gymnasium", "gin-config")
_T = TypeVar("_T")
# MLflow 3 infers an untagged experiment's kind and may open it on the GenAI page with every
# metric hidden; this kind opens the runs table and charts (the ``?workflowType=machine_learning`` view).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


SQLITE_MAGIC = b"SQLite format 3\x00"
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
OTHER_SCHEMES = ("databricks", "databricks-uc", "uc")
REACH_TIMEOUT_S = 3.0


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URI (None for other stores and in-memory sqlite)."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def check_tracking_uri(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail in seconds with one `UserError` when the tracking store cannot work: an unknown
    scheme, a sqlite file that is not a database (or whose folder is missing), a file store
    that is a file, or a server that does not accept connections. Creates nothing."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.split("+", 1)[0].lower()
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is None:
            return
        if path.is_dir():
            raise UserError(f"tracking URI {uri}: {path} is a folder; expected an sqlite database file")
        if path.exists():
            with path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
            if head and head != SQLITE_MAGIC:
                raise UserError(
                    f"tracking URI {uri}: {path} is not an SQLite database; expected an MLflow sqlite store "
                    "(or a path that does not exist yet)"
                )
        elif not path.parent.is_dir():
            raise UserError(f"tracking URI {uri}: folder {path.parent} does not exist; expected an existing folder")
        return
    if scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else uri)
        if path.exists() and not path.is_dir():
            raise UserError(f"tracking URI {uri}: {path} is a file; expected a folder (MLflow file store)")
        return
    if scheme in ("http", "https"):
        _check_server(uri, timeout)
        # a server that goes away mid-run fails in about a minute, not after minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        return
    if scheme in DATABASE_SCHEMES:
        default_port = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[scheme]
        host, port = parsed.hostname, parsed.port or default_port
        if not host:
            raise UserError(f"tracking URI {uri}: no host; expected {scheme}://USER:PASSWORD@HOST:PORT/DB")
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            raise UserError(f"tracking URI {uri}: cannot reach {host}:{port} ({err.strerror or err})") from None
        return
    if scheme in OTHER_SCHEMES:
        return
    raise UserError(
        f"tracking URI {uri}: unknown scheme {parsed.scheme!r}; expected sqlite:///FILE, a folder, file://, "
        f"http(s)://HOST:PORT or {'/'.join(DATABASE_SCHEMES)}://..."
    )


def _check_server(uri: str, timeout: float) -> None:
    """An MLflow tracking server answers ``GET /health``; anything else is one UserError."""
    import urllib.error
    import urllib.request

    host = urllib.parse.urlparse(uri).netloc
    if not urllib.parse.urlparse(uri).hostname:
        raise UserError(f"tracking URI {uri}: no host; expected e.g. http://HOST:5000")
    hint = "start the tracking server (`mlflow server`) or pass another --tracking-uri"
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read(64)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):  # a server behind authentication: it exists
            return
        raise UserError(
            f"tracking URI {uri}: {host} answers but is not an MLflow tracking server (GET /health: HTTP {err.code}); "
            f"{hint}"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        reason = getattr(reason, "strerror", None) or reason
        raise UserError(f"tracking URI {uri}: cannot reach {host} ({reason}); {hint}") from None


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _retry(fn: Callable[[], _T], attempts: int = 20) -> _T:
    """Retry a store call that failed because another process holds the sqlite lock."""
    for attempt in range(attempts):
        try:
            return fn()
        except MlflowException as err:
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created when missing (also by a concurrent worker), tagged
    as a model-development experiment so that MLflow 3's UI opens it on its runs and metrics
    view rather than on the GenAI (traces) page. A deleted experiment is one `UserError`."""
    exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp is None:
        try:
            return _retry(lambda: client.create_experiment(name, tags=EXPERIMENT_TAGS))
        except MlflowException:  # created concurrently by another worker
            exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp.lifecycle_stage != "active":
        raise UserError(f"experiment {name!r} is deleted; restore it or use another --experiment")
    for key, value in EXPERIMENT_TAGS.items():
        if exp.tags.get(key) != value:
            _retry(lambda: client.set_experiment_tag(exp.experiment_id, key, value))
    return exp.experiment_id


class Tracker:
    """A thin wrapper around one MLflow run (created or resumed)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def create(
        cls,
        *,
        tracking_uri: str | None,
        experiment: str | None,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None = None,
    ) -> "Tracker":
        client = MlflowClient(resolve_tracking_uri(tracking_uri))
        exp_id = ensure_experiment(client, experiment or DEFAULT_EXPERIMENT)
        all_tags = {"mlflow.runName": run_name, **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = _retry(lambda: client.create_run(exp_id, tags=all_tags, run_name=run_name))
        return cls(client, run.info.run_id)

    @classmethod
    def resume(cls, *, tracking_uri: str | None, run_id: str) -> "Tracker":
        client = MlflowClient(resolve_tracking_uri(tracking_uri))
        _retry(lambda: client.update_run(run_id, status="RUNNING"))
        return cls(client, run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        existing = _retry(lambda: self.client.get_run(self.run_id)).data.params
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            _retry(lambda: self.client.log_batch(self.run_id, params=items[i : i + 100]))

    def set_tags(self, tags: dict[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        _retry(lambda: self.client.log_batch(self.run_id, tags=items))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            _retry(lambda: self.client.log_batch(self.run_id, metrics=items[i : i + 500]))

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_dataset_input(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        """Record a training dataset as the run's input (MLflow's Datasets column and run page)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name, digest, "dmarl", source, profile=json.dumps(profile, default=str))
        tags = [InputTag("mlflow.data.context", "training")]
        _retry(lambda: self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)]))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))


def standard_tags(*, algorithm: str, task: str, seed: int, extra_versions: dict[str, str]) -> dict[str, str]:
    """The tags every training run carries (filterable in `mlflow ui`)."""
    sha = git_sha()
    tags = {
        "algorithm": algorithm,
        "task": task,
        "seed": str(seed),
        "dmarl.version": __version__,
        "git_sha": sha,
        # MLflow's own tags: shown in the run page's header and source column
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": "dmarl",
        "mlflow.user": getpass.getuser(),
    }
    if sha != "unknown":
        tags["mlflow.source.git.commit"] = sha
    for name, version in {**package_versions(), **extra_versions}.items():
        tags[f"version.{name}"] = version
    return tags


def run_exists(run_id: str, tracking_uri: str | None) -> bool:
    """Whether the store holds run ``run_id`` (a sqlite store that does not exist is not created)."""
    uri = resolve_tracking_uri(tracking_uri)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        return False
    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def get_run_tags(run_id: str, tracking_uri: str | None) -> dict[str, str]:
    return MlflowClient(resolve_tracking_uri(tracking_uri)).get_run(run_id).data.tags
