"""Environment layer: every registered task against its spec and the batched protocol."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from dmarl.envs.base import EnvSpec, MultiAgentVecEnv, rescale_actions
from dmarl.envs.factory import GlobalObservation, make_env
from dmarl.registry import TASKS, UnknownNameError, get_task

get_task("toy/bandit")  # imports every task module, filling TASKS
ALL_TASKS = sorted(TASKS)
E = 2


@pytest.fixture(scope="module", autouse=True)
def omar_prey_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """omar/simple_tag and omar/simple_world read OMAR's prey weights from the data root: random ones here."""
    from test_omar_mpe import PREY_FILE, write_prey

    root = tmp_path_factory.mktemp("data")
    for env_id, obs_dim in (("simple_tag", 14), ("simple_world", 22)):
        write_prey(root / "omar" / env_id / PREY_FILE, obs_dim)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DMARL_DATA_DIR", str(root))
        yield


@pytest.fixture(scope="module")
def envs() -> Iterator[dict[str, MultiAgentVecEnv]]:
    """One E-copy env per task, shared by the module (JaxMARL compiles once per task)."""
    cache: dict[str, MultiAgentVecEnv] = {}
    yield cache
    for env in cache.values():
        env.close()


def _env(envs: dict[str, MultiAgentVecEnv], task: str) -> MultiAgentVecEnv:
    if task not in envs:
        envs[task] = make_env(task, E)
    return envs[task]


def _random_actions(spec: EnvSpec, rng: np.random.Generator) -> np.ndarray:
    """Uniform actions in [-1, 1], padding entries included (adapters must ignore them)."""
    return rng.uniform(-1.0, 1.0, (E, spec.n_agents, spec.act_max)).astype(np.float32)


def _check_obs(spec: EnvSpec, obs: np.ndarray, state: np.ndarray) -> None:
    assert obs.shape == (E, spec.n_agents, spec.obs_max) and obs.dtype == np.float32
    assert state.shape == (E, spec.state_dim) and state.dtype == np.float32
    assert np.all(obs[:, ~spec.obs_mask()] == 0.0)
    assert np.all(np.isfinite(obs)) and np.all(np.isfinite(state))


@pytest.mark.parametrize("task", ALL_TASKS)
def test_spec_and_step_shapes(envs: dict[str, MultiAgentVecEnv], task: str) -> None:
    env = _env(envs, task)
    spec = env.spec
    assert spec.name == task and env.num_envs == E
    assert spec.versions and all(spec.versions.values())
    assert spec.action_mask().shape == (spec.n_agents, spec.act_max)
    obs, state = env.reset(seed=0)
    _check_obs(spec, obs, state)
    obs, state, reward, terminated, truncated, info = env.step(_random_actions(spec, np.random.default_rng(0)))
    _check_obs(spec, obs, state)
    assert reward.shape == (E,) and np.all(np.isfinite(reward))
    assert terminated.shape == truncated.shape == (E,)
    assert terminated.dtype == truncated.dtype == bool
    assert set(info) >= {"done", "final_obs", "final_state", "episode_return", "episode_length"}  # + task extras
    _check_obs(spec, info["final_obs"], info["final_state"])


