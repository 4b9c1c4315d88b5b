"""Catalogue of known offline MARL datasets: expected shapes, return statistics, sources.

Sources: OG-MARL's dataset card (``og_marl_datacard.json``, a copy of the card shipped with
the package: a JSON string holding ``source -> env -> scenario -> dataset -> statistics``),
the vaults named in ``docs/datasets.md`` that the card lacks, and the original OMAR
(per-agent ``.npy``) and OMIGA (HDF5) releases, whose statistics are those of the card's
vault conversions of the same data.

Names:

- vaults: ``<source>/<env>/<scenario>/<dataset>`` (e.g. ``og_marl/mamujoco/2halfcheetah/Good``),
  stored at ``<data root>/vaults/<source>/<env>/<scenario>.vlt/<dataset>/``;
- OMAR: ``omar-npy/<env_id>/<quality>`` (e.g. ``omar-npy/simple_spread/expert``), stored at
  ``<data root>/omar/<env_id>/<quality>/seed_<k>_data/``;
- OMIGA: ``omiga-hdf5/<scenario>-<conf>/<quality>`` (e.g. ``omiga-hdf5/Ant-v2-2x4/expert``),
  stored at ``<data root>/omiga/<scenario>-<conf>-<quality>.hdf5``.

Every entry names the suite task that evaluates policies trained on it (``task``: the
environment the data were recorded in, in the producer's observation/action layout, see
``dmarl.envs.legacy_mamujoco``), or says why none can (``refused``: discrete-action SMAC,
RWARE and Flatland data; og_marl's multiagent_mujoco v1.1 Ant layout, not built). It also
records how its episodes end: ``truncation_limit`` (tasks that cannot terminate: a terminal
flag at that many steps is a time limit) and ``transition_rule`` (``omiga``: OMIGA's 1001
rows per 1000-step episode, see ``omiga.py``).

The data root is ``$DMARL_DATA_DIR`` (default ``./datasets``). Shape mismatches with an entry
are errors; step counts and return statistics that differ are reported as warnings (a
partial download or another reward convention can explain them).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dmarl.data.offline import OfflineDataset
from dmarl.envs.datasets.common import check_shape, shape_str
from dmarl.errors import UserError

DATACARD = Path(__file__).with_name("og_marl_datacard.json")
DATA_DIR_ENV = "DMARL_DATA_DIR"
DEFAULT_DATA_DIR = "datasets"
HUB = "https://huggingface.co/datasets/InstaDeepAI/og-marl"

OMAR_ENVS = {  # env_id -> (card env/scenario, per-agent obs dims, action dim, state dim)
    "simple_spread": ("mpe/simple_spread", (18, 18, 18), 2, None),
    "simple_tag": ("mpe/simple_tag", (16, 16, 16, 14), 2, None),
    "simple_world": ("mpe/simple_world", (24, 24, 24, 22), 2, None),
    "HalfCheetah-v2": ("mamujoco/2halfcheetah", (6, 6), 3, 17),
}
OMAR_QUALITIES = {"random": "Random", "medium-replay": "Medium-Replay", "medium": "Medium", "expert": "Expert"}
OMAR_DOWNLOADS = {
    "simple_spread": "https://drive.google.com/file/d/1YVk_ajtvbcq8R2m0u0RasfB0csToV7XP/view?usp=sharing",
    "simple_tag": "https://pan.baidu.com/s/16W-UyyCtfKDt9oTgeNOhJA (password m7vw)",
    "simple_world": "https://pan.baidu.com/s/1pjZmeIAlaepPpug3b5olGA (password 5k3t)",
    "HalfCheetah-v2": "https://drive.google.com/file/d/1zELoWUZoy3wPpwYni9t_TbzOjF4Px2f0/view?usp=sharing",
}
OMAR_REWARDS = {"simple_spread": "mean", "simple_tag": "agent0", "simple_world": "agent0"}  # others: shared
OMAR_EPISODE_LIMITS = {"simple_spread": 25, "simple_tag": 25, "simple_world": 25, "HalfCheetah-v2": 1000}
OMIGA_TASKS = {  # "<scenario>-<conf>" -> (card scenario, agents, obs/state width D, action dim)
    "HalfCheetah-v2-6x1": ("6halfcheetah", 6, 23, 1),
    "Hopper-v2-3x1": ("3hopper", 3, 14, 1),
    "Ant-v2-2x4": ("2ant", 2, 113, 4),
}
OMIGA_QUALITIES = {
    "expert": "Expert",
    "medium-expert": "Medium-Expert",
    "medium": "Medium",
    "medium-replay": "Medium-Replay",
}
OMIGA_DOWNLOAD = "https://cloud.tsinghua.edu.cn/d/dcf588d659214a28a777/ (OMIGA's release)"
VAULT_TASKS = {  # "<source>/<env>/<scenario>" -> the task its data were recorded in
    "omar/mpe/simple_spread": "omar/simple_spread",
    "omar/mpe/simple_tag": "omar/simple_tag",
    "omar/mpe/simple_world": "omar/simple_world",
    "omar/mamujoco/2halfcheetah": "omar/halfcheetah_2x3",
    "og_marl/mamujoco/2halfcheetah": "og_marl/halfcheetah_2x3",
    "omiga/mamujoco/6halfcheetah": "omiga/halfcheetah_6x1",
    "omiga/mamujoco/3hopper": "omiga/hopper_3x1",
    "omiga/mamujoco/2ant": "omiga/ant_2x4",
    "og_marl/gymnasium_mamujoco/2ant": "mamujoco/ant_2x4",
    "og_marl/gymnasium_mamujoco/2halfcheetah": "mamujoco/halfcheetah_2x3",
    "og_marl/gymnasium_mamujoco/2walker": "mamujoco/walker2d_2x3",
    "og_marl/gymnasium_mamujoco/3hopper": "mamujoco/hopper_3x1",
    "og_marl/gymnasium_mamujoco/4ant": "mamujoco/ant_4x2",
    "og_marl/gymnasium_mamujoco/6halfcheetah": "mamujoco/halfcheetah_6x1",
}
OMAR_TASKS = {
    "simple_spread": "omar/simple_spread",
    "simple_tag": "omar/simple_tag",
    "simple_world": "omar/simple_world",
    "HalfCheetah-v2": "omar/halfcheetah_2x3",
}
OMIGA_TASK_NAMES = {
    "HalfCheetah-v2-6x1": "omiga/halfcheetah_6x1",
    "Hopper-v2-3x1": "omiga/hopper_3x1",
    "Ant-v2-2x4": "omiga/ant_2x4",
}
NON_TERMINATING = {  # tasks whose episodes only end at their time limit -> that limit
    "omar/simple_spread": 25,
    "omar/simple_tag": 25,
    "omar/simple_world": 25,
    "omar/halfcheetah_2x3": 1000,
    "og_marl/halfcheetah_2x3": 1000,
    "mamujoco/halfcheetah_2x3": 1000,
    "mamujoco/halfcheetah_6x1": 1000,
    "omiga/halfcheetah_6x1": 1000,
}
DISCRETE_ENVS = {"smac_v1": "SMAC", "smac_v2": "SMACv2", "rware": "RWARE", "flatland": "Flatland"}
NO_TASK = {  # continuous data recorded in a layout the suite does not build
    "og_marl/mamujoco/2ant": "recorded in multiagent_mujoco v1.1's Ant layout, which the suite does not build "
    "(og_marl/gymnasium_mamujoco/2ant evaluates on mamujoco/ant_2x4)",
    "og_marl/mamujoco/4ant": "recorded in multiagent_mujoco v1.1's Ant layout, which the suite does not build "
    "(og_marl/gymnasium_mamujoco/4ant evaluates on mamujoco/ant_4x2)",
}


def evaluation(source: str, env: str, scenario: str, discrete: bool) -> tuple[str | None, str]:
    """(task, refusal reason) of the vaults ``<source>/<env>/<scenario>``."""
    prefix = f"{source}/{env}/{scenario}"
    if discrete or env in DISCRETE_ENVS:
        family = DISCRETE_ENVS.get(env, env)
        return None, (
            f"{family} data have discrete actions; the suite has no {family} environment and its algorithms act "
            "in continuous [-1, 1] boxes (use a MaMuJoCo or MPE dataset: `dmarl datasets list`)"
        )
    if prefix in VAULT_TASKS:
        return VAULT_TASKS[prefix], ""
    return None, NO_TASK.get(prefix, f"no suite environment matches {prefix}'s recording layout")


EXTRA_VAULTS = {  # named in docs/datasets.md, absent from the card
    "og_marl/mamujoco/2ant": ("Good", "Medium", "Poor"),
    "og_marl/mamujoco/4ant": ("Good", "Medium", "Poor"),
    **{
        f"og_marl/gymnasium_mamujoco/{s}": ("Replay",)
        for s in ("2ant", "2halfcheetah", "2walker", "3hopper", "4ant", "6halfcheetah")
    },
}


def data_root() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR))


@dataclass(frozen=True)
class CatalogueEntry:
    """A known dataset: expected raw shapes (None = time axis), statistics and where to get it."""

    name: str
    format: str  # "vault" | "omar" | "omiga"
    n_agents: int
    obs_dims: tuple[int, ...] | None  # true per-agent dims, when known
    action_dim: int | None
    state_dim: int | None
    steps: int | None  # time steps per vault row / OMAR seed / OMIGA file
    trajectories: int | None
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    returns: dict[str, float] = field(default_factory=dict)  # mean, std, min, max
    reward_convention: str = "shared"
    discrete: bool = False
    download: str = ""
    location: str = ""  # relative to the data root
    task: str | None = None  # the suite task that evaluates policies trained on it
    refused: str = ""  # why no task can, when task is None
    transition_rule: str = "og_marl"  # "og_marl" | "omiga" (1001 rows per 1000-step episode)

    @property
    def truncation_limit(self) -> int | None:
        """The episode limit of a task that cannot terminate (None: it can)."""
        return NON_TERMINATING.get(self.task or "")

    def evaluation_task(self) -> str:
        """The task that evaluates this dataset's policies, or one UserError saying why none does."""
        if self.task is None:
            raise UserError(f"dataset {self.name}: no evaluation task: {self.refused}")
        return self.task

    def path(self, root: Path | None = None) -> Path:
        return (root or data_root()) / self.location

    def check_shape(self, file: Path | str, key: str, shape: tuple[int, ...]) -> None:
        """Raise if a raw array's shape differs from the entry's (the time axis is free)."""
        if key in self.shapes:
            check_shape(file, f"{key} (catalogue {self.name})", shape, self.shapes[key])

    def compare(self, dataset: OfflineDataset) -> list[str]:
        """Warnings where step counts or returns differ from the catalogue's statistics."""
        warnings = []
        steps = dataset.metadata.get("steps_per_row", [])
        if self.steps is not None and any(s != self.steps for s in steps):
            warnings.append(f"catalogue {self.name} lists {self.steps} steps per row/seed/file; found {steps}")
        if self.returns and len(dataset.episodes):
            mean = float(dataset.episodes.returns.mean())
            low, high = self.returns["min"], self.returns["max"]
            if not low - 1e-6 * abs(low) <= mean <= high + 1e-6 * abs(high):
                warnings.append(
                    f"mean episode return {mean:.4g} lies outside the catalogue's range [{low:.4g}, {high:.4g}] "
                    f"for {self.name} (reward convention {dataset.metadata.get('reward_convention')})"
                )
        return warnings

    def describe(self) -> list[str]:
        """Human-readable lines for ``dmarl datasets info``."""
        lines = [
            f"catalogue entry: {self.name} ({self.format})",
            f"  agents {self.n_agents}, obs dims {self.obs_dims or 'unknown'}, "
            f"action dim {self.action_dim or 'unknown'}, "
            f"state dim {self.state_dim or 'unknown'}{', discrete actions' if self.discrete else ''}",
            f"  steps per row/seed/file {self.steps or 'unknown'}, trajectories {self.trajectories or 'unknown'}",
            f"  evaluation task: {self.task}" if self.task else f"  evaluation task: none (refused: {self.refused})",
        ]
        if self.shapes:
            lines.append("  shapes: " + ", ".join(f"{k} {shape_str(v)}" for k, v in self.shapes.items()))
        if self.returns:
            lines.append("  returns: " + ", ".join(f"{k} {v:.4g}" for k, v in self.returns.items()))
        return lines


