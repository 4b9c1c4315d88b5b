"""Policy artifacts: the small, portable part of a trained run that `dmarl evaluate`,
`dmarl.load_policy` and the renderer load, from MLflow, on any machine.

A finished run logs the folder ``policy/`` as MLflow artifacts (the resume checkpoint, with
its replay buffer and optimiser states, stays in the local run directory unless
``run.upload_checkpoint = True``):

- ``policy.pt``     the networks ``act`` uses and the algorithm's tensor attributes, read back
                    with ``torch.load(weights_only=True)``;
- ``spec.json``     the training task's `EnvSpec` (the agent layout the networks expect);
- ``config.gin``    the run's operative gin config (every value the run used), from which
                    the algorithm is rebuilt with its hyperparameters;
- ``manifest.json`` algorithm, task, dmarl and torch versions, and the sha256 and size of
                    each file above; loading refuses a file whose digest differs.

Which networks ``act`` needs is found generically, not listed per algorithm: every
``nn.Module`` attribute of the algorithm (or list of modules) gets forward pre-hooks on all
its submodules, ``act(obs, explore=False)`` runs once on zero observations (RNG forked,
states copied before, so nothing the run saves changes), and the attributes whose modules
ran are kept. Critics, target critics and optimisers are left out. Tensor attributes
(temperatures, statistics) are small and always kept. ``tests/test_evaluate.py`` checks,
for every registered algorithm, that a fresh instance loaded from the artifact acts exactly
as the trained one.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dmarl import __version__
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError

if TYPE_CHECKING:
    from dmarl.algorithms.base import Algorithm
    from dmarl.envs.base import MultiAgentVecEnv
    from dmarl.tracking import Tracker
    from dmarl.train import RunSettings

ARTIFACT_DIR = "policy"
WEIGHTS_FILE, SPEC_FILE, CONFIG_FILE, MANIFEST_FILE = "policy.pt", "spec.json", "config.gin", "manifest.json"
FORMAT = 1
PROGRESS_BAR_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


# -- which state ``act`` needs --------------------------------------------------------------
def _module_attributes(algorithm: Any) -> dict[str, list[nn.Module]]:
    """Attributes that hold an ``nn.Module`` or a non-empty list/tuple of them."""
    found: dict[str, list[nn.Module]] = {}
    for name, value in vars(algorithm).items():
        if isinstance(value, nn.Module):
            found[name] = [value]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, nn.Module) for v in value):
            found[name] = list(value)
    return found


def acting_modules(algorithm: Algorithm, spec: EnvSpec) -> list[str]:
    """Names of the module attributes whose forward runs in ``act(obs, explore=False)``."""
    candidates = _module_attributes(algorithm)
    used: set[str] = set()
    handles = []
    for name, modules in candidates.items():
        for module in modules:
            for sub in module.modules():
                handles.append(sub.register_forward_pre_hook(lambda *_, key=name: used.add(key)))
    obs = np.zeros((2, spec.n_agents, spec.obs_max), np.float32)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            algorithm.act(obs, explore=False)
    finally:
        for handle in handles:
            handle.remove()
    return [name for name in candidates if name in used]


def policy_state(algorithm: Algorithm, spec: EnvSpec) -> dict[str, Any]:
    """The part of the algorithm's state that acting needs (module docstring), on the CPU."""
    modules = _module_attributes(algorithm)
    saved = {name: [copy.deepcopy(m.state_dict()) for m in mods] for name, mods in modules.items()}
    keep = acting_modules(algorithm, spec)
    tensors = {k: v.detach().cpu().clone() for k, v in vars(algorithm).items() if isinstance(v, torch.Tensor)}
    cpu = {name: [{k: v.cpu() for k, v in sd.items()} for sd in saved[name]] for name in keep}
    return {"format": FORMAT, "modules": cpu, "tensors": tensors}


