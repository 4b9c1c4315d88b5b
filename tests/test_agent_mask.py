"""Absent agents end to end (issue 11): SMAX's ``info["agent_mask"]`` -> OnlineRunner -> ReplayBuffer
(rows, samples, checkpoints) -> ``Batch.agent_mask`` -> DDPL's policy loss (alive agents only; the
critic keeps every agent), and no change anywhere without a mask."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dmarl.algorithms.ddpl import DDPL

from conftest import algorithm_test_spec
from dmarl.data.batch import Batch
from dmarl.data.replay import ReplayBuffer
from dmarl.diffusion.losses import agent_mean, solve_issm_eta
from dmarl.envs.factory import make_env
from dmarl.errors import UserError
from dmarl.runners import checkpoint
from dmarl.runners.online import OnlineRunner

CPU = torch.device("cpu")
E, N = 2, 3


def _add(buffer: ReplayBuffer, row: int, agent_mask: np.ndarray | None, done: bool = False) -> None:
    """E transitions whose ``obs[..., 0, 0]`` holds the row number (to read a sample's row back)."""
    obs = np.zeros((E, N, 2), np.float32)
    obs[:, 0, 0] = row + np.arange(E)
    buffer.add(obs=obs, state=np.zeros((E, 4)), actions=np.zeros((E, N, 1)), reward=np.ones(E),
               next_obs=obs, next_state=np.zeros((E, 4)), terminated=np.zeros(E),
               done=np.full(E, done), agent_mask=agent_mask)


def _filled(n_step: int = 1, capacity: int = 40) -> tuple[ReplayBuffer, np.ndarray]:
    """A buffer of 16 rows, every third vector step with a dead agent; the masks by row."""
    buffer = ReplayBuffer(capacity, N, 2, 1, 4, n_step=n_step, gamma=0.9)
    rng = np.random.default_rng(0)
    masks = []
    for step in range(8):
        mask = rng.random((E, N)) > 0.5 if step % 3 == 1 else None
        _add(buffer, E * step, mask, done=step == 5)
        masks.append(np.ones((E, N)) if mask is None else mask)
    return buffer, np.concatenate(masks).astype(np.float32)


@pytest.mark.parametrize("n_step", [1, 3])
def test_samples_carry_the_mask_of_their_first_row(n_step: int) -> None:
    buffer, masks = _filled(n_step)
    batch = buffer.sample(64, np.random.default_rng(1), CPU)
    rows = batch.obs[:, 0, 0].long().numpy()
    assert batch.agent_mask is not None and batch.agent_mask.dtype == torch.float32
    np.testing.assert_array_equal(batch.agent_mask.numpy(), masks[rows])


def test_no_mask_when_every_sampled_agent_is_present() -> None:
    """Rows added without a mask, or with an all-True one, sample as before: agent_mask None."""
    buffer = ReplayBuffer(20, N, 2, 1, 4)
    _add(buffer, 0, None)
    _add(buffer, E, np.ones((E, N), bool))
    assert buffer.sample(32, np.random.default_rng(0), CPU).agent_mask is None
    np.testing.assert_array_equal(buffer.filled("agent_mask"), 1.0)


def test_a_mask_of_the_wrong_shape_is_refused() -> None:
    buffer = ReplayBuffer(20, N, 2, 1, 4)
    with pytest.raises(UserError, match=r"agent_mask has shape \(2, 2\); expected \(2, 3\)"):
        _add(buffer, 0, np.ones((E, 2)))


def test_state_dict_and_chunked_checkpoint_round_trip_the_mask(tmp_path: Path) -> None:
    buffer, masks = _filled()
    copy = ReplayBuffer(40, N, 2, 1, 4)
    copy.load_state_dict(buffer.state_dict())
    np.testing.assert_array_equal(copy.filled("agent_mask"), masks)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"buffer": buffer.state_dict()})
    loaded = ReplayBuffer(40, N, 2, 1, 4)
    loaded.load_state_dict(checkpoint.load(path)["buffer"])
    np.testing.assert_array_equal(loaded.filled("agent_mask"), masks)


def test_an_old_checkpoint_without_masks_loads_with_every_agent_present(tmp_path: Path) -> None:
    """A state dict and a chunked checkpoint written before the field: masks load as ones; the
    next save rewrites the old rows with the field (its old chunks lack it), so rows added after
    the resume keep their zeros and the old rows their ones."""
    buffer, _ = _filled()
    state = buffer.state_dict()
    state["data"] = {k: v for k, v in state["data"].items() if k != "agent_mask"}
    resumed = ReplayBuffer(40, N, 2, 1, 4)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.filled("agent_mask"), 1.0)

    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"buffer": state})
    resumed = ReplayBuffer(40, N, 2, 1, 4)
    resumed.load_state_dict(checkpoint.load(path)["buffer"])
    dead = np.zeros((E, N), bool)
    dead[:, 1] = True
    _add(resumed, 16, ~dead)
    checkpoint.save(path, {"buffer": resumed.state_dict()})
    again = ReplayBuffer(40, N, 2, 1, 4)
    again.load_state_dict(checkpoint.load(path)["buffer"])
    expected = np.concatenate([np.ones((16, N)), ~dead]).astype(np.float32)
    np.testing.assert_array_equal(again.filled("agent_mask"), expected)