def _card_returns(stats: dict) -> dict[str, float]:
    keys = {
        "mean": "Mean episode return",
        "std": "Standard deviation episode return",
        "min": "Min return",
        "max": "Max return",
    }
    return {k: float(stats[v]) for k, v in keys.items() if v in stats}


def _free_time(shape: list[int]) -> tuple[int | None, ...]:
    return (shape[0], None, *shape[2:])


def _vault_entry(source: str, env: str, scenario: str, dataset: str, stats: dict) -> CatalogueEntry:
    structure = stats["Structure"]
    obs, actions, state = structure["observations"], structure["actions"], structure["infos"]["state"]
    shapes = {
        key: _free_time(structure[key]) for key in ("observations", "actions", "rewards", "terminals", "truncations")
    }
    shapes["infos.state"] = (state[0], None, state[-1])  # replicated per-agent states are read as (B, T, S)
    omar_id = next((k for k, v in OMAR_ENVS.items() if source == "omar" and v[0] == f"{env}/{scenario}"), None)
    true_dims = OMAR_ENVS[omar_id][1] if omar_id else None
    discrete = len(actions) == 3 or stats.get("Action space") == "Discrete"
    task, refused = evaluation(source, env, scenario, discrete)
    return CatalogueEntry(
        name=f"{source}/{env}/{scenario}/{dataset}",
        format="vault",
        n_agents=obs[2],
        obs_dims=true_dims or (obs[3],) * obs[2],
        action_dim=actions[3] if len(actions) == 4 else None,
        state_dim=state[-1],
        steps=int(stats["Transitions"]),
        trajectories=int(stats["Trajectories"]),
        shapes=shapes,
        returns=_card_returns(stats),
        reward_convention=OMAR_REWARDS.get(omar_id or "", "shared"),
        discrete=discrete,
        download=stats.get("Download link", HUB),
        location=f"vaults/{source}/{env}/{scenario}.vlt/{dataset}",
        task=task,
        refused=refused,
        transition_rule="omiga" if (source, env) == ("omiga", "mamujoco") else "og_marl",
    )