def load_policy_state(algorithm: Algorithm, state: dict[str, Any], where: str) -> None:
    """Load `policy_state` output into a freshly built algorithm, or one UserError."""
    modules = _module_attributes(algorithm)
    try:
        for name, dicts in state["modules"].items():
            if name not in modules or len(modules[name]) != len(dicts):
                raise KeyError(f"network {name!r} ({len(dicts)} module(s)) has no counterpart in the algorithm")
            for module, sd in zip(modules[name], dicts):
                module.load_state_dict(sd)
        for name, value in state["tensors"].items():
            target = getattr(algorithm, name)
            with torch.no_grad():
                target.copy_(value)
    except (RuntimeError, KeyError, AttributeError, TypeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{where}: the weights do not fit the algorithm built from its config.gin: {first[:300]}") from None


# -- files -----------------------------------------------------------------------------------
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec_to_json(spec: EnvSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_json(data: dict[str, Any]) -> EnvSpec:
    fields = {f.name for f in dataclasses.fields(EnvSpec)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields}
    return EnvSpec(**values)


def write_policy(folder: Path, algorithm: Algorithm, spec: EnvSpec, config_text: str, *, algorithm_name: str,
                 task: str) -> Path:
    """Write the four artifact files into ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {**policy_state(algorithm, spec), "algorithm": algorithm_name}
    torch.save(state, folder / WEIGHTS_FILE)
    (folder / SPEC_FILE).write_text(json.dumps(spec_to_json(spec), indent=1) + "\n")
    (folder / CONFIG_FILE).write_text(config_text)
    files = {name: {"sha256": sha256_bytes((folder / name).read_bytes()), "bytes": (folder / name).stat().st_size}
             for name in (WEIGHTS_FILE, SPEC_FILE, CONFIG_FILE)}
    manifest = {
        "format": FORMAT, "algorithm": algorithm_name, "task": task, "networks": sorted(state["modules"]),
        "dmarl_version": __version__, "torch_version": torch.__version__, "files": files,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return folder


def log_policy(tracker: Tracker, algorithm: Algorithm, spec: EnvSpec, config_text: str, *, algorithm_name: str,
               task: str) -> int:
    """Log the artifact to the run as ``policy/``; returns its size in bytes."""
    with tempfile.TemporaryDirectory(prefix="dmarl-policy-") as tmp:
        folder = write_policy(Path(tmp) / ARTIFACT_DIR, algorithm, spec, config_text,
                              algorithm_name=algorithm_name, task=task)
        size = sum(p.stat().st_size for p in folder.iterdir())
        for path in sorted(folder.iterdir()):
            tracker.log_artifact(path, ARTIFACT_DIR)
    return size


# -- loading ---------------------------------------------------------------------------------
@dataclass
class Policy:
    """A trained algorithm rebuilt from its artifact, ready to act.

    ``settings`` are the training run's ``run.*`` values (task, task_kwargs, global_obs, seed);
    ``spec`` is the training task's spec; ``manifest`` the artifact's manifest."""

    algorithm: Algorithm
    spec: EnvSpec
    settings: RunSettings
    manifest: dict[str, Any]
    run_id: str | None = None

    def act(self, obs: np.ndarray, *, explore: bool = False) -> np.ndarray:
        """Actions ``[E, N, A_max]`` in [-1, 1] for observations ``[E, N, O_max]`` (no gradients)."""
        with torch.no_grad():
            return self.algorithm.act(obs, explore=explore)

    def make_env(self, num_envs: int = 1, task: str | None = None, task_kwargs: dict[str, Any] | None = None,
                 **extra: Any) -> MultiAgentVecEnv:
        """The training task (or ``task``) with the run's observation mode; ``task_kwargs``
        replace the run's own. The agent layout must equal the policy's, else one UserError."""
        from dmarl import registry
        from dmarl.envs.factory import make_env

        registry.load_all()
        name = task or self.settings.task
        kwargs = dict(self.settings.task_kwargs or {}) if task is None else {}
        kwargs.update(task_kwargs or {})
        try:
            env = make_env(name, num_envs, global_obs=self.settings.global_obs, **kwargs, **extra)
        except registry.UnknownNameError as err:
            raise UserError(str(err)) from None
        except TypeError as err:
            raise UserError(f"task {name!r}: {err}") from None
        check_layout(self.spec, env.spec)
        return env


def check_layout(trained: EnvSpec, other: EnvSpec) -> None:
    """The policy's networks fit ``other`` only with the same agents' observation and action dims."""
    mine = (trained.n_agents, trained.obs_dims, trained.action_dims)
    theirs = (other.n_agents, other.obs_dims, other.action_dims)
    if mine != theirs:
        raise UserError(
            f"task {other.name!r} has {theirs[0]} agents with observation dims {list(theirs[1])} and action dims "
            f"{list(theirs[2])}; the policy was trained on {trained.name!r} with {mine[0]} agents, observation dims "
            f"{list(mine[1])} and action dims {list(mine[2])} (expected a task with the same agent layout)"
        )


def verify_files(folder: Path) -> dict[str, Any]:
    """The manifest of an artifact folder whose files all match their sha256, or one UserError."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise UserError(f"{folder}: no {MANIFEST_FILE}; expected a dmarl policy artifact")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{manifest_path}: not a dmarl policy manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_path}: format {manifest.get('format')!r}; expected {FORMAT}")
    for name in (WEIGHTS_FILE, SPEC_FILE, CONFIG_FILE):
        path = folder / name
        if not path.is_file() or name not in files:
            raise UserError(f"{folder}: {name} missing from the policy artifact")
        actual = sha256_bytes(path.read_bytes())
        if actual != files[name]["sha256"]:
            raise UserError(
                f"{path}: sha256 {actual[:16]}... does not match the manifest ({files[name]['sha256'][:16]}...); "
                "the artifact is corrupt (refusing to load it)"
            )
    return manifest


def read_policy(folder: str | Path, *, device: str = "cpu", run_id: str | None = None) -> Policy:
    """Rebuild the policy stored in a local artifact folder (``policy/``).

    Parses the artifact's config.gin into gin's global config (as ``dmarl.load_config``)."""
    from dmarl.train import build_algorithm, parse_settings

    folder = Path(folder)
    manifest = verify_files(folder)
    spec = spec_from_json(json.loads((folder / SPEC_FILE).read_text()))
    settings = parse_settings([str(folder / CONFIG_FILE)], [f"run.device = {device!r}"])
    if settings.algorithm != manifest["algorithm"]:
        raise UserError(f"{folder}: config.gin trains {settings.algorithm!r}; the manifest says {manifest['algorithm']!r}")
    algorithm = build_algorithm(settings, spec)
    try:
        state = torch.load(folder / WEIGHTS_FILE, map_location=device, weights_only=True)
    except Exception as err:  # a foreign file: report it, never unpickle
        raise UserError(f"{folder / WEIGHTS_FILE} could not be read safely: {err}") from None
    load_policy_state(algorithm, state, str(folder / WEIGHTS_FILE))
    return Policy(algorithm, spec, settings, manifest, run_id)


def download_policy(run_id: str, dst: Path, tracking_uri: str | None = None) -> Path:
    """Download run ``run_id``'s ``policy/`` artifact folder into ``dst`` through MLflow (a local
    store or a remote tracking server alike); returns the folder."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from dmarl.tracking import check_tracking_uri, resolve_tracking_uri, run_exists

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    if not run_exists(run_id, uri):
        raise UserError(f"no MLflow run with id {run_id!r} in the tracking store {uri}")
    quiet = os.environ.get(PROGRESS_BAR_VAR)
    os.environ[PROGRESS_BAR_VAR] = "false"  # MLflow's per-file download bar is noise for four small files
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_DIR, dst_path=str(dst),
                                                   tracking_uri=uri)
    except (MlflowException, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"run {run_id} has no policy artifact ({ARTIFACT_DIR}/) in {uri}: {first[:200]}; expected a FINISHED run "
            "trained by this dmarl version"
        ) from None
    finally:
        if quiet is None:
            del os.environ[PROGRESS_BAR_VAR]
        else:
            os.environ[PROGRESS_BAR_VAR] = quiet
    folder = Path(path)
    if not (folder / MANIFEST_FILE).is_file():
        raise UserError(f"run {run_id} has no policy artifact ({ARTIFACT_DIR}/{MANIFEST_FILE}) in {uri}; "
                        "expected a FINISHED run trained by this dmarl version")
    return folder


def load_policy(run_id: str, tracking_uri: str | None = None, *, device: str = "cpu") -> Policy:
    """The trained policy of MLflow run ``run_id``, downloaded from its tracking store (works with
    a remote ``mlflow server`` and without the run's local directory), checksum-verified and
    rebuilt from its logged config. ``policy.act(obs)`` acts; ``policy.make_env()`` builds its task."""
    with tempfile.TemporaryDirectory(prefix="dmarl-policy-") as tmp:
        folder = download_policy(run_id, Path(tmp), tracking_uri)
        return read_policy(folder, device=device, run_id=run_id)
