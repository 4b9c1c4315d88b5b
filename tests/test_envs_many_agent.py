"""DDPL's many-agent MaMuJoCo tasks (Ant 8x1, HumanoidStandup 17x1): a custom one-agent-per-joint
factorisation; agent counts and the action mapping checked against gymnasium-robotics' own
local <-> global mapping and against its single-agent robot stepped with the mapped action."""
from __future__ import annotations

import numpy as np
import pytest

from dmarl.envs.factory import make_env

TASKS = {"mamujoco/ant_8x1": ("Ant", 8, 105), "mamujoco/humanoidstandup_17x1": ("HumanoidStandup", 17, 348)}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_agent_counts_and_spaces(task: str) -> None:
    _, n, state_dim = TASKS[task]
    env = make_env(task, 1)
    spec = env.spec
    assert spec.n_agents == n and spec.action_dims == (1,) * n and spec.state_dim == state_dim
    assert spec.agent_ids == tuple(f"agent_{i}" for i in range(n)) and spec.episode_limit == 1000
    assert min(spec.obs_dims) > 1, "agent_obsk=1: every agent sees its own joint and its neighbours"
    env.close()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_action_mapping_matches_gymnasium_robotics(task: str) -> None:
    """Agent i drives the robot's action i: gymnasium-robotics' ``map_local_actions_to_global_action``
    of the adapter's per-agent actions is the identity order, its inverse gives each agent its joint,
    and the robot stepped with the mapped global action reaches the adapter's state and reward."""
    from gymnasium_robotics import mamujoco_v1

    from dmarl.envs.mamujoco import single_joint_factorization

    scenario, n, _ = TASKS[task]
    env = make_env(task, 1)
    ref = mamujoco_v1.parallel_env(scenario, "custom", agent_obsk=1, agent_factorization=single_joint_factorization(scenario))
    low, high = ref.single_agent_env.action_space.low, ref.single_agent_env.action_space.high
    rng = np.random.default_rng(0)
    env.reset(seed=5)
    ref.reset(seed=5)
    for _ in range(3):
        actions = rng.uniform(-1, 1, (1, n, 1)).astype(np.float32)
        scaled = low + (actions[0, :, 0] + 1) / 2 * (high - low)
        local = {f"agent_{i}": scaled[i : i + 1] for i in range(n)}
        global_action = ref.map_local_actions_to_global_action(local)
        np.testing.assert_allclose(global_action, scaled, rtol=1e-6)
        back = ref.map_global_action_to_local_actions(global_action)
        assert all(np.allclose(back[a], local[a]) for a in local)
        _, state, reward, terminated, _, _ = env.step(actions)
        _, ref_reward, ref_terminated, _, _ = ref.single_agent_env.step(global_action)
        np.testing.assert_allclose(state[0], ref.state(), rtol=1e-5, atol=1e-5)
        assert reward[0] == pytest.approx(ref_reward, rel=1e-5, abs=1e-5) and terminated[0] == ref_terminated
    env.close()


def test_custom_conf_needs_a_factorisation() -> None:
    with pytest.raises(ValueError, match="agent_factorization"):
        make_env("mamujoco/ant_8x1", 1, single_joint_agents=False)