@pytest.mark.parametrize("task", ALL_TASKS)
def test_random_episode_autoreset(envs: dict[str, MultiAgentVecEnv], task: str) -> None:
    env = _env(envs, task)
    spec = env.spec
    rng = np.random.default_rng(1)
    obs, state = env.reset(seed=1)
    returns, finished = np.zeros(E), np.zeros(E, dtype=bool)
    for t in range(1, spec.episode_limit + 1):
        obs, state, reward, terminated, truncated, info = env.step(_random_actions(spec, rng))
        done = info["done"]
        returns += reward
        np.testing.assert_array_equal(done, terminated | truncated)
        live = ~done & ~finished
        np.testing.assert_array_equal(info["final_obs"][live], obs[live])
        np.testing.assert_array_equal(info["final_state"][live], state[live])
        assert np.all(np.isnan(info["episode_return"][~done])) and np.all(info["episode_length"][~done] == 0)
        first = done & ~finished
        np.testing.assert_allclose(info["episode_return"][first], returns[first], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(info["episode_length"][first], t)
        assert not truncated[first].any() or t == spec.episode_limit, "truncation only at the time limit"
        finished |= done
        if finished.all():
            break
    assert finished.all(), f"{task}: an episode ran past episode_limit={spec.episode_limit}"


@pytest.mark.parametrize("task", ALL_TASKS)
def test_reset_seed_reproducible(envs: dict[str, MultiAgentVecEnv], task: str) -> None:
    """Same seed, same actions -> same rollout, whatever the padded action entries hold."""
    env = _env(envs, task)
    actions = _random_actions(env.spec, np.random.default_rng(2))
    repadded = np.where(env.spec.action_mask(), actions, 0.5).astype(np.float32)

    def rollout(acts: np.ndarray) -> list[np.ndarray]:
        out = list(env.reset(seed=7))
        for _ in range(3):
            out.extend(env.step(acts)[:3])
        return out

    for a, b in zip(rollout(actions), rollout(repadded)):
        np.testing.assert_array_equal(a, b)
    if env.spec.family != "toy":  # toy tasks are deterministic
        obs, _ = env.reset(seed=7)
        assert not np.array_equal(obs[0], obs[1]), "copies must get different seeds"


@pytest.mark.parametrize("task", ALL_TASKS)
def test_global_obs_wrapper(envs: dict[str, MultiAgentVecEnv], task: str) -> None:
    env = GlobalObservation(_env(envs, task))
    spec, n, s = env.spec, env.spec.n_agents, env.spec.state_dim
    assert spec.obs_dims == (s + n,) * n and spec.name == f"{task}+global_obs"
    obs, state = env.reset(seed=0)
    _check_obs(spec, obs, state)
    np.testing.assert_array_equal(obs[:, :, :s], np.repeat(state[:, None], n, axis=1))
    np.testing.assert_array_equal(obs[:, :, s:], np.broadcast_to(np.eye(n), (E, n, n)))
    obs, state, *_, info = env.step(_random_actions(spec, np.random.default_rng(3)))
    _check_obs(spec, obs, state)
    np.testing.assert_array_equal(info["final_obs"][:, 0, :s], info["final_state"])


def test_make_env_unknown_task_and_overrides() -> None:
    with pytest.raises(UnknownNameError, match="simple_spread_n3"):
        make_env("mpe/simple_sprad_n3", 1)
    env = make_env("toy/coordination_game", 3, n_agents=4)
    assert env.spec.n_agents == 4 and env.num_envs == 3
    env = make_env("mpe/simple_spread_n3", 1, reward_convention="mean")
    assert env.spec.reward_convention == "mean"
    with pytest.raises(ValueError, match="reward_convention"):
        make_env("mpe/simple_spread_n3", 1, reward_convention="shared")
    with pytest.raises(ValueError, match="agent_obsk"):
        make_env("mamujoco/swimmer_2x1", 1, agent_obsk=None)


def test_rescale_actions_affine_and_clipped() -> None:
    low, high = np.array([[0.0, -2.0]]), np.array([[1.0, 2.0]])
    a = np.array([[[-1.0, 0.0]], [[1.0, 5.0]]])
    np.testing.assert_allclose(rescale_actions(a, low, high), [[[0.0, 0.0]], [[1.0, 2.0]]])


@pytest.mark.parametrize("task, kwargs", [("mpe/simple_spread_n3", {"N": 3}), ("mpe/simple_reference", {})])
def test_mpe_matches_mpe2_parallel_env(task: str, kwargs: dict) -> None:
    """The world-step driver reproduces mpe2's public parallel API step for step."""
    import importlib

    module = importlib.import_module(f"mpe2.{get_task(task).kwargs['scenario']}")
    ref = module.parallel_env(max_cycles=25, continuous_actions=True, **kwargs)
    env = make_env(task, 1)
    agents = env.spec.agent_ids
    ref_obs, _ = ref.reset(seed=5)
    obs, state = env.reset(seed=5)
    rng = np.random.default_rng(4)
    for _ in range(25):
        np.testing.assert_allclose(obs[0], np.stack([ref_obs[a] for a in agents]), rtol=1e-6)
        np.testing.assert_allclose(state[0], ref.state(), rtol=1e-6)
        actions = _random_actions(env.spec, rng)[:1]
        ref_obs, ref_rew, _, ref_trunc, _ = ref.step({a: (actions[0, i] + 1) / 2 for i, a in enumerate(agents)})
        obs, state, reward, _, truncated, info = env.step(actions)
        np.testing.assert_allclose(reward[0], sum(ref_rew.values()), rtol=1e-5)
        assert truncated[0] == ref_trunc[agents[0]]
    np.testing.assert_allclose(info["final_obs"][0], np.stack([ref_obs[a] for a in agents]), rtol=1e-6)


@pytest.mark.parametrize("task", ["mpe/simple_adversary", "mpe/simple_tag", "mpe/simple_world_comm"])
def test_mpe_opponent_policy_recorded(envs: dict[str, MultiAgentVecEnv], task: str) -> None:
    assert _env(envs, task).spec.versions["opponent_policy"].endswith("-v1")


def test_flee_nearest_predator_moves_away() -> None:
    from mpe2 import simple_tag_v3

    from dmarl.envs.mpe import flee_nearest_predator

    world = simple_tag_v3.raw_env(continuous_actions=True).world
    prey = next(a for a in world.agents if not a.adversary)
    prey.state.p_pos = np.zeros(2)
    for i, a in enumerate(a for a in world.agents if a.adversary):
        a.state.p_pos = np.array([0.1 + i, 0.0])  # nearest predator to the right
    act = flee_nearest_predator(prey, world)
    assert act[1] > 0.99 and act[2] == 0.0  # full "move left"


def test_toy_rewards() -> None:
    bandit = make_env("toy/bandit", 2)
    bandit.reset(seed=0)
    _, _, reward, terminated, _, info = bandit.step(np.array([[[1.0], [1.0]], [[0.5], [-0.5]]], np.float32))
    np.testing.assert_allclose(reward, [1.0, -0.25])
    assert terminated.all() and np.all(info["episode_length"] == 1)

    from dmarl.envs import toy

    game = make_env("toy/coordination_game", 2, n_agents=3)
    game.reset(seed=0)
    at_mode = np.full((2, 3, 1), toy.COORD_MODE, np.float32)
    at_mode[1, 2] = 0.0  # copy 1: one agent misses the mode
    _, state, *_ = game.step(at_mode)
    np.testing.assert_array_equal(state, [[0.0, 1.0], [1.0, 0.0]])
    _, _, reward, *_ = game.step(np.zeros((2, 3, 1), np.float32))
    np.testing.assert_allclose(reward, [toy.COORD_GOAL_REWARD, toy.COORD_SMALL_REWARD])