def _omar_entry(env_id: str, quality: str, card_stats: dict | None) -> CatalogueEntry:
    card_name, obs_dims, act, state = OMAR_ENVS[env_id]
    shapes: dict[str, tuple[int | None, ...]] = {}
    for i, d in enumerate(obs_dims):
        shapes.update(
            {
                f"obs_{i}": (None, d),
                f"next_obs_{i}": (None, d),
                f"acs_{i}": (None, act),
                f"rews_{i}": (None,),
                f"dones_{i}": (None,),
            }
        )
        if state:
            shapes.update({f"states_{i}": (None, state), f"next_states_{i}": (None, state)})
    stats = card_stats or {}
    vault_link = stats.get("Download link")
    return CatalogueEntry(
        name=f"omar-npy/{env_id}/{quality}",
        format="omar",
        n_agents=len(obs_dims),
        obs_dims=obs_dims,
        action_dim=act,
        state_dim=state,
        steps=int(stats["Transitions"]) if stats else None,
        trajectories=int(stats["Trajectories"]) if stats else None,
        shapes=shapes,
        returns=_card_returns(stats),
        reward_convention=OMAR_REWARDS.get(env_id, "shared"),
        download=OMAR_DOWNLOADS[env_id] + (f"; OG-MARL's vault conversion: {vault_link}" if vault_link else ""),
        location=f"omar/{env_id}/{quality}",
        task=OMAR_TASKS[env_id],
    )


