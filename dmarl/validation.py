"""Value checks that run before any work starts: one declarative table of constraints on
configurable parameters, devices, task kwargs and gin macros (after `dmarl.config` has parsed
and type-checked the config), and the CLI's preflight (tracking store reachable, output paths
usable, a policy run that exists).

The table is keyed by parameter name, so one rule covers every configurable that has the
parameter (``batch_size`` of both runners, ``actor_lr`` of every algorithm); a key
``"Configurable.param"`` overrides it for one configurable. Algorithm modules are not edited:
a new parameter gets its rule here. Values of other types (None, references) are left to the
type check in `dmarl.config`.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import gin

from dmarl.errors import UserError

MAX_BUDGET = 10**12  # env steps / updates: more is a typo (1e29), and overflows int64 counters


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``<`` where open); ``integer`` also demands whole numbers."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value):
            return f"a finite number in {self.describe()}"
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        return self.describe() if too_low or too_high else None

    def describe(self) -> str:
        if self.high == math.inf and self.low != -math.inf:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low == -math.inf and self.high != math.inf:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Sizes:
    """A tuple of layer widths, each at least 1."""

    def problem(self, value: Any) -> str | None:
        if isinstance(value, (list, tuple)) and any(isinstance(v, int) and v < 1 for v in value):
            return "layer widths >= 1"
        return None


@dataclass(frozen=True)
class Device:
    """A torch device string that exists on this machine."""

    def problem(self, value: Any) -> str | None:
        return device_problem(value) if isinstance(value, str) else None


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, low_open=True)
BUDGET = Range(1, MAX_BUDGET)
UNIT_OPEN_CLOSED = Range(0, 1, low_open=True)
LAYERS = Sizes()

# parameter name (any configurable) or "Configurable.param" -> constraint
CONSTRAINTS: dict[str, Any] = {
    **dict.fromkeys(("total_env_steps", "total_updates"), BUDGET),
    **dict.fromkeys(
        (
            "batch_size", "pretrain_batch_size", "num_envs", "eval_num_envs", "eval_episodes", "eval_interval",
            "log_interval", "pretrain_log_interval", "checkpoint_interval", "buffer_size", "diffusion_steps",
            "policy_delay", "n_critics", "num_candidates", "samples_per_state", "time_dim", "torch_threads",
            "final_eval_multiplier", "sampler_copies", "alpha_delay",
            "episode_length", "ppo_epoch", "critic_epoch", "actor_num_mini_batch", "critic_num_mini_batch",
        ),
        AT_LEAST_1,
    ),
    **dict.fromkeys(
        (
            "learning_starts", "random_steps", "seed", "eval_seed", "subset_seed", "behaviour_steps",
            "critic_steps", "bn_warmup", "lr_decay_begin", "lr_decay_steps", "actor_lr_decay_steps",
            "entropy_coef", "value_loss_coef", "weight_decay",
        ),
        AT_LEAST_0,
    ),
    **dict.fromkeys(
        (
            "lr", "actor_lr", "critic_lr", "alpha_lr", "behaviour_lr", "policy_lr_end", "updates_per_env_step",
            "coverage_bin", "grad_clip", "initial_alpha", "reward_scale", "v_max", "iql_temperature",
            "noise_clip", "huber_delta", "q_clip",
            "clip_param", "max_grad_norm", "std_x_coef", "std_y_coef", "opti_eps", "gain",
        ),
        POSITIVE,
    ),
    **dict.fromkeys(("polyak", "tau", "q_stats_rate"), UNIT_OPEN_CLOSED),
    **dict.fromkeys(("hidden", "actor_hidden", "critic_hidden", "behaviour_hidden"), LAYERS),
    "gamma": Range(0, 1),
    "gae_lambda": Range(0, 1),
    "iql_tau": Range(0, 1, low_open=True, high_open=True),
    "bn_momentum": Range(0, 1, high_open=True),
    "n_atoms": Range(2),
    "expl_noise": AT_LEAST_0,
    "policy_noise": AT_LEAST_0,
    "noise_scale": AT_LEAST_0,
    "run.device": Device(),
    "gaussian_init_std": POSITIVE,
    "gaussian_steps": AT_LEAST_1,
    "gaussian_lr": POSITIVE,
    "DecSPG.bins": Range(2),
    "DecSPG.eta": AT_LEAST_0,
    "DecSPG.alpha_min": UNIT_OPEN_CLOSED,
}


def device_problem(name: str) -> str | None:
    """None when torch can use device ``name`` here, else what was expected."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return "a torch device such as 'cpu', 'cuda' or 'cuda:0'"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "'cpu' (this machine has no CUDA device)"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"a CUDA index below {torch.cuda.device_count()}"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "'cpu' (MPS is not available here)"
    return "'cpu' or 'cuda' (the devices dmarl runs on)"


def constraint_for(selector: str, param: str) -> Any:
    return CONSTRAINTS.get(f"{selector.rsplit('.', 1)[-1]}.{param}", CONSTRAINTS.get(param))


def _macros() -> dict[str, Any]:
    return {scope: params["value"] for (scope, sel), params in gin.config._CONFIG.items()
            if sel == "gin.macro" and "value" in params}


def _references(value: Any) -> Iterator[gin.config.ConfigurableReference]:
    if isinstance(value, gin.config.ConfigurableReference):
        yield value
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _references(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)


