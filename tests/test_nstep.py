"""n-step returns of the replay buffer (HARL's ``n_step``) against brute force: a hand-built
episode with a termination, a truncation and an unfinished tail; parallel envs with random
episode ends over a wrapping ring; the runner's guard; HASAC / HATD3 bootstrapping with
gamma^m."""
from __future__ import annotations

import types

import gin
import numpy as np
import pytest
import torch

from dmarl import registry
from dmarl.data.batch import Batch
from dmarl.data.replay import ReplayBuffer
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.runners.online import OnlineRunner

CPU = torch.device("cpu")
GAMMA = 0.9


def _step(buffer: ReplayBuffer, env_ids: list[int], t: int, reward: list[float], terminated: list[float],
          done: list[float]) -> None:
    """Add one vector step; obs carries (env, t), next_obs (env, t + 1) so rows can be traced."""
    e = len(env_ids)
    obs = np.zeros((e, 1, 2), np.float32)
    obs[:, 0, 0], obs[:, 0, 1] = env_ids, t
    next_obs = obs.copy()
    next_obs[:, 0, 1] += 1
    buffer.add(
        obs=obs, state=obs[:, 0], actions=np.zeros((e, 1, 1), np.float32), reward=np.asarray(reward, np.float32),
        next_obs=next_obs, next_state=next_obs[:, 0], terminated=np.asarray(terminated, np.float32),
        done=np.asarray(done, np.float32),
    )


def test_hand_built_episode_termination_truncation_and_unfinished_tail() -> None:
    # one env: episode A = r 1, 2, 3 then terminated; episode B = r 4, 5 then truncated;
    # episode C = r 6 (still running)
    buffer = ReplayBuffer(16, 1, 2, 1, 2, n_step=2, gamma=GAMMA)
    steps = [(1, 0, 0), (2, 0, 0), (3, 1, 1), (4, 0, 0), (5, 0, 1), (6, 0, 0)]
    for t, (r, term, done) in enumerate(steps):
        _step(buffer, [0], t, [r], [term], [done])
    g = GAMMA
    # (reward, next t, terminated, discount) per start row
    expected = [
        (1 + g * 2, 2, 0, g**2),
        (2 + g * 3, 3, 1, g**2),  # window reaches the termination: no bootstrap
        (3, 3, 1, g),
        (4 + g * 5, 5, 0, g**2),  # truncation: bootstrap from where it stopped
        (5, 5, 0, g),
        (6, 6, 0, g),  # newest row of the stream: shorter window
    ]
    last, reward, steps_m = buffer.n_step_rows(np.arange(6))
    for row, (r, next_t, term, disc) in enumerate(expected):
        assert reward[row] == pytest.approx(r)
        assert buffer.arrays["next_obs"][last[row], 0, 1] == next_t
        assert buffer.arrays["terminated"][last[row]] == term
        assert GAMMA ** steps_m[row] == pytest.approx(disc)
    # the old 1-step behaviour would bootstrap row 0 with gamma from t = 1, not gamma^2 from t = 2
    batch = buffer.sample(64, np.random.default_rng(0), CPU)
    start = batch.obs[:, 0, 1].long().numpy()
    assert batch.discount is not None and len(set(start)) == 6
    np.testing.assert_allclose(batch.discount.numpy(), [expected[t][3] for t in start], rtol=1e-6)
    np.testing.assert_allclose(batch.reward.numpy(), [expected[t][0] for t in start], rtol=1e-6)
    np.testing.assert_array_equal(batch.next_obs[:, 0, 1].numpy(), [expected[t][1] for t in start])


def _brute_force(history: dict[int, list[tuple[float, float, float]]], env: int, t: int, n: int,
                 newest: dict[int, int]) -> tuple[float, int, float, int]:
    """(n-step reward, t of the bootstrap state, terminated, m) from the env's own history."""
    total, k = 0.0, 0
    while True:
        r, term, done = history[env][t + k]
        total += GAMMA**k * r
        if done or k == n - 1 or t + k == newest[env]:
            return total, t + k + 1, term, k + 1
        k += 1