def _omiga_entry(task: str, quality: str, card_stats: dict | None) -> CatalogueEntry:
    _, n, width, act = OMIGA_TASKS[task]
    stats = card_stats or {}
    return CatalogueEntry(
        name=f"omiga-hdf5/{task}/{quality}",
        format="omiga",
        n_agents=n,
        obs_dims=(width,) * n,
        action_dim=act,
        state_dim=width,
        steps=int(stats["Transitions"]) if stats else None,
        trajectories=int(stats["Trajectories"]) if stats else None,
        shapes={"s": (None, n, width), "o": (None, n, width), "a": (None, n, act)},
        returns=_card_returns(stats),
        download=OMIGA_DOWNLOAD,
        location=f"omiga/{task}-{quality}.hdf5",
        task=OMIGA_TASK_NAMES[task],
        transition_rule="omiga",
    )


@lru_cache(maxsize=1)
def load_card() -> dict:
    """The OG-MARL dataset card (stored as a JSON string holding the dict)."""
    card = json.loads(DATACARD.read_text())
    return json.loads(card) if isinstance(card, str) else card


@lru_cache(maxsize=1)
def catalogue() -> dict[str, CatalogueEntry]:
    """Every known dataset by name."""
    card = load_card()
    entries: dict[str, CatalogueEntry] = {}
    for source, envs in card.items():
        for env, scenarios in envs.items():
            for scenario, datasets in scenarios.items():
                for dataset, stats in datasets.items():
                    entry = _vault_entry(source, env, scenario, dataset, stats)
                    entries[entry.name] = entry
    for prefix, datasets in EXTRA_VAULTS.items():
        for dataset in datasets:
            source, env, scenario = prefix.split("/")
            name = f"{prefix}/{dataset}"
            task, refused = evaluation(source, env, scenario, False)
            entries[name] = CatalogueEntry(
                name=name,
                format="vault",
                n_agents=int(re.match(r"\d+", scenario).group()),
                obs_dims=None,
                action_dim=None,
                state_dim=None,
                steps=None,
                trajectories=None,
                download=f"not on OG-MARL's dataset card; look for {env}/{scenario} under {HUB}",
                location=f"vaults/{source}/{env}/{scenario}.vlt/{dataset}",
                task=task,
                refused=refused,
            )
    for env_id, (card_name, *_rest) in OMAR_ENVS.items():
        env, scenario = card_name.split("/")
        for quality, card_quality in OMAR_QUALITIES.items():
            stats = card.get("omar", {}).get(env, {}).get(scenario, {}).get(card_quality)
            entry = _omar_entry(env_id, quality, stats)
            entries[entry.name] = entry
    for task, (scenario, *_rest) in OMIGA_TASKS.items():
        for quality, card_quality in OMIGA_QUALITIES.items():
            stats = card.get("omiga", {}).get("mamujoco", {}).get(scenario, {}).get(card_quality)
            entry = _omiga_entry(task, quality, stats)
            entries[entry.name] = entry
    return entries


def lookup(name: str) -> CatalogueEntry | None:
    return catalogue().get(name)


def identify(path: Path, fmt: str) -> CatalogueEntry | None:
    """The catalogue entry a local dataset path corresponds to, from its layout and names."""
    parts = Path(path).resolve().parts
    if fmt == "vault" and len(parts) >= 4 and parts[-2].endswith(".vlt"):
        return lookup(f"{parts[-4]}/{parts[-3]}/{parts[-2][: -len('.vlt')]}/{parts[-1]}")
    if fmt == "omar":
        if re.fullmatch(r"seed_\d+_data", parts[-1]):
            parts = parts[:-1]
        return lookup(f"omar-npy/{parts[-2]}/{parts[-1]}") if len(parts) >= 2 else None
    if fmt == "omiga":
        match = re.fullmatch(r"(.+-v\d+-\d+x\d+)-(expert|medium-expert|medium-replay|medium)", Path(path).stem)
        return lookup(f"omiga-hdf5/{match.group(1)}/{match.group(2)}") if match else None
    return None


def omar_episode_limit(env_id: str) -> int | None:
    return OMAR_EPISODE_LIMITS.get(env_id)