def _macro_name(ref: gin.config.ConfigurableReference) -> str | None:
    if ref.configurable.selector != "gin.macro":
        return None
    return ref.scoped_selector.rsplit("/", 1)[0]


def validate_values(locate: Callable[[str, str], str]) -> None:
    """Check every bound value of the parsed config against `CONSTRAINTS`, every macro
    reference against the defined macros, and ``run.task_kwargs`` against the task; raise one
    `UserError` naming where the value is set (``locate(selector, param)``)."""
    macros = _macros()
    for (_, selector), params in gin.config._CONFIG.items():
        if selector == "gin.macro":
            continue
        short = selector.rsplit(".", 1)[-1]
        for param, value in params.items():
            for ref in _references(value):
                name = _macro_name(ref)
                if name is not None and name not in macros:
                    near = _near(name, list(macros))
                    raise UserError(
                        f"{locate(selector, param)}: {short}.{param} uses the undefined gin macro %{name}; "
                        f"define it with `{name} = ...`.{near}"
                    )
            if isinstance(value, gin.config.ConfigurableReference) and _macro_name(value) in macros:
                value = macros[_macro_name(value)]
            rule = constraint_for(selector, param)
            problem = rule.problem(value) if rule is not None else None
            if problem is None and isinstance(value, float) and not math.isfinite(value):
                problem = "a finite number"
            if problem is not None:
                verdict = "is out of range" if isinstance(rule, Range) or rule is None else "is not valid"
                raise UserError(f"{locate(selector, param)}: {short}.{param} = {value!r} {verdict}; expected {problem}.")
    _validate_task_kwargs(locate)


def _near(name: str, candidates: list[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    return f" Nearest valid names: {', '.join(near)}." if near else ""


def _bound(short_selector: str, param: str) -> Any:
    for (_, sel), params in gin.config._CONFIG.items():
        if sel.rsplit(".", 1)[-1] == short_selector and param in params:
            return params[param]
    return None


def _validate_task_kwargs(locate: Callable[[str, str], str]) -> None:
    """``run.task_kwargs`` must be keyword arguments the task's factory accepts."""
    from dmarl import registry

    kwargs, task = _bound("run", "task_kwargs"), _bound("run", "task")
    if not isinstance(kwargs, dict) or not kwargs or not isinstance(task, str):
        return
    try:
        entry = registry.get_task(task)
    except registry.UnknownNameError:
        return  # reported by dmarl.train.parse_settings with the nearest names
    factory = entry.factory
    signature = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory)
    named = [p for p, v in signature.parameters.items()
             if p not in ("self", "num_envs") and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    unknown = sorted(k for k in kwargs if k not in named)
    open_ended = any(v.kind == v.VAR_KEYWORD for v in signature.parameters.values())
    where = locate("dmarl.train.run", "task_kwargs")
    if unknown and not open_ended:
        options = [p for p in named if p not in entry.kwargs]
        expected = f"some of: {', '.join(options)}" if options else "none (the task takes no options)"
        raise UserError(
            f"{where}: run.task_kwargs {unknown} are not options of task {task!r}; expected {expected}."
            f"{_near(unknown[0], options)}"
        )
    if unknown:  # the factory forwards extra kwargs to the simulator: build one copy to check them
        from dmarl.envs.factory import make_env

        try:
            make_env(task, 1, **kwargs).close()
        except TypeError as err:
            raise UserError(f"{where}: run.task_kwargs {unknown} rejected by task {task!r}: {err}") from None


# --- CLI preflight ---------------------------------------------------------------------------

def check_output_dir(path: str | None, flag: str = "--out") -> None:
    """An output folder must be a folder (or not exist yet, under a folder)."""
    if not path:
        return
    out = Path(path)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder; expected a folder to write into")
            return


# integer flags of any command (argparse dest -> smallest valid value)
POSITIVE_FLAGS = {"bins": 1, "workers": 1, "episodes": 1, "num_envs": 1}


def preflight(args: Any) -> None:
    """Checks the CLI runs before a command starts: the tracking store is usable (seconds, not
    minutes, for a dead server), output folders are folders, a policy run id exists."""
    from dmarl import tracking

    command = getattr(args, "command", None)
    for name, low in POSITIVE_FLAGS.items():
        value = getattr(args, name, None)
        if isinstance(value, int) and value < low:
            raise UserError(f"--{name.replace('_', '-')} {value}: expected an integer >= {low}")
    if command in ("leaderboard", "bench"):
        check_output_dir(getattr(args, "out", None))
    if not hasattr(args, "tracking_uri"):
        return
    if command == "collect" and getattr(args, "policy", None) == "random":
        return  # the store is not used
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_tracking_uri(uri)
    if command == "collect":
        if not tracking.run_exists(args.policy, uri):
            raise UserError(
                f"collect --policy {args.policy!r}: no MLflow run with that id in {uri}; "
                "expected 'random' or the run id of a finished `dmarl train` run (see `mlflow ui`)"
            )
        trained_on = tracking.get_run_tags(args.policy, uri).get("task")
        if trained_on and trained_on != args.task:
            raise UserError(
                f"collect --policy {args.policy}: that run was trained on task {trained_on!r}; expected a run "
                f"trained on --task {args.task!r} (or --policy random)"
            )