@pytest.mark.parametrize("n_step", [1, 3, 7])
def test_parallel_envs_over_a_wrapping_ring_match_brute_force(n_step: int) -> None:
    rng = np.random.default_rng(n_step)
    envs, capacity, vector_steps = 3, 50, 40  # 120 transitions through 50 rows, 50 % 3 != 0
    buffer = ReplayBuffer(capacity, 1, 2, 1, 2, n_step=n_step, gamma=GAMMA)
    history: dict[int, list[tuple[float, float, float]]] = {e: [] for e in range(envs)}
    for t in range(vector_steps):
        reward = rng.normal(size=envs)
        end = rng.random(envs) < 0.15
        term = end & (rng.random(envs) < 0.5)  # half of the episode ends are time-limit truncations
        _step(buffer, list(range(envs)), t, list(reward), list(term.astype(float)), list(end.astype(float)))
        for e in range(envs):
            history[e].append((float(np.float32(reward[e])), float(term[e]), float(end[e])))
        if t == 25:  # the runner resets the envs at a segment boundary: episodes are truncated
            buffer.mark_episode_end()
            for e in range(envs):
                r, tm, _ = history[e][-1]
                history[e][-1] = (r, tm, 1.0)
    newest = {e: vector_steps - 1 for e in range(envs)}
    batch = buffer.sample(400, np.random.default_rng(1), CPU)
    assert (batch.discount is None) == (n_step == 1)
    for b in range(len(batch)):
        env, t = int(batch.obs[b, 0, 0]), int(batch.obs[b, 0, 1])
        reward, next_t, term, m = _brute_force(history, env, t, n_step, newest)
        assert batch.reward[b].item() == pytest.approx(reward, rel=1e-5, abs=1e-5)
        assert int(batch.next_obs[b, 0, 0]) == env and int(batch.next_obs[b, 0, 1]) == next_t
        assert int(batch.next_state[b, 1]) == next_t and batch.terminated[b].item() == term
        discount = GAMMA if batch.discount is None else batch.discount[b].item()
        assert discount == pytest.approx(GAMMA**m, rel=1e-6)


