"""OMAR MPE tasks (envs/omar_mpe.py): layout probes against OMAR's vendored observation code,
closed-form physics and rewards, recorded OMAR-format steps reproduced from the recorded state,
the suite's loader and the task agreeing on rewards, prey weights checks, and OMSD's paper
gins for OMAR data trained end to end on fixture datasets and evaluated on the omar/* task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from dmarl.envs.datasets import load_dataset
from dmarl.envs.factory import make_env
from dmarl.envs.omar_mpe import PREY_FILE, prey_network, load_prey_policy, record_omar_npy
from dmarl.errors import UserError

DIMS = {"simple_spread": (18, 18, 18), "simple_tag": (16, 16, 16, 14), "simple_world": (24, 24, 24, 22)}
LANDMARKS = {"simple_spread": 3, "simple_tag": 2, "simple_world": 5}


def raw(env):  # the single mpe2 SimpleEnv copy behind a 1-copy task
    return env._envs[0]


def write_prey(path: Path, obs_dim: int, seed: int = 0) -> Path:
    """A prey policy state dict with OMAR's keys, random weights and batch-norm statistics."""
    torch.manual_seed(seed)
    net = prey_network(obs_dim)
    net.in_fn.running_mean.normal_()
    net.in_fn.running_var.uniform_(0.5, 2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding prey weights at OMAR's place for tag and world."""
    root = tmp_path / "data"
    monkeypatch.setenv("DMARL_DATA_DIR", str(root))
    for env_id, obs in (("simple_tag", 14), ("simple_world", 22)):
        write_prey(root / "omar" / env_id / PREY_FILE, obs, seed=obs)
    return root


def place(world, rng: np.random.Generator) -> None:
    """Distinct hand-placed positions and velocities for every entity."""
    for entity in world.entities:
        entity.state.p_pos = rng.uniform(-1, 1, 2)
        entity.state.p_vel = rng.uniform(-0.5, 0.5, 2) if entity.movable else np.zeros(2)


def producer_layout(env_id: str, world, i: int) -> np.ndarray:
    """Agent i's observation as OMAR's vendored scenarios build it, written out entry by entry
    (multiagent-particle-envs/multiagent/scenarios/<env_id>.py, ``observation``)."""
    agents, marks = world.agents, world.landmarks
    me = agents[i]
    out = [*me.state.p_vel, *me.state.p_pos]
    for lm in marks:  # spread: 3 landmarks; tag: 2 obstacles; world: obstacle, food 0, food 1, forest 0, forest 1
        out += [lm.state.p_pos[0] - me.state.p_pos[0], lm.state.p_pos[1] - me.state.p_pos[1]]
    for j, other in enumerate(agents):
        if j != i:
            out += [other.state.p_pos[0] - me.state.p_pos[0], other.state.p_pos[1] - me.state.p_pos[1]]
    if env_id == "simple_spread":
        out += [0.0] * 4  # the other agents' (silent) communication, 2 each
    elif i != 3:
        out += [*agents[3].state.p_vel]  # velocities of the non-adversaries (the prey) only
    if env_id == "simple_world":
        for forest in marks[3:]:
            inside = np.linalg.norm(me.state.p_pos - forest.state.p_pos) < me.size + forest.size
            out.append(1.0 if inside else -1.0)
    return np.asarray(out)


@pytest.mark.parametrize("env_id", list(DIMS))
def test_layout_probe_matches_omar_observation(env_id: str, data_root: Path) -> None:
    env = make_env(f"omar/{env_id}", 1)
    assert env.spec.obs_dims == DIMS[env_id] and env.spec.action_dims == (2,) * len(DIMS[env_id])
    assert env.spec.state_dim == len(DIMS[env_id]) * max(DIMS[env_id]) and env.spec.episode_limit == 25
    world = raw(env).world
    assert len(world.landmarks) == LANDMARKS[env_id]
    place(world, np.random.default_rng(1))
    if env_id == "simple_world":  # agent 0 inside forest 1, the prey inside forest 0
        world.agents[0].state.p_pos = world.landmarks[4].state.p_pos + 0.1
        world.agents[3].state.p_pos = world.landmarks[3].state.p_pos - 0.05
    for i, agent in enumerate(world.agents):
        got = raw(env).scenario.observation(agent, world)
        np.testing.assert_array_equal(got, producer_layout(env_id, world, i))
    if env_id == "simple_world":
        assert raw(env).scenario.observation(world.agents[0], world)[-2:].tolist() == [-1.0, 1.0]


@pytest.mark.parametrize(
    ("task", "agent", "gain", "max_speed"),
    [("omar/simple_spread", 0, 5.0, None), ("omar/simple_tag", 1, 9.0, 1.0)],
)
def test_force_and_integration_closed_form(task: str, agent: int, gain: float, max_speed, data_root: Path) -> None:
    """v' = 0.75 v + 0.1 * gain * a (clipped to max speed), then p' = p + 0.1 v' (OMAR's order)."""
    env = make_env(task, 1)
    env.reset(seed=0)
    world = raw(env).world
    for k, entity in enumerate(world.entities):  # far apart: no contact forces
        entity.state.p_pos = np.array([3.0 * k, -3.0 * k])
        entity.state.p_vel = np.zeros(2)
    me = world.agents[agent]
    v, p = np.array([0.2, -0.1]), me.state.p_pos.copy()
    me.state.p_vel = v.copy()
    for a in (np.array([0.5, -0.25]), np.array([1.0, 1.0])):
        actions = np.zeros((1, env.spec.n_agents, 2), np.float32)
        actions[0, agent] = a
        env.step(actions)
        v = 0.75 * v + 0.1 * gain * a
        if max_speed is not None and np.linalg.norm(v) > max_speed:
            v = v / np.linalg.norm(v) * max_speed
        p = p + 0.1 * v
        np.testing.assert_allclose(me.state.p_vel, v, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(me.state.p_pos, p, rtol=1e-6, atol=1e-7)
    assert max_speed is None or np.isclose(np.linalg.norm(v), max_speed)  # the second push hits the cap


def test_heuristic_prey_force_is_16a() -> None:
    env = make_env("omar/simple_tag_heuristic", 1)
    env.reset(seed=3)
    world = raw(env).world
    prey = world.agents[3]
    for k, entity in enumerate(world.entities):
        entity.state.p_pos, entity.state.p_vel = np.array([3.0 * k, 3.0 * k]), np.zeros(2)
    prey.state.p_pos = np.array([0.2, -0.1])  # away from everyone: pure action force
    env.step(np.zeros((1, 4, 2), np.float32))
    applied, _ = env.last_step(0)
    assert np.linalg.norm(applied[3]) == pytest.approx(1.0, abs=1e-6)  # full acceleration, unit direction
    expected = 0.1 * 16.0 * applied[3]
    np.testing.assert_allclose(prey.state.p_vel, expected / max(1.0, np.linalg.norm(expected) / 1.3), rtol=1e-5)


def test_spread_reward_closed_form_and_mean_convention() -> None:
    env = make_env("omar/simple_spread", 1)
    env.reset(seed=0)
    scenario, world = raw(env).scenario, raw(env).world
    for lm, pos in zip(world.landmarks, ([0.0, 0.0], [1.0, 0.0], [0.0, 1.0])):
        lm.state.p_pos = np.array(pos)
    for ag, pos in zip(world.agents, ([0.05, 0.0], [1.5, 0.0], [0.0, 1.25])):
        ag.state.p_pos = np.array(pos)
    # nearest distances 0.05 (capped at 10), 0.5 (2), 0.25 (4); no agents closer than 0.3
    assert [scenario.reward(a, world) for a in world.agents] == pytest.approx([16.0] * 3)
    world.agents[1].state.p_pos = np.array([0.25, 0.0])  # collides with agent 0 (0.2 < 0.3); L1 now at 0.75
    expected = 10.0 + 1 / 0.75 + 4.0
    assert [scenario.reward(a, world) for a in world.agents] == pytest.approx([expected - 5, expected - 5, expected])
    _, _, reward, terminated, _, _ = env.step(np.zeros((1, 3, 2), np.float32))
    _, per_agent = env.last_step(0)
    assert reward[0] == pytest.approx(per_agent.mean()) and not terminated[0]


def test_tag_shaped_rewards_closed_form() -> None:
    env = make_env("omar/simple_tag_heuristic", 1)
    env.reset(seed=0)
    scenario, world = raw(env).scenario, raw(env).world
    for ag, pos in zip(world.agents, ([0.1, 0.0], [0.5, 0.0], [0.0, -0.3], [0.0, 0.0])):
        ag.state.p_pos = np.array(pos)
    predator = -0.1 * (0.1 + 0.5 + 0.3) + 10.0  # one contact (0.1 < 0.075 + 0.05)
    assert [scenario.reward(a, world) for a in world.agents[:3]] == pytest.approx([predator] * 3)
    assert scenario.reward(world.agents[3], world) == pytest.approx(0.1 * 0.9 - 10.0)
    world.agents[3].state.p_pos = np.array([0.95, 0.0])  # out-of-bounds penalty (0.95 - 0.9) * 10
    prey = 0.1 * sum(np.linalg.norm(a.state.p_pos - [0.95, 0.0]) for a in world.agents[:3]) - 0.5
    assert scenario.reward(world.agents[3], world) == pytest.approx(prey)


def test_world_rewards_closed_form() -> None:
    env = make_env("omar/simple_world_heuristic", 1)
    env.reset(seed=0)
    scenario, world = raw(env).scenario, raw(env).world
    for ag, pos in zip(world.agents, ([0.1, 0.0], [0.5, 0.0], [0.0, -0.3], [0.0, 0.0])):
        ag.state.p_pos = np.array(pos)
    food0, food1 = world.landmarks[1], world.landmarks[2]
    food0.state.p_pos, food1.state.p_pos = np.array([0.0, 0.05]), np.array([0.0, 0.6])  # prey touches food 0
    predator = -0.1 * (0.1 + 0.5 + 0.3) + 5.0  # one contact (0.1 < 0.075 + 0.045), +5 in world
    assert [scenario.reward(a, world) for a in world.agents[:3]] == pytest.approx([predator] * 3)
    prey = 0.1 * 0.9 - 5.0 + 2.0 + 0.05 * 0.05  # contact, food bonus, +0.05 * nearest food distance (OMAR's sign)
    assert scenario.reward(world.agents[3], world) == pytest.approx(prey)
    world.agents[3].state.p_pos = np.array([-0.95, 0.0])  # twice the tag penalty: 2 * (0.95 - 0.9) * 10
    prey = 0.1 * sum(np.linalg.norm(a.state.p_pos - [-0.95, 0.0]) for a in world.agents[:3]) - 1.0
    prey += 0.05 * np.linalg.norm(food0.state.p_pos - [-0.95, 0.0])
    assert scenario.reward(world.agents[3], world) == pytest.approx(prey)


def restore(env_id: str, world, obs: list[np.ndarray]) -> None:
    """Set every entity of ``world`` from one joint observation row (each agent sees its own
    velocity and position; agent 0 sees every landmark relative to itself)."""
    for agent, o in zip(world.agents, obs):
        agent.state.p_vel, agent.state.p_pos = o[0:2].astype(np.float64), o[2:4].astype(np.float64)
    for k, lm in enumerate(world.landmarks):
        lm.state.p_pos = obs[0][4 + 2 * k: 6 + 2 * k].astype(np.float64) + world.agents[0].state.p_pos


def read_seed(seed_dir: Path, n: int) -> dict[str, list[np.ndarray]]:
    keys = ("obs", "acs", "rews", "next_obs", "dones")
    return {k: [np.load(seed_dir / f"{k}_{i}.npy", allow_pickle=False) for i in range(n)] for k in keys}


@pytest.mark.parametrize("env_id", list(DIMS))
def test_recorded_steps_reproduced_from_recorded_state(env_id: str, data_root: Path, tmp_path: Path) -> None:
    seed_dir = record_omar_npy(make_env(f"omar/{env_id}", 1), tmp_path / "rec" / "seed_0_data", episodes=2, seed=5)
    n = len(DIMS[env_id])
    data = read_seed(seed_dir, n)
    assert [a.shape for a in data["obs"]] == [(50, d) for d in DIMS[env_id]]
    assert all(a.shape == (50, 2) for a in data["acs"]) and not any(d.any() for d in data["dones"])
    # consecutive rows chain within an episode and restart at the episode boundary
    np.testing.assert_array_equal(data["next_obs"][0][:24], data["obs"][0][1:25])
    assert not np.allclose(data["next_obs"][0][24], data["obs"][0][25])
    env = make_env(f"omar/{env_id}", 1)  # a fresh copy: nothing carried over from the recording
    env.reset(seed=123)
    for t in range(50):
        restore(env_id, raw(env).world, [data["obs"][i][t] for i in range(n)])
        actions = np.stack([data["acs"][i][t] for i in range(n)])[None]
        if n == 4:
            actions[0, 3] = 0.0  # the prey's input is ignored: its controller acts
        _, _, _, _, _, info = env.step(actions)
        applied, rewards = env.last_step(0)
        for i, d in enumerate(DIMS[env_id]):
            np.testing.assert_allclose(info["final_obs"][0, i, :d], data["next_obs"][i][t], rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(rewards, [data["rews"][i][t] for i in range(n)], rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(applied[n - 1], data["acs"][n - 1][t], atol=2e-5)


@pytest.mark.parametrize(("env_id", "convention"), [("simple_spread", "mean"), ("simple_tag", "agent0")])
def test_omar_npy_loads_and_replays_on_the_task(env_id: str, convention: str, data_root: Path) -> None:
    """The loader's transitions and rewards (the catalogue's convention) are what the task gives
    when the episode's recorded actions are replayed from its recorded first state."""
    quality = data_root / "omar" / env_id / "expert"
    record_omar_npy(make_env(f"omar/{env_id}", 1), quality / "seed_0_data", episodes=2, seed=9)
    ds = load_dataset(f"omar-npy/{env_id}/expert", task=f"omar/{env_id}")
    assert ds.metadata["reward_convention"] == convention and tuple(ds.obs_dims) == DIMS[env_id]
    assert ds.episodes.lengths.tolist() == [25, 25] and not ds.arrays["terminated"].any()
    n = len(DIMS[env_id])
    env = make_env(f"omar/{env_id}", 1)
    assert env.spec.reward_convention == convention
    env.reset(seed=0)
    first = ds.arrays["obs"][25]
    restore(env_id, raw(env).world, [first[i, :d] for i, d in enumerate(DIMS[env_id])])
    rewards, done = [], None
    for t in range(25, 50):
        _, _, reward, terminated, truncated, info = env.step(ds.arrays["actions"][t][None])
        rewards.append(reward[0])
        assert not terminated[0]
        done = truncated[0]
    assert done and info["episode_return"][0] == pytest.approx(ds.episodes.returns[1], rel=1e-4)
    np.testing.assert_allclose(rewards, ds.arrays["reward"][25:50], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(info["final_obs"][0, :n], ds.arrays["next_obs"][49], atol=1e-4)
    np.testing.assert_allclose(info["final_state"][0], ds.arrays["next_state"][49], atol=1e-4)  # padded concat


def test_prey_weights_checked(tmp_path: Path) -> None:
    good = write_prey(tmp_path / "prey.pt", 14)
    net = load_prey_policy(good, 14)
    assert not net.training  # eval mode: batch norm uses the stored statistics
    # OMAR's MADDPG save dict: the prey's policy after the 3 predators
    nested = {"agent_params": [{"policy": {}}] * 3 + [{"policy": torch.load(good, weights_only=True)}]}
    torch.save(nested, tmp_path / "omar.pt")
    x = torch.randn(5, 14)
    with torch.no_grad():
        np.testing.assert_array_equal(load_prey_policy(tmp_path / "omar.pt", 14)(x), net(x))
    env = make_env("omar/simple_tag", 1, prey_weights=str(good))
    assert env.spec.versions["prey_policy"].startswith("omar-pretrained-sha256:")
    with pytest.raises(UserError, match="prey weights .*wide.pt.*fc1"):
        torch.save({k: torch.zeros(32, *v.shape[1:]) if k.startswith("fc1") else v for k, v in
                    torch.load(good, weights_only=True).items()}, tmp_path / "wide.pt")
        load_prey_policy(tmp_path / "wide.pt", 14)
    with pytest.raises(UserError, match="weights_only"):
        torch.save({"net": torch.nn.Linear(14, 2)}, tmp_path / "module.pt")  # a pickled module, not a state dict
        load_prey_policy(tmp_path / "module.pt", 14)
    with pytest.raises(UserError, match="BatchNorm1d\\(22\\)"):
        load_prey_policy(good, 22)  # tag weights for the world prey
    with pytest.raises(UserError, match="no such file.*heuristic"):
        make_env("omar/simple_world", 1, prey_weights=str(tmp_path / "missing.pt"))


RUNNER = [
    "OfflineRunner.total_updates = 4", "OfflineRunner.batch_size = 16", "OfflineRunner.eval_interval = 2",
    "OfflineRunner.eval_episodes = 1", "OfflineRunner.eval_num_envs = 1", "OfflineRunner.final_eval_multiplier = 1",
    "OfflineRunner.log_interval = 2", "OfflineRunner.checkpoint_interval = 4",
    "OMSD.critic_hidden = (16, 16)", "OMSD.behaviour_hidden = (16, 16)", "OMSD.actor_hidden = (16, 16)",
    "OMSD.time_dim = 8", "OMSD.critic_steps = 4", "OMSD.behaviour_steps = 4", "OMSD.pretrain_batch_size = 16",
    "OMSD.pretrain_log_interval = 2",
]


@pytest.mark.slow  # ~15 s each once MLflow is imported (~25 s more standalone), on 2 loaded cores
@pytest.mark.parametrize("env_id", list(DIMS))
def test_omsd_paper_gin_trains_on_omar_npy_and_evaluates_on_omar_task(
    env_id: str, data_root: Path, workdir: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from dmarl.train import run_training

    gin = REPO / f"gin/experiments/omsd_omar_{env_id}_expert.gin"
    assert f"include 'gin/tasks/omar_{env_id}.gin'" in gin.read_text()
    record_omar_npy(make_env(f"omar/{env_id}", 1), data_root / "omar" / env_id / "expert" / "seed_0_data", 2)
    result = run_training([str(gin)], RUNNER, experiment="omar_mpe", progress=False)
    assert result.status == "FINISHED" and result.final_score is not None and np.isfinite(result.final_score)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["dataset"] == f"omar-npy/{env_id}/expert" and run.data.tags["task"] == f"omar/{env_id}"
    if env_id != "simple_spread":  # evaluated against OMAR's prey network (the data root's weights)
        assert any(v.startswith("omar-pretrained-sha256:") for v in run.data.tags.values()), run.data.tags
    assert "eval/return_mean" in run.data.metrics and "final/return_mean" in run.data.metrics


@pytest.mark.parametrize("env_id", ["simple_spread", "simple_tag"])
def test_same_data_from_npy_and_from_a_flashbax_vault(env_id: str, data_root: Path) -> None:
    """OG-MARL's vault conversion of OMAR data (the 5 seeds as the B = 5 rows, observations
    padded to the widest agent, per-agent rewards, all agents' terminals at each 25-step
    episode end, ``infos.state`` the padded concatenation), written by flashbax itself, loads
    to the npy loader's transitions: the same (obs, state, action, reward, next_obs,
    next_state, terminated = 0) at every step the vault has a successor for (the vault drops
    each episode's last step: a time limit without a stored successor)."""
    pytest.importorskip("flashbax")
    from test_datasets_vault import write_flashbax_vault

    task, quality = f"omar/{env_id}", data_root / "omar" / env_id / "expert"
    n, width, steps = len(DIMS[env_id]), max(DIMS[env_id]), 25
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards")}
    for seed in range(5):  # one episode per seed
        seed_dir = record_omar_npy(make_env(task, 1), quality / f"seed_{seed}_data", episodes=1, seed=seed)
        files = read_seed(seed_dir, n)
        rows["observations"].append(np.stack([np.pad(o, ((0, 0), (0, width - o.shape[1]))) for o in files["obs"]], 1))
        rows["actions"].append(np.stack(files["acs"], axis=1))
        rows["rewards"].append(np.stack(files["rews"], axis=1))
    leaves = {k: np.stack(v) for k, v in rows.items()}
    leaves["terminals"] = np.zeros((5, steps, n), np.float32)
    leaves["terminals"][:, -1] = 1.0
    leaves["truncations"] = np.zeros((5, steps, n), np.float32)
    leaves["infos.state"] = leaves["observations"].reshape(5, steps, -1)
    write_flashbax_vault(data_root / "vaults" / "omar" / "mpe" / f"{env_id}.vlt" / "Expert", leaves)
    npy = load_dataset(f"omar-npy/{env_id}/expert", task=task)
    vault = load_dataset(f"omar/mpe/{env_id}/Expert", task=task)
    assert vault.episodes.lengths.tolist() == [24] * 5 and npy.episodes.lengths.tolist() == [25] * 5
    kept = np.flatnonzero(np.arange(5 * steps) % steps != steps - 1)
    for key in ("obs", "state", "actions", "reward", "next_obs", "next_state", "terminated"):
        np.testing.assert_array_equal(vault.arrays[key], npy.arrays[key][kept], err_msg=key)
    assert not vault.arrays["terminated"].any()
