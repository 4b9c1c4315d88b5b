"""Legacy MaMuJoCo tasks against the offline datasets' producers (issue 13).

- Layout probes: on a hand-placed MuJoCo state, each agent's observation equals the producer's
  layout element by element (written here from the producers' code: schroederdewitt
  multiagent_mujoco's ``build_obs`` / partitions, OMIGA's ``get_obs``), and actions reach the
  actuators the producer sends them to.
- Replays: fixtures are written by running the legacy tasks in each producer's file format
  (OMAR .npy, OG-MARL vault via flashbax, OMIGA .hdf5); placing a task at a recorded state (for
  OMIGA recovered from the normalised observation) and applying the recorded action reproduces
  the recorded next observation and reward.
- The same data as npy/hdf5 and as a vault load to identical transitions (OMAR, OMIGA).
- Catalogue: dataset -> task or refusal, ``run.dataset`` selecting / validating ``run.task``.
- OMSD's paper gins for OMAR HalfCheetah and OMIGA train end to end on fixture datasets and
  evaluate on the matching task.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO
from dmarl.cli import main
from dmarl.envs.datasets import catalogue, evaluation_task, load_dataset
from dmarl.envs.factory import make_env
from dmarl.envs.legacy_mamujoco import per_vector_z, set_physics, unnormalise_one_hot
from dmarl.errors import UserError
from dmarl.registry import TASKS, load_all
from test_datasets_vault import write_flashbax_vault, write_raw_vault

load_all()
TOL = {"rtol": 1e-4, "atol": 1e-4}  # recorded float32 states; MuJoCo's warm-started solver

# schroederdewitt multiagent_mujoco, HalfCheetah: joint -> (qpos/qvel index, actuator); 2x3 parts.
HC_JOINTS = {"bthigh": (3, 0), "bshin": (4, 1), "bfoot": (5, 2), "fthigh": (6, 3), "fshin": (7, 4), "ffoot": (8, 5)}
HC_PARTS = [("bfoot", "bshin", "bthigh"), ("ffoot", "fshin", "fthigh")]
HC_NEIGHBOUR = ["fthigh", "bthigh"]  # each agent's joint at distance 1 (edge bthigh-fthigh)


def hand_placed(env, scenario: str) -> tuple[np.ndarray, np.ndarray]:
    """Distinct qpos/qvel values on copy 0 (qvel 11.5 on one joint: above Hopper's clip)."""
    robot = env._envs[0].single_agent_env.unwrapped
    qpos = 0.05 + 0.1 * np.arange(robot.model.nq)
    if scenario == "Ant":
        qpos[2], qpos[3:7] = 0.6, [1.0, 0.0, 0.0, 0.0]  # healthy height, unit quaternion
    qvel = 1.0 + 0.25 * np.arange(robot.model.nv)
    qvel[-1] = 11.5
    robot.set_state(qpos, qvel)
    return qpos, qvel


def sorted_local(part: tuple[str, ...], q: np.ndarray, v: np.ndarray) -> list[float]:
    """build_obs at k = 0: the agent's joints sorted by label, each (qpos, qvel)."""
    return [x for name in sorted(part) for x in (q[HC_JOINTS[name][0]], v[HC_JOINTS[name][0]])]


def test_omar_and_og_marl_halfcheetah_layouts_on_a_hand_placed_state() -> None:
    omar, og = make_env("omar/halfcheetah_2x3", 1), make_env("og_marl/halfcheetah_2x3", 1)
    omar.reset(seed=0)
    og.reset(seed=0)
    q, v = hand_placed(omar, "HalfCheetah")
    hand_placed(og, "HalfCheetah")
    omar_obs = np.stack([o for o in omar._envs[0]._get_obs().values()])
    og_obs, og_state = og.observe()
    root = [v[0], v[2], v[1], q[0], q[2], q[1]]  # global categories qvel, qpos over root_x, root_y, root_z
    for i, part in enumerate(HC_PARTS):
        local = sorted_local(part, q, v)
        np.testing.assert_allclose(omar_obs[i], local, rtol=1e-6)  # OMAR: agent_obsk = 0, no globals
        np.testing.assert_allclose(og_obs[0, i], [*local, q[HC_JOINTS[HC_NEIGHBOUR[i]][0]], *root], rtol=1e-6)
    np.testing.assert_allclose(og_state[0], np.concatenate([q[1:], v]), rtol=1e-6)
    assert omar.spec.obs_dims == (6, 6) and og.spec.obs_dims == (13, 13) and omar.spec.state_dim == 17


def test_og_marl_actions_follow_the_producers_partition_order() -> None:
    """Producer: actuator[act_id(parts[a][i])] = action[a][i] with parts (bfoot, bshin, bthigh), ...
    i.e. each agent's 3 actions reversed relative to gymnasium-robotics v1."""
    env = make_env("og_marl/halfcheetah_2x3", 1)
    env.reset(seed=0)
    actions = np.array([[0.1, -0.2, 0.3], [0.4, -0.5, 0.6]], np.float32)
    joint = np.zeros(6)
    for a, part in enumerate(HC_PARTS):
        for i, name in enumerate(part):
            joint[HC_JOINTS[name][1]] = actions[a, i]
    start = env.observe()[1][0].astype(np.float64)
    set_physics(env._envs[0], "HalfCheetah", start)
    obs, *_ = env.step(actions[None])
    set_physics(env._envs[0], "HalfCheetah", start)
    env._envs[0].single_agent_env.step(joint)
    np.testing.assert_allclose(obs, env.observe()[0], rtol=1e-6, atol=1e-9)
    assert not np.allclose(joint, actions.reshape(-1))  # the mapping is not the identity


@pytest.mark.parametrize("task, scenario", [("omiga/halfcheetah_6x1", "HalfCheetah"), ("omiga/hopper_3x1", "Hopper"),
                                            ("omiga/ant_2x4", "Ant")])
def test_omiga_observation_layout_on_a_hand_placed_state(task: str, scenario: str) -> None:
    env = make_env(task, 1)
    env.reset(seed=0)
    q, v = hand_placed(env, scenario)
    data = env._envs[0].single_agent_env.unwrapped.data
    cfrc = np.linspace(-2.0, 2.0, data.cfrc_ext.size).reshape(data.cfrc_ext.shape)
    data.cfrc_ext[:] = cfrc  # contact forces as placed by hand: clipped to [-1, 1] over all 14 bodies
    if scenario == "Ant":  # gym v2 Ant: qpos[2:], qvel, clip(cfrc_ext, -1, 1) (14 x 6)
        g = np.concatenate([q[2:], v, np.clip(cfrc, -1, 1).ravel()])
    elif scenario == "Hopper":  # gym v2 Hopper: qpos[1:], clip(qvel, -10, 10)
        g = np.concatenate([q[1:], np.clip(v, -10, 10)])
    else:
        g = np.concatenate([q[1:], v])
    n = env.spec.n_agents
    obs, state = env.observe()
    for i in range(n):
        x = np.concatenate([g, np.eye(n)[i]])
        np.testing.assert_allclose(obs[0, i], (x - x.mean()) / x.std(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state[0], obs[0, 0])  # OMIGA's s[:, 0]
    assert env.spec.obs_dims == (len(g) + n,) * n and len(g) == {"HalfCheetah": 17, "Hopper": 11, "Ant": 111}[scenario]
    raw = make_env(task, 1, obs_normalisation="none")
    raw.reset(seed=0)
    hand_placed(raw, scenario)
    raw._envs[0].single_agent_env.unwrapped.data.cfrc_ext[:] = cfrc
    np.testing.assert_allclose(raw.observe()[0][0, 0], np.concatenate([g, np.eye(n)[0]]), rtol=1e-6)


def test_omiga_ant_actions_split_contiguously_unlike_v1() -> None:
    env = make_env("omiga/ant_2x4", 1)
    env.reset(seed=0)
    actions = np.linspace(-0.8, 0.8, 8).reshape(2, 4)
    start = unnormalise_one_hot(env.observe()[0][0, 0], 2)[:-2]
    set_physics(env._envs[0], "Ant", start)
    obs, *_ = env.step(actions[None])
    set_physics(env._envs[0], "Ant", start)
    env._envs[0].single_agent_env.step(actions.reshape(-1))  # agent 0 -> actuators 0..3, agent 1 -> 4..7
    np.testing.assert_allclose(obs, env.observe()[0], **TOL)
    v1 = env._envs[0].map_local_actions_to_global_action({"agent_0": actions[0], "agent_1": actions[1]})
    assert not np.allclose(v1, actions.reshape(-1))


def test_per_vector_normalisation_is_inverted_by_the_one_hot() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 6):
        g = rng.normal(size=(5, 20)) * 3 + 1
        x = np.concatenate([g, np.tile(np.eye(n)[1], (5, 1))], axis=1)
        np.testing.assert_allclose(unnormalise_one_hot(per_vector_z(x), n), x, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- fixtures written by the tasks


def rollout(task: str, steps: int, seed: int = 0, stop_at_end: bool = False) -> dict[str, np.ndarray]:
    """Step ``task`` with smooth random actions; per step: obs, state, actions, reward, the
    successor (final obs at an episode end), done and terminated flags."""
    env = make_env(task, 1)
    rng = np.random.default_rng(seed)
    obs, state = env.reset(seed=seed)
    out: dict[str, list] = {k: [] for k in ("obs", "state", "actions", "reward", "next_obs", "next_state", "done",
                                             "terminated")}
    action = np.zeros((env.spec.n_agents, env.spec.act_max))
    for _ in range(steps):
        action = np.clip(0.7 * action + 0.5 * rng.normal(size=action.shape), -1, 1)
        nxt, nxt_state, reward, terminated, _, info = env.step(action[None].astype(np.float32))
        for key, value in (("obs", obs[0]), ("state", state[0]), ("actions", action), ("reward", reward[0]),
                           ("next_obs", info["final_obs"][0]), ("next_state", info["final_state"][0]),
                           ("done", info["done"][0]), ("terminated", terminated[0])):
            out[key].append(value)
        obs, state = nxt, nxt_state
        if stop_at_end and info["done"][0] and len(out["done"]) > steps // 2:
            break
    env.close()
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def write_omar_halfcheetah(seed_dir: Path, roll: dict[str, np.ndarray]) -> None:
    """OMAR's HalfCheetah files (per agent obs/acs/rews/next_obs/dones/states/next_states)."""
    seed_dir.mkdir(parents=True)
    for i in range(2):
        files = {"obs": roll["obs"][:, i, :6], "next_obs": roll["next_obs"][:, i, :6], "acs": roll["actions"][:, i],
                 "rews": roll["reward"], "dones": roll["done"], "states": roll["state"],
                 "next_states": roll["next_state"]}
        for key, value in files.items():
            np.save(seed_dir / f"{key}_{i}.npy", value)


def per_agent(x: np.ndarray, n: int) -> np.ndarray:
    return np.repeat(x[:, None], n, axis=1)[None]


def omiga_rows(roll: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """OMIGA's rows: every step, plus one row holding each finished episode's final observation
    (d = 1, zero action and reward): 1001 rows per 1000-step episode."""
    rows: dict[str, list] = {k: [] for k in ("o", "a", "r", "d")}
    for t in range(len(roll["reward"])):
        for key, value in (("o", roll["obs"][t]), ("a", roll["actions"][t]), ("r", [roll["reward"][t]]), ("d", [0.0])):
            rows[key].append(value)
        if roll["done"][t]:
            for key, value in (("o", roll["next_obs"][t]), ("a", 0 * roll["actions"][t]), ("r", [0.0]), ("d", [1.0])):
                rows[key].append(value)
    out = {k: np.asarray(v, np.float32) for k, v in rows.items()}
    out["s"] = out["o"].copy()  # OMIGA's s[:, i]: agent i's normalised global observation
    return out


def write_omiga(file: Path, rows: dict[str, np.ndarray]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(file, "w") as f:
        for key, value in rows.items():
            f.create_dataset(key, data=value)


def omiga_vault_leaves(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """OG-MARL's vault conversion of an OMIGA file: the same rows, d on every agent."""
    n = rows["o"].shape[1]
    return {"observations": rows["o"][None], "actions": rows["a"][None], "rewards": per_agent(rows["r"][:, 0], n),
            "terminals": per_agent(rows["d"][:, 0], n), "truncations": np.zeros((1, len(rows["d"]), n), np.float32),
            "infos.state": rows["s"][None, :, 0]}


@pytest.fixture(scope="module")
def omar_halfcheetah(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """Five seeds of one 1000-step episode (time limit) + 1 step, as OMAR's npy seed directories
    and as OG-MARL's vault conversion (B = 5 rows, OMAR's dones as terminals)."""
    root = tmp_path_factory.mktemp("omar_data")
    rolls = [rollout("omar/halfcheetah_2x3", 1001, seed=k) for k in range(5)]
    for k, roll in enumerate(rolls):
        assert roll["done"].nonzero()[0].tolist() == [999] and not roll["terminated"].any()
        write_omar_halfcheetah(root / "omar" / "HalfCheetah-v2" / "expert" / f"seed_{k}_data", roll)
    stack = {key: np.stack([r[key] for r in rolls]) for key in rolls[0]}
    write_flashbax_vault(root / "vaults" / "omar" / "mamujoco" / "2halfcheetah.vlt" / "Expert", {
        "observations": stack["obs"], "actions": stack["actions"], "rewards": np.repeat(stack["reward"][..., None], 2, 2),
        "terminals": np.repeat(stack["done"][..., None], 2, 2), "truncations": np.zeros((5, 1001, 2), np.float32),
        "infos.state": stack["state"]})
    return root, rolls


@pytest.fixture(scope="module")
def omiga_hopper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Random-action Hopper 3x1 episodes (they end by falling) in OMIGA's rows, as .hdf5 and vault."""
    root = tmp_path_factory.mktemp("omiga_data")
    rows = omiga_rows(rollout("omiga/hopper_3x1", 150, seed=1))
    write_omiga(root / "omiga" / "Hopper-v2-3x1-expert.hdf5", rows)
    write_flashbax_vault(root / "vaults" / "omiga" / "mamujoco" / "3hopper.vlt" / "Expert", omiga_vault_leaves(rows))
    return root, rows


def replay(
    task: str, scenario: str, v2_state: np.ndarray, actions: np.ndarray, root: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Place ``task`` at a recorded gym-v2 state (and root position, where the layout observes
    it), apply a recorded action: (next obs, reward)."""
    env = make_env(task, 1)
    env.reset(seed=0)
    set_physics(env._envs[0], scenario, v2_state.astype(np.float64), root)
    *_, reward, _, _, info = env.step(actions[None])
    return info["final_obs"][0], float(reward[0])  # the successor, also where the step ended the episode


def test_omar_halfcheetah_replays_npy_and_matches_its_vault(
    omar_halfcheetah: tuple[Path, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = omar_halfcheetah
    monkeypatch.setenv("DMARL_DATA_DIR", str(root))
    npy = load_dataset("omar-npy/HalfCheetah-v2/expert")
    for t in (0, 417, 998):
        obs, reward = replay("omar/halfcheetah_2x3", "HalfCheetah", npy.state[t], npy.actions[t])
        np.testing.assert_allclose(obs, npy.next_obs[t], **TOL)
        assert reward == pytest.approx(float(npy.reward[t]), rel=1e-4, abs=1e-4)
    vault = load_dataset("omar/mamujoco/2halfcheetah/Expert")
    # the vault holds no successor for the time-limit step (999 of each seed: a truncation, not a
    # terminal) nor for a row's last stored step: every other transition is the npy's, exactly
    keep = (np.arange(5)[:, None] * 1001 + np.arange(999)).ravel()
    for key in ("obs", "next_obs", "state", "next_state", "actions", "reward", "terminated"):
        np.testing.assert_array_equal(vault.arrays[key], npy.arrays[key][keep], err_msg=key)
    assert not vault.terminated.any() and not npy.terminated.any()
    np.testing.assert_array_equal(npy.episodes.lengths, [1000, 1] * 5)
    np.testing.assert_array_equal(vault.episodes.lengths, [999] * 5)
    np.testing.assert_allclose(vault.episodes.returns, npy.episodes.returns[::2], rtol=1e-9)


def test_omiga_hopper_replays_and_hdf5_equals_vault(
    omiga_hopper: tuple[Path, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, rows = omiga_hopper
    monkeypatch.setenv("DMARL_DATA_DIR", str(root))
    hdf5 = load_dataset("omiga-hdf5/Hopper-v2-3x1/expert")
    vault = load_dataset("omiga/mamujoco/3hopper/Expert")
    for key in ("obs", "next_obs", "state", "next_state", "actions", "reward", "terminated"):
        np.testing.assert_array_equal(vault.arrays[key], hdf5.arrays[key], err_msg=key)
    np.testing.assert_array_equal(vault.episodes.lengths, hdf5.episodes.lengths)
    ends = int(rows["d"].sum())
    unfinished = int(rows["d"][-1, 0] == 0)  # a last row that is not d = 1 has no successor
    assert ends >= 2 and len(hdf5) == len(rows["d"]) - ends - unfinished  # no junk transition out of a d = 1 row
    assert hdf5.terminated.sum() == ends and vault.metadata["transition_rule"] == "omiga"
    replayed = 0
    for t in range(0, len(hdf5), 7):
        v2 = unnormalise_one_hot(hdf5.obs[t, 0], 3)[:-3]
        if np.abs(v2[5:]).max() >= 9.9:  # Hopper clips qvel at 10 in its observation: not recoverable
            continue
        obs, reward = replay("omiga/hopper_3x1", "Hopper", v2, hdf5.actions[t])
        np.testing.assert_allclose(obs, hdf5.next_obs[t], **TOL)
        assert reward == pytest.approx(float(hdf5.reward[t]), rel=1e-4, abs=1e-4)
        replayed += 1
    assert replayed >= 5


@pytest.mark.parametrize("task, scenario, name", [("omiga/halfcheetah_6x1", "HalfCheetah", "HalfCheetah-v2-6x1"),
                                                  ("omiga/ant_2x4", "Ant", "Ant-v2-2x4")])
def test_omiga_replays_from_the_normalised_observation(
    task: str, scenario: str, name: str, workdir: Path
) -> None:
    write_omiga(workdir / "datasets" / "omiga" / f"{name}-medium.hdf5", omiga_rows(rollout(task, 30, seed=2)))
    ds = load_dataset(f"omiga-hdf5/{name}/medium")
    n = ds.n_agents
    # Ant's reward sums contact and velocity terms that MuJoCo's warm-started contact solver
    # resolves a little differently from a fresh placement (measured ~3e-4): a looser bound
    tol = 1e-3 if scenario == "Ant" else 1e-4
    for t in (0, 13, 28):
        obs, reward = replay(task, scenario, unnormalise_one_hot(ds.obs[t, 0], n)[:-n], ds.actions[t])
        np.testing.assert_allclose(obs, ds.next_obs[t], **TOL)
        assert reward == pytest.approx(float(ds.reward[t]), rel=tol, abs=tol)


def test_og_marl_halfcheetah_replays_a_flashbax_vault(workdir: Path) -> None:
    roll = rollout("og_marl/halfcheetah_2x3", 40, seed=3)
    write_flashbax_vault(workdir / "datasets" / "vaults" / "og_marl" / "mamujoco" / "2halfcheetah.vlt" / "Good", {
        "observations": roll["obs"][None], "actions": roll["actions"][None], "rewards": per_agent(roll["reward"], 2),
        "terminals": np.zeros((1, 40, 2), np.float32), "truncations": np.zeros((1, 40, 2), np.float32),
        "infos.state": roll["state"][None]})
    ds = load_dataset("og_marl/mamujoco/2halfcheetah/Good", task=evaluation_task(
        "og_marl/mamujoco/2halfcheetah/Good", None))
    assert len(ds) == 39 and ds.obs_dims == (13, 13) and ds.metadata["task"] == "og_marl/halfcheetah_2x3"
    for t in (0, 20, 38):
        root_x = ds.obs[t, 0, 10:11].astype(np.float64)  # og-marl observes qpos[0] (the state omits it)
        obs, reward = replay("og_marl/halfcheetah_2x3", "HalfCheetah", ds.state[t], ds.actions[t], root_x)
        np.testing.assert_allclose(obs, ds.next_obs[t], **TOL)
        assert reward == pytest.approx(float(ds.reward[t]), rel=1e-4, abs=1e-4)


# ---------------------------------------------------------------- catalogue and run.dataset

FAMILIES = {  # dataset -> evaluation task (None: refused, with a word of the reason)
    "omar-npy/HalfCheetah-v2/expert": "omar/halfcheetah_2x3",
    "omar/mamujoco/2halfcheetah/Medium": "omar/halfcheetah_2x3",
    "omar-npy/simple_spread/medium": "omar/simple_spread",
    "omar/mpe/simple_tag/Expert": "omar/simple_tag",
    "omar-npy/simple_world/random": "omar/simple_world",
    "omiga-hdf5/Ant-v2-2x4/expert": "omiga/ant_2x4",
    "omiga/mamujoco/6halfcheetah/Medium": "omiga/halfcheetah_6x1",
    "omiga-hdf5/Hopper-v2-3x1/medium-replay": "omiga/hopper_3x1",
    "og_marl/mamujoco/2halfcheetah/Good": "og_marl/halfcheetah_2x3",
    "og_marl/gymnasium_mamujoco/2ant/Replay": "mamujoco/ant_2x4",
    "og_marl/gymnasium_mamujoco/6halfcheetah/Replay": "mamujoco/halfcheetah_6x1",
    "og_marl/smac_v1/3m/Good": None,
    "og_marl/smac_v2/terran_5_vs_5/Replay": None,
    "omiga/smac_v1/corridor/Medium": None,
    "alberdice/rware/tiny-2ag/Expert": None,
    "og_marl/mamujoco/2ant/Good": None,
}


def test_catalogue_names_a_registered_task_or_a_reason_for_every_dataset() -> None:
    entries = catalogue.catalogue()
    for name, task in FAMILIES.items():
        assert entries[name].task == task, name
    for entry in entries.values():
        assert (entry.task is None) != (entry.refused == ""), entry.name
        assert entry.task is None or entry.task in TASKS, (entry.name, entry.task)
    assert entries["alberdice/rware/tiny-2ag/Expert"].discrete  # the card says Discrete
    assert "discrete actions" in entries["og_marl/smac_v1/3m/Good"].refused
    assert "gymnasium_mamujoco/2ant" in entries["og_marl/mamujoco/2ant/Good"].refused
    assert entries["omar/mpe/simple_spread/Expert"].truncation_limit == 25
    assert entries["omiga/mamujoco/2ant/Expert"].transition_rule == "omiga"


def test_run_dataset_selects_or_validates_the_task(workdir: Path) -> None:
    from dmarl.train import parse_settings

    (workdir / "custom.hdf5").touch()  # an OMIGA-format path the catalogue does not know
    assert evaluation_task(str(workdir / "custom.hdf5"), "mamujoco/hopper_3x1") == "mamujoco/hopper_3x1"
    assert evaluation_task("omiga-hdf5/Ant-v2-2x4/expert", None) == "omiga/ant_2x4"
    assert evaluation_task("omiga-hdf5/Ant-v2-2x4/expert", "omiga/ant_2x4") == "omiga/ant_2x4"
    with pytest.raises(UserError, match=r"run\.task = 'mamujoco/ant_2x4' does not match run\.dataset = "
                                        r"'omiga-hdf5/Ant-v2-2x4/expert'.*'omiga/ant_2x4'"):
        evaluation_task("omiga-hdf5/Ant-v2-2x4/expert", "mamujoco/ant_2x4")
    with pytest.raises(UserError, match="og_marl/smac_v1/3m/Good: no evaluation task: SMAC data have discrete"):
        evaluation_task("og_marl/smac_v1/3m/Good", None)
    with pytest.raises(UserError, match="not a catalogue dataset, so it names no task; set run.task"):
        evaluation_task(str(workdir / "custom.hdf5"), None)
    gin = str(REPO / "gin/experiments/omsd_omar_halfcheetah_2x3_expert.gin")
    assert parse_settings([gin], []).task == "omar/halfcheetah_2x3"
    with pytest.raises(UserError, match="does not match run.dataset"):
        parse_settings([gin], ["run.task = 'mamujoco/halfcheetah_2x3'"])
    settings = parse_settings([str(REPO / "gin/algorithms/omsd.gin")], ["run.dataset = 'omiga-hdf5/Hopper-v2-3x1/medium'"])
    assert settings.task == "omiga/hopper_3x1"  # run.task unset: the catalogue's


def test_datasets_cli_prints_the_task_and_refuses_discrete_data(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datasets", "info", "omiga-hdf5/Ant-v2-2x4/expert"]) == 0
    assert "evaluation task: omiga/ant_2x4" in capsys.readouterr().out
    assert main(["datasets", "info", "og_marl/smac_v1/3m/Good"]) == 0
    assert "evaluation task: none (refused: SMAC data have discrete actions" in capsys.readouterr().out
    assert main(["datasets", "list"]) == 0
    assert "omar/halfcheetah_2x3" in capsys.readouterr().out
    uid = workdir / "datasets" / "vaults" / "og_marl" / "smac_v1" / "3m.vlt" / "Good"
    leaves = {"observations": np.zeros((1, 4, 3, 30), np.float32), "actions": np.zeros((1, 4, 3), np.int32),
              "rewards": np.zeros((1, 4, 3), np.float32), "terminals": np.zeros((1, 4, 3), np.float32),
              "truncations": np.zeros((1, 4, 3), np.float32)}
    write_raw_vault(uid, leaves, style="current")
    with pytest.raises(UserError, match="og_marl/smac_v1/3m/Good: refused: SMAC data have discrete actions"):
        load_dataset("og_marl/smac_v1/3m/Good")


# ---------------------------------------------------------------- OMSD paper gins end to end

TINY_OMSD = [
    "OfflineRunner.total_updates = 4", "OfflineRunner.batch_size = 16", "OfflineRunner.eval_interval = 4",
    "OfflineRunner.eval_episodes = 1", "OfflineRunner.eval_num_envs = 1", "OfflineRunner.final_eval_multiplier = 1",
    "OfflineRunner.log_interval = 2", "OfflineRunner.checkpoint_interval = 4",
    "OMSD.critic_hidden = (16, 16)", "OMSD.behaviour_hidden = (16, 16)", "OMSD.actor_hidden = (16, 16)",
    "OMSD.time_dim = 8", "OMSD.critic_steps = 4", "OMSD.behaviour_steps = 4", "OMSD.pretrain_batch_size = 16",
    "OMSD.pretrain_log_interval = 2", "run.task_kwargs = {'max_episode_steps': 40}",
]


@pytest.mark.parametrize("gin, fixture", [("omsd_omar_halfcheetah_2x3_expert", "omar_halfcheetah"),
                                          ("omsd_omiga_hopper_3x1_expert", "omiga_hopper")])
def test_omsd_paper_gins_train_on_fixture_data_and_evaluate_on_the_task(
    gin: str, fixture: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from mlflow.tracking import MlflowClient

    from dmarl.train import run_training

    root, _ = request.getfixturevalue(fixture)
    monkeypatch.setenv("DMARL_DATA_DIR", str(root))
    result = run_training([str(REPO / f"gin/experiments/{gin}.gin")], TINY_OMSD, experiment="legacy", progress=False)
    assert result.status == "FINISHED" and np.isfinite(result.final_score)
    run = MlflowClient().get_run(result.run_id)
    task = "omar/halfcheetah_2x3" if "omar" in gin else "omiga/hopper_3x1"
    assert run.data.tags["task"] == task and "final/return_mean" in run.data.metrics