def test_state_dict_round_trip_keeps_n_step_samples() -> None:
    buffer = ReplayBuffer(20, 1, 2, 1, 2, n_step=4, gamma=GAMMA)
    for t in range(9):
        _step(buffer, [0, 1], t, [t, -t], [0, 0], [float(t == 4), 0])
    copy = ReplayBuffer(20, 1, 2, 1, 2, n_step=4, gamma=GAMMA)
    copy.load_state_dict(buffer.state_dict())
    a = buffer.sample(32, np.random.default_rng(3), CPU)
    b = copy.sample(32, np.random.default_rng(3), CPU)
    for name in ("obs", "reward", "next_obs", "terminated", "discount"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


def test_invalid_settings_raise_user_errors() -> None:
    with pytest.raises(UserError, match="n_step = 0"):
        ReplayBuffer(10, 1, 2, 1, 2, n_step=0, gamma=GAMMA)
    with pytest.raises(UserError, match="gamma"):
        ReplayBuffer(10, 1, 2, 1, 2, n_step=3)
    buffer = ReplayBuffer(10, 1, 2, 1, 2, n_step=3, gamma=GAMMA)
    _step(buffer, [0, 1], 0, [0, 0], [0, 0], [0, 0])
    with pytest.raises(UserError, match="same number of envs"):
        _step(buffer, [0], 1, [0], [0], [0])


def test_runner_refuses_n_step_for_algorithms_that_ignore_the_discount() -> None:
    spec = types.SimpleNamespace(n_agents=1, obs_max=2, act_max=1, state_dim=2)
    env = types.SimpleNamespace(spec=spec)
    algorithm = types.SimpleNamespace(gamma=0.99)  # no supports_n_step
    try:
        with gin.unlock_config():
            gin.bind_parameter("ReplayBuffer.n_step", 5)
        with pytest.raises(UserError, match="does not read Batch.discount"):
            OnlineRunner(buffer_size=100).run(
                algorithm, env, env, seed=0, device=CPU, log=lambda *_: None, save_checkpoint=lambda _: None,
            )
    finally:
        gin.clear_config()


# -- the algorithms bootstrap with gamma^m --------------------------------------------------------

SPEC = EnvSpec("test/hetero", "toy", ("a", "b"), (3, 4), (2, 1), 5, 25, "shared")


def _batch(discount: torch.Tensor | None) -> Batch:
    g = torch.Generator().manual_seed(0)
    b = 8
    obs = torch.randn(b, 2, 4, generator=g) * torch.as_tensor(SPEC.obs_mask(), dtype=torch.float32)
    actions = (torch.rand(b, 2, 2, generator=g) * 2 - 1) * torch.as_tensor(SPEC.action_mask(), dtype=torch.float32)
    return Batch(
        obs=obs, state=torch.randn(b, 5, generator=g), actions=actions, reward=torch.randn(b, generator=g),
        next_obs=obs.flip(0), next_state=torch.randn(b, 5, generator=g),
        terminated=torch.tensor([0, 1, 0, 0, 1, 0, 0, 0], dtype=torch.float32), discount=discount,
    )


@pytest.mark.parametrize("name", ["hasac", "hatd3"])
def test_critic_targets_use_the_batch_discount(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    alg = registry.get_algorithm(name).cls(spec=SPEC, device=CPU, hidden=(8, 8))
    assert alg.supports_n_step
    targets: list[torch.Tensor] = []
    module = __import__(type(alg).__module__, fromlist=["twin_td_step"])
    monkeypatch.setattr(module, "twin_td_step", lambda _c, _o, _i, target, _h: targets.append(target) or {})
    discount = torch.linspace(0.1, 0.9, 8)
    for batch in (_batch(None), _batch(discount), _batch(torch.zeros(8))):
        torch.manual_seed(1)  # the same target-action samples in every call
        alg._critic_update(batch)
    one_step, n_step, no_bootstrap = targets
    reward, alive = _batch(None).reward, 1.0 - _batch(None).terminated
    torch.testing.assert_close(no_bootstrap, reward)
    bootstrap = (one_step - reward) / alg.gamma  # the soft next value V(s') where alive, 0 where terminated
    torch.testing.assert_close(n_step, reward + discount * bootstrap)
    assert torch.all(bootstrap[alive == 0] == 0) and torch.any(bootstrap[alive == 1] != 0)


def test_runner_stores_episode_ends_and_segment_truncations(workdir) -> None:
    """MPE episodes are 25 steps and end by truncation; the runner also truncates at every
    segment boundary (30 vector steps here): the buffer's ``done`` flags mark exactly those."""
    from conftest import REPO
    from dmarl.runners import checkpoint
    from dmarl.train import run_training

    bindings = [
        "HASAC.hidden = (8, 8)", "OnlineRunner.total_env_steps = 400", "OnlineRunner.num_envs = 4",
        "OnlineRunner.random_steps = 100", "OnlineRunner.learning_starts = 100", "OnlineRunner.batch_size = 32",
        "OnlineRunner.eval_interval = 1000000", "OnlineRunner.eval_episodes = 1", "OnlineRunner.eval_num_envs = 1",
        "OnlineRunner.final_eval_multiplier = 1", "OnlineRunner.checkpoint_interval = 120",
        "OnlineRunner.log_interval = 100",
    ]
    result = run_training([str(REPO / "gin/experiments/hasac_simple_spread_cpu.gin")], bindings, progress=False)
    assert result.status == "FINISHED"
    data = checkpoint.load(workdir / "runs" / result.run_id / "checkpoint.pt")["buffer"]["data"]
    done = data["done"].numpy().reshape(100, 4)  # [vector step, env]
    expected = np.zeros(100, bool)
    expected[[24, 29, 54, 59, 84, 89, 99]] = True  # episode ends, then segment ends (every 30 steps, and the last)
    np.testing.assert_array_equal(done, np.repeat(expected[:, None], 4, axis=1).astype(np.float32))
    assert not data["terminated"].any()