def test_online_runner_stores_the_smax_masks(tmp_path: Path) -> None:
    """Random actions on smax/3s_vs_5z until allies die (40 vector steps of 4 copies), through the
    real OnlineRunner and checkpoint writer: each stored row's mask is 0 exactly where that row's
    ``obs`` of the ally is all zeros (how SMAX shows a dead ally), some rows have a dead ally, and
    the mask is the row's own (an ally alive in ``obs`` that died in ``next_obs`` is still 1).
    The training env doubles as the eval env: evaluations run before the first and after the
    last training step only (one compile instead of two)."""
    env = make_env("smax/3s_vs_5z", 4)
    runner = OnlineRunner(total_env_steps=160, num_envs=4, learning_starts=10_000, random_steps=10_000,
                          buffer_size=1_000, eval_interval=10_000, eval_episodes=1, final_eval_multiplier=1)
    algorithm = DDPL(env.spec, CPU, hidden=(8,), time_dim=4, diffusion_steps=2, issm_samples=2)
    path = tmp_path / "checkpoint.pt"
    try:
        runner.run(algorithm, env, env, seed=0, device=CPU, log=lambda metrics, step: None,
                   save_checkpoint=lambda payload: checkpoint.save(path, payload))
    finally:
        env.close()
    data = checkpoint.load(path)["buffer"]["data"]
    mask, obs, next_obs = data["agent_mask"], data["obs"], data["next_obs"]
    assert mask.shape == (160, 3) and not mask.all(), "no ally died in 40 random steps"
    torch.testing.assert_close(mask, (obs.abs().sum(-1) > 0).float(), rtol=0, atol=0)
    assert ((mask > 0) & (next_obs.abs().sum(-1) == 0)).any(), "no row where an ally dies"


def test_agent_mean_and_the_eta_solve_skip_absent_agents() -> None:
    values = torch.tensor([[1.0, 10.0], [3.0, 20.0]])
    assert agent_mean(values, None) == values.mean()
    assert agent_mean(values, torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == 2.0
    assert agent_mean(values, torch.zeros(2, 2)) == 0.0
    q = torch.randn(16, 8, 2, generator=torch.Generator().manual_seed(0))
    q[..., 1] *= 50.0  # an absent agent with very different weights does not move eta
    mask = torch.tensor([1.0, 0.0]).expand(16, 2)
    assert solve_issm_eta(q, 0.3, dim=1, agent_mask=mask) == pytest.approx(solve_issm_eta(q[..., :1], 0.3, dim=1))


def _ddpl(policy_class: str) -> DDPL:
    torch.manual_seed(0)
    return DDPL(algorithm_test_spec("ddpl"), CPU, policy_class=policy_class, hidden=(32, 32), time_dim=8,
                diffusion_steps=5, issm_samples=8, policy_delay=1, eta_target_kl=0.3)


def _batch(algo: DDPL, agent_mask: torch.Tensor | None, size: int = 32) -> Batch:
    g = torch.Generator().manual_seed(1)
    spec = algo.spec
    obs, next_obs = (torch.randn(size, spec.n_agents, spec.obs_max, generator=g) for _ in range(2))
    state, next_state = (torch.randn(size, spec.state_dim, generator=g) for _ in range(2))
    return Batch(obs=obs, state=state, actions=torch.rand(size, spec.n_agents, spec.act_max, generator=g) * 2 - 1,
                 reward=torch.randn(size, generator=g), next_obs=next_obs, next_state=next_state,
                 terminated=torch.zeros(size), agent_mask=agent_mask)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("policy_class", ["diffusion", "gaussian"])
def test_ddpl_trains_no_policy_of_a_dead_agent_but_its_critic(policy_class: str) -> None:
    """Agent 1 dead in every row: its slice of every agent-batched policy weight gets a zero gradient
    and stays put (agents 0 and 2 move); its twin critics (members 1 and N + 1) still train."""
    algo = _ddpl(policy_class)
    n = algo.spec.n_agents
    mask = torch.ones(32, n)
    mask[:, 1] = 0.0
    policy, critic = _snapshot(algo.policy), _snapshot(algo.critic)
    algo.update(_batch(algo, mask))
    for name, p in algo.policy.named_parameters():
        assert p.shape[0] == n, name
        assert not p.grad[1].any(), name
        torch.testing.assert_close(p[1], policy[name][1], rtol=0, atol=0, msg=name)
        assert not torch.equal(p[0], policy[name][0]) and not torch.equal(p[2], policy[name][2]), name
    for name, p in algo.critic.named_parameters():
        for member in (1, n + 1):
            assert not torch.equal(p[member], critic[name][member]), name


@pytest.mark.parametrize("policy_class", ["diffusion", "gaussian"])
def test_ddpl_all_present_mask_is_bit_identical_to_no_mask(policy_class: str) -> None:
    """An all-ones mask and no mask give the same parameters and metrics after two updates, to the
    bit: the masked mean reduces to the unmasked code's mean (which the None path runs as before)."""
    runs = []
    for mask in (None, torch.ones(32, 3)):
        algo = _ddpl(policy_class)
        batch = _batch(algo, mask)
        metrics = [algo.update(batch) for _ in range(2)]
        runs.append((metrics, _snapshot(algo.policy), _snapshot(algo.critic)))
    (m0, p0, c0), (m1, p1, c1) = runs
    assert m0 == m1
    for name in p0:
        assert torch.equal(p0[name], p1[name]), name
    for name in c0:
        assert torch.equal(c0[name], c1[name]), name
