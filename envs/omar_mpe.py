"""OMAR-compatible MPE tasks (Pan et al. 2022, ICML; data recorded in OMAR's vendored MPE).

Tasks (E copies via ``envs/mpe.py``'s ``MPEVecEnv``; physics and scenarios in
``envs/_omar_mpe_world.py``, built on mpe2's core):

- ``omar/simple_spread``: 3 agents, obs 18, OMAR's reward ``sum_l min(1/d_l, 10) - 5 * collisions``
  per agent; team reward the mean over agents (OMAR's evaluation).
- ``omar/simple_tag``: 3 predators + the prey (obs 16, 16, 16, 14), shaped predator reward,
  force ``mass * accel * (accel * a)``; the prey is OMAR's pretrained network; team reward agent 0's.
- ``omar/simple_world``: OMAR's own simple_world (3 silent predators, 1 prey; obs 24, 24, 24, 22),
  prey network, agent 0's reward.
- ``omar/simple_tag_heuristic`` / ``omar/simple_world_heuristic``: the same with the suite's
  ``flee_nearest_predator-v1`` prey (``envs/mpe.py``) instead of OMAR's network.

Conventions:

- Actions: OMAR's 2-D ``a`` in [-1, 1] per agent (the data's ``acs_i``), applied through the
  suite's 5-D MPE action ``[-1, -ax, ax, -ay, ay]`` (see ``_omar_mpe_world.suite_action``).
- Every agent of the data is a protocol agent, the prey included (OMAR's files hold 4 agents
  and its buffer trains on all 4): the prey's action input is ignored, its controller acts
  (recorded in ``spec.versions["prey_policy"]``). ``state``: all agents' observations, each
  zero-padded to the widest (the prey's 14 -> 16 in tag), concatenated: OG-MARL's vault
  conversion of OMAR's data stores exactly this ``infos.state`` (tag 64, world 96, spread 54),
  and the OMAR ``.npy`` loader derives the same from the files.
- Episodes truncate after 25 steps; they never terminate (OMAR writes no dones for MPE).
- Physics: OMAR's force law and integration order for every task. Only the forces of spread
  agree with mpe2: mpe2 moves with the old velocity before updating it, which puts an agent
  up to 0.05 away from where OMAR's env puts it after one step (0.09 after 24; measured on
  random actions), so mpe2's own spread would not reproduce OMAR's transitions.

Prey weights (``prey_weights`` task kwarg, e.g. gin ``run.task_kwargs = {'prey_weights': '...'}``;
default ``<data root>/omar/<env_id>/pretrained_adv_model.pt``, where OMAR's data archives
put it): loaded with ``torch.load(weights_only=True)``; either a plain state dict of OMAR's
``MLPNetwork`` policy (``in_fn`` BatchNorm1d(obs) -> ``fc1`` 64 -> ReLU -> ``fc2`` 64 -> ReLU ->
``fc3`` 2 -> tanh, run in eval mode) or OMAR's saved MADDPG dict, whose
``agent_params[3]["policy"]`` is the prey's (``load_pretrained_preys`` takes the entries after
the 3 predators: a guess at the file's layout, which is not published).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dmarl.envs.mpe import MPEVecEnv, flee_nearest_predator
from dmarl.errors import UserError
from dmarl.registry import register_task

PREY_FILE = "pretrained_adv_model.pt"
PREY_HIDDEN = 64
NUM_PREDATORS = 3


def prey_state_shapes(obs_dim: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of OMAR's prey policy state dict (``utils/networks.py`` ``MLPNetwork``)."""
    h = PREY_HIDDEN
    norm = ("weight", "bias", "running_mean", "running_var")
    shapes: dict[str, tuple[int, ...]] = {f"in_fn.{k}": (obs_dim,) for k in norm}
    shapes["in_fn.num_batches_tracked"] = ()
    for name, (out, inp) in {"fc1": (h, obs_dim), "fc2": (h, h), "fc3": (2, h)}.items():
        shapes.update({f"{name}.weight": (out, inp), f"{name}.bias": (out,)})
    return shapes


def _prey_error(path: Path, obs_dim: int, found: str, alternative: str) -> UserError:
    return UserError(
        f"prey weights {path}: expected a plain state dict of OMAR's prey policy (BatchNorm1d({obs_dim}) -> "
        f"Linear {PREY_HIDDEN} -> ReLU -> Linear {PREY_HIDDEN} -> ReLU -> Linear 2 -> tanh; keys "
        f"{sorted(prey_state_shapes(obs_dim))}) or OMAR's {PREY_FILE} ({{'agent_params': [..., {{'policy': ...}}]}}); "
        f"found {found}. Use {alternative} to evaluate without OMAR's prey."
    )


def load_prey_policy(path: str | Path, obs_dim: int, alternative: str = "the task's *_heuristic variant") -> Any:
    """OMAR's prey policy network from ``path`` (eval mode), or one UserError naming what is wrong."""
    import torch

    path = Path(path)

    def fail(found: str) -> UserError:
        return _prey_error(path, obs_dim, found, alternative)

    if not path.is_file():
        raise UserError(
            f"prey weights {path}: no such file; expected OMAR's {PREY_FILE} (set run.task_kwargs = "
            f"{{'prey_weights': '<file>'}} or put it there), or use {alternative}"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects, corrupt files: torch raises several types
        raise fail(f"a file torch.load(weights_only=True) refuses ({type(err).__name__})") from None
    if isinstance(saved, Mapping) and "agent_params" in saved:
        params = saved["agent_params"]
        prey = params[NUM_PREDATORS] if isinstance(params, (list, tuple)) and len(params) > NUM_PREDATORS else None
        if not isinstance(prey, Mapping) or "policy" not in prey:
            raise fail(f"'agent_params' without a prey entry {NUM_PREDATORS} holding 'policy'")
        saved = prey["policy"]
    if not isinstance(saved, Mapping) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise fail(f"a {type(saved).__name__} that is not a dict of tensors")
    want = prey_state_shapes(obs_dim)
    got = {k: tuple(v.shape) for k, v in saved.items()}
    if got != want:
        diff = sorted(set(got) ^ set(want)) or sorted(k for k in want if got[k] != want[k])
        raise fail(f"keys/shapes differing at {diff[:4]}")
    net = prey_network(obs_dim)
    net.load_state_dict(dict(saved))
    return net.eval()


def prey_network(obs_dim: int) -> Any:
    """OMAR's ``MLPNetwork(obs_dim, 2, hidden_dim=64, constrain_out=True)`` with its key names."""
    import torch
    from torch import nn

    class PreyPolicy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_fn = nn.BatchNorm1d(obs_dim)
            self.fc1, self.fc2 = nn.Linear(obs_dim, PREY_HIDDEN), nn.Linear(PREY_HIDDEN, PREY_HIDDEN)
            self.fc3 = nn.Linear(PREY_HIDDEN, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc2(torch.relu(self.fc1(self.in_fn(x)))))
            return torch.tanh(self.fc3(h)).clamp(-1.0, 1.0)

    return PreyPolicy()


class NetworkPrey:
    """Prey controller: OMAR's pretrained policy on the prey's own observation (deterministic)."""

    def __init__(self, net: Any, digest: str) -> None:
        self.net, self.name = net, f"omar-pretrained-sha256:{digest[:16]}"

    def __call__(self, agent: Any, world: Any, scenario: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.as_tensor(scenario.observation(agent, world), dtype=torch.float32)[None]
            return self.net(x)[0].numpy().astype(np.float64)


class HeuristicPrey:
    """Prey controller: the suite's ``flee_nearest_predator-v1`` as an OMAR 2-D action."""

    name = "flee_nearest_predator-v1"

    def __call__(self, agent: Any, world: Any, scenario: Any) -> np.ndarray:
        move = flee_nearest_predator(agent, world)  # mpe2's [no-op, left, right, down, up] in [0, 1]
        return np.array([move[2] - move[1], move[4] - move[3]], dtype=np.float64)


def make_prey(env_id: str, prey: str | None, prey_weights: str | Path | None, obs_dim: int) -> Any:
    """The prey controller of a task: None (spread), the heuristic, or OMAR's network."""
    if prey is None:
        return None
    if prey == "heuristic":
        return HeuristicPrey()
    if prey != "network":
        raise ValueError(f"prey must be None, 'heuristic' or 'network'; got {prey!r}")
    from dmarl.envs.datasets.catalogue import data_root

    path = Path(prey_weights) if prey_weights else data_root() / "omar" / env_id / PREY_FILE
    net = load_prey_policy(path, obs_dim, f"omar/{env_id}_heuristic")
    return NetworkPrey(net, hashlib.sha256(path.read_bytes()).hexdigest())


class OmarMPEVecEnv(MPEVecEnv):
    """E copies of an OMAR MPE scenario behind the suite's batched protocol (all agents exposed)."""

    def __init__(
        self,
        num_envs: int,
        task: str,
        scenario: str,
        prey: str | None = None,
        prey_weights: str | Path | None = None,
        prey_obs_dim: int = 0,
        reward_convention: str = "mean",
        max_cycles: int = 25,
    ) -> None:
        self._prey = make_prey(scenario, prey, prey_weights, prey_obs_dim)
        super().__init__(num_envs, task, scenario, "all", None, reward_convention, max_cycles)
        self.spec = dataclasses.replace(self.spec, state_dim=self.spec.n_agents * self.spec.obs_max)
        self.spec.versions["omar_mpe"] = "ling-pan/OMAR multiagent-particle-envs (vendored MPE)"
        if self._prey is not None:
            self.spec.versions["prey_policy"] = self._prey.name

    def _make_copy(self, scenario: str, max_cycles: int, env_kwargs: dict[str, Any]) -> Any:
        """One OMAR copy (``env_kwargs`` is empty: the constructor takes no mpe2 or shift options,
        since mpe2's shift parameters assume mpe2's force law)."""
        from dmarl.envs._omar_mpe_world import OmarSimpleEnv

        return OmarSimpleEnv(scenario, max_cycles, self._prey)

    def _observe(self, e: int, obs: np.ndarray, state: np.ndarray) -> None:
        """Row e of the batches; the state is the padded ``[N, O_max]`` observations, flattened."""
        env = self._envs[e]
        for i, agent in enumerate(env.world.agents):
            o = env.scenario.observation(agent, env.world)
            obs[e, i, : len(o)] = o
        state[e] = obs[e].reshape(-1)

    def last_step(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy e's last applied actions ``[N, 2]`` (the prey's own) and per-agent rewards ``[N]``."""
        return self._envs[e].last_actions.copy(), self._envs[e].last_rewards.copy()


def record_omar_npy(env: OmarMPEVecEnv, seed_dir: str | Path, episodes: int, seed: int = 0) -> Path:
    """Write ``episodes`` episodes of uniform random actions in OMAR's per-agent ``.npy`` layout.

    Files (OMAR's ``ReplayBuffer.load_batch_data``): ``obs_i``, ``acs_i``, ``rews_i`` (agent i's
    own reward), ``next_obs_i``, ``dones_i`` (all False, as OMAR's MPE data) per agent, float32;
    the prey's ``acs`` are its controller's actions. Layout and task agree by construction.
    """
    if env.num_envs != 1:
        raise ValueError(f"record_omar_npy writes one copy's consecutive episodes; got num_envs={env.num_envs}")
    spec, rng = env.spec, np.random.default_rng(seed)
    steps = episodes * spec.episode_limit
    keys = ("obs", "acs", "rews", "next_obs")
    rows: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in spec.agent_ids] for k in keys}
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        actions = rng.uniform(-1.0, 1.0, size=(1, spec.n_agents, spec.act_max)).astype(np.float32)
        nxt, _, _, _, _, info = env.step(actions)
        applied, rewards = env.last_step(0)
        for i, d in enumerate(spec.obs_dims):
            rows["obs"][i].append(obs[0, i, :d])
            rows["acs"][i].append(applied[i])
            rows["rews"][i].append(rewards[i])
            rows["next_obs"][i].append(info["final_obs"][0, i, :d])
        obs = nxt
    seed_dir = Path(seed_dir)
    seed_dir.mkdir(parents=True, exist_ok=True)
    for i in range(spec.n_agents):
        for key, values in rows.items():
            np.save(seed_dir / f"{key}_{i}.npy", np.stack(values[i]).astype(np.float32))
        np.save(seed_dir / f"dones_{i}.npy", np.zeros(steps, dtype=np.float32))
    return seed_dir


def _register(name: str, description: str, **kwargs: Any) -> None:
    register_task(name, "mpe", OmarMPEVecEnv, description, task=name, **kwargs)


_register("omar/simple_spread", "OMAR's cooperative navigation (3 agents, OMAR reward, 2-D force actions)",
          scenario="simple_spread", reward_convention="mean")
for _env_id, _obs, _what in (("simple_tag", 14, "predator-prey"), ("simple_world", 22, "OMAR's simple_world")):
    _register(f"omar/{_env_id}", f"{_what}: 3 predators vs OMAR's pretrained prey (prey_weights)",
              scenario=_env_id, prey="network", prey_obs_dim=_obs, reward_convention="agent0")
    _register(f"omar/{_env_id}_heuristic", f"{_what}: 3 predators vs the suite's flee_nearest_predator prey",
              scenario=_env_id, prey="heuristic", prey_obs_dim=_obs, reward_convention="agent0")
