"""DOM2-style offline MARL (algorithms/dom2.py): trajectory reweighting, data fractions,
the Diffusion-QL actor loss, the Q gradient through the chain, the EMA, and a learning check."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from dmarl.algorithms.dom2 import DOM2
from dmarl.envs.toy import BanditEnv
from dmarl.envs.toy_data import make_bandit_dataset

import gin
from dmarl.bench.spec import REPO_ROOT, expand, load_benchmark
from dmarl.data.offline import (
    EpisodeIndex,
    OfflineDataset,
    ReturnWeightedSampler,
    UniformSampler,
)
from dmarl.diffusion.losses import denoising_loss
from dmarl.diffusion.samplers import ddpm_sample
from dmarl.errors import UserError
from dmarl.runners.offline import OfflineRunner

CPU = torch.device("cpu")
SMALL = dict(actor_hidden=(32, 32), critic_hidden=(32, 32), actor_activation="relu", critic_activation="relu")


def episode_table(lengths: list[int], returns: list[float], n_agents: int = 2) -> OfflineDataset:
    """A dataset whose rows carry their episode position in obs (to check whole episodes)."""
    index = EpisodeIndex.from_lengths(lengths, returns)
    t = index.n_transitions
    episode = np.repeat(np.arange(len(lengths)), lengths).astype(np.float32)
    obs = np.broadcast_to(episode[:, None, None], (t, n_agents, 1)).copy()
    reward = np.zeros(t, np.float32)
    for start, length, ret in zip(index.starts, index.lengths, index.returns):
        reward[start : start + length] = ret / length
    arrays = {
        "obs": obs, "next_obs": obs, "state": episode[:, None].copy(), "next_state": episode[:, None].copy(),
        "actions": np.zeros((t, n_agents, 1), np.float32), "reward": reward, "terminated": np.zeros(t, np.float32),
    }
    return OfflineDataset(arrays, index)


TABLE_LENGTHS = [2, 3, 1, 4]
TABLE_RETURNS = [1.0, 5.0, 3.0, -2.0]


# -- trajectory reweighting ------------------------------------------------------------------
def test_top_quantile_probabilities_match_the_formula_and_the_draws() -> None:
    ds = episode_table(TABLE_LENGTHS, TABLE_RETURNS)
    # quantile 0.75 of (1, 5, 3, -2) is 3.5: only the return-5 episode (3 rows) counts 4 times
    sampler = ReturnWeightedSampler(ds, copies=4, threshold=0.75)
    expected = np.array([1, 1, 4, 4, 4, 1, 1, 1, 1, 1], float) / (2 + 3 * 4 + 1 + 4)
    np.testing.assert_allclose(sampler.transition_probabilities(), expected)
    rows = sampler.rows(400_000, np.random.default_rng(0))
    freq = np.bincount(rows, minlength=10) / rows.size
    np.testing.assert_allclose(freq, expected, atol=3e-3)


def test_softmax_probabilities_match_the_formula_and_the_draws() -> None:
    ds = episode_table(TABLE_LENGTHS, TABLE_RETURNS)
    sampler = ReturnWeightedSampler(ds, mode="softmax", temperature=2.0)
    w = np.repeat(np.exp(np.array(TABLE_RETURNS) / 2.0), TABLE_LENGTHS)
    np.testing.assert_allclose(sampler.transition_probabilities(), w / w.sum())
    rows = sampler.rows(400_000, np.random.default_rng(1))
    np.testing.assert_allclose(np.bincount(rows, minlength=10) / rows.size, w / w.sum(), atol=3e-3)
    # large returns do not overflow (weights are shifted by the max return)
    big = ReturnWeightedSampler(episode_table([1, 1], [1000.0, 999.0]), mode="softmax", temperature=1.0)
    np.testing.assert_allclose(big.transition_probabilities(), [1 / (1 + math.e**-1), 1 / (1 + math.e)])


def test_dom2_gin_binds_the_runners_trajectory_reweighting_and_each_sampler_is_built() -> None:
    ds = episode_table(TABLE_LENGTHS, TABLE_RETURNS)
    gin.clear_config()
    gin.parse_config_file(str(REPO_ROOT / "gin" / "algorithms" / "dom2.gin"), skip_unknown=True)
    try:
        default = OfflineRunner(total_updates=1)  # DOM2's own setting: top 10 % of episodes x 5
    finally:
        gin.clear_config()
    assert (default.sampler, default.sampler_threshold, default.sampler_copies) == ("return_weighted", 0.9, 5)
    assert isinstance(default.batch_source(ds), ReturnWeightedSampler)
    assert isinstance(OfflineRunner(total_updates=1).batch_source(ds), UniformSampler)
    top = OfflineRunner(total_updates=1, sampler="return_weighted", sampler_threshold=0.75, sampler_copies=4)
    np.testing.assert_allclose(top.batch_source(ds).transition_probabilities()[2], 4 / 19)
    soft = OfflineRunner(total_updates=1, sampler="softmax", sampler_temperature=2.0).batch_source(ds)
    assert soft.mode == "softmax"
    with pytest.raises(UserError, match="OfflineRunner.sampler = 'softmax' needs sampler_temperature"):
        OfflineRunner(total_updates=1, sampler="softmax")
    with pytest.raises(UserError, match="OfflineRunner.sampler must be one of"):
        OfflineRunner(total_updates=1, sampler="upsample")
    with pytest.raises(UserError, match="threshold must be a quantile"):
        OfflineRunner(total_updates=1, sampler="return_weighted", sampler_threshold=2.0, sampler_copies=2).batch_source(ds)
    spec = BanditEnv(1).spec
    with pytest.raises(UserError, match="act_candidates > 1 needs critic = 'per_agent'"):
        DOM2(spec, CPU, critic="central", act_candidates=4)


# -- data fractions ----------------------------------------------------------------------------
def test_fractions_pick_whole_episodes_reproducibly_and_nested() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 9, size=40).tolist()
    ds = episode_table(lengths, rng.normal(size=40).tolist())
    chosen = {}
    for fraction in (0.05, 0.1, 0.25, 1.0):
        sub = ds.subset(fraction, seed=7)
        ids = sub.episodes.ids
        assert len(ids) == math.ceil(fraction * 40)
        for k, episode in enumerate(ids):  # every row of each chosen episode, in order, nothing else
            rows = sub.episodes.rows(np.array([k]))
            assert np.all(sub.obs[rows, 0, 0] == episode) and len(rows) == lengths[episode]
        assert len(sub) == sum(lengths[e] for e in ids)
        np.testing.assert_array_equal(ds.subset(fraction, seed=7).episodes.ids, ids)  # reproducible
        chosen[fraction] = set(ids.tolist())
    assert chosen[0.05] <= chosen[0.1] <= chosen[0.25] <= chosen[1.0] == set(range(40))
    assert set(ds.subset(0.25, seed=8).episodes.ids.tolist()) != chosen[0.25]
    # the runner trains on that subset, with DOM2's reweighting too
    runner = OfflineRunner(total_updates=1, dataset_fraction=0.1, subset_seed=7, sampler="return_weighted",
                           sampler_threshold=0.9, sampler_copies=5)
    source = runner.batch_source(ds)
    assert set(source.dataset.episodes.ids.tolist()) == chosen[0.1]
    batch = source.sample(512, np.random.default_rng(0))
    assert set(batch.obs[:, 0, 0].long().tolist()) <= chosen[0.1]


def test_the_fraction_axis_benchmark_binds_each_fraction_per_cell() -> None:
    cells = expand(load_benchmark(REPO_ROOT / "gin" / "benchmarks" / "data_fraction_axis.gin"))
    fractions = {}
    for cell in cells:
        (binding,) = [b for b in cell.bindings if b.startswith("OfflineRunner.dataset_fraction")]
        fractions.setdefault(cell.algorithm, set()).add(float(binding.split("=")[1]))
    assert fractions == {"dom2": {0.05, 0.1, 0.25, 1.0}, "dom2_no_reweight": {0.05, 0.1, 0.25, 1.0}}
    assert len({c.config_hash for c in cells}) == len(cells) == 2 * 4 * 3


# -- Diffusion-QL actor loss, gradient through the chain, EMA -------------------------------------
def _batch(agent: DOM2, n: int = 64):
    ds = make_bandit_dataset(n, seed=0)
    return ds.batch(np.arange(n))


@pytest.mark.parametrize("critic", ["per_agent", "central"])
def test_actor_loss_is_the_diffusion_ql_form(critic: str) -> None:
    """L = sum_k [L_d,k - eta mean Q_k^j / mean |Q_k^(1-j)|] (per agent), or sum_i L_d,i - eta
    mean Q^j / mean |Q^(1-j)| (central), recomputed by hand from the same random draws."""
    torch.manual_seed(0)
    agent = DOM2(BanditEnv(1).spec, CPU, critic=critic, eta=2.5, **SMALL)
    batch = _batch(agent)
    actor = copy.deepcopy(agent.actor)
    torch.manual_seed(11)
    reported = agent._actor_update(batch)["train/actor_loss"]
    torch.manual_seed(11)
    bc = denoising_loss(actor.conditioned(batch.obs), agent.schedule, batch.actions).mean(0)  # [N]
    new = ddpm_sample(actor.conditioned(batch.obs), agent.schedule, tuple(batch.actions.shape))
    q = agent.critic(*agent._critic_input(batch.obs, batch.state, new))  # [2, B, K]
    j = int(torch.randint(2, ()).item())
    if critic == "per_agent":
        expected = sum(bc[k] - 2.5 * q[j, :, k].mean() / q[1 - j, :, k].abs().mean() for k in range(2))
    else:
        expected = bc.sum() - 2.5 * q[j, :, 0].mean() / q[1 - j, :, 0].abs().mean()
    assert reported == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_q_term_gradient_flows_through_every_denoising_step() -> None:
    """d Q(a^0) / d theta by autograd through the 5-step chain equals central finite differences
    (fixed noise, float64): a chain cut between steps would miss most of the gradient."""
    torch.manual_seed(2)
    agent = DOM2(BanditEnv(1).spec, CPU, **SMALL)
    actor, schedule = agent.actor.double(), agent.schedule.double()
    critic = agent.critic.double()
    with torch.no_grad():  # an output layer of ordinary scale (its init is near zero)
        actor.body[-1].weight.mul_(300.0)
    obs = torch.ones(16, 2, 1, dtype=torch.float64)
    noise = torch.randn(schedule.num_steps, 16, 2, 1, dtype=torch.float64)

    def objective() -> torch.Tensor:
        a0 = ddpm_sample(actor.conditioned(obs), schedule, (16, 2, 1), noise=noise, requires_grad=True)
        return critic(obs, a0)[0].mean()

    weight = actor.in_x.weight  # the noisy-action input: reached only through the chain's steps
    (grad,) = torch.autograd.grad(objective(), weight)
    assert grad.abs().max() > 1e-6
    numeric = torch.zeros_like(weight)
    eps = 1e-6
    with torch.no_grad():
        for idx in np.ndindex(*weight.shape[:1], 1, min(weight.shape[2], 4)):
            old = weight[idx].item()
            weight[idx] = old + eps
            up = objective().item()
            weight[idx] = old - eps
            down = objective().item()
            weight[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
    mask = numeric != 0
    torch.testing.assert_close(grad[mask], numeric[mask], rtol=1e-4, atol=1e-9)


def test_ema_follows_diffusion_ql_schedule() -> None:
    torch.manual_seed(0)
    agent = DOM2(BanditEnv(1).spec, CPU, ema_decay=0.9, ema_start=10, ema_every=5, **SMALL)
    initial = [p.clone() for p in agent.ema.parameters()]
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.add_(1.0)
    agent.counters["updates"] = 5  # before ema_start: the EMA keeps its initial copy
    agent._ema_update()
    for e, p0 in zip(agent.ema.parameters(), initial):
        torch.testing.assert_close(e, p0)
    agent.counters["updates"] = 11  # not a multiple of ema_every: unchanged
    agent._ema_update()
    agent.counters["updates"] = 15
    agent._ema_update()
    for e, p0, p in zip(agent.ema.parameters(), initial, agent.actor.parameters()):
        torch.testing.assert_close(e, 0.9 * p0 + 0.1 * p)
    assert not any(p.requires_grad for p in agent.ema.parameters())


def test_update_runs_with_every_option_and_resumes_exactly() -> None:
    spec = BanditEnv(1).spec
    for options in ({"critic": "central", "cql_alpha": 1.0}, {"cql_alpha": 0.5, "act_candidates": 4}):
        torch.manual_seed(0)
        agent = DOM2(spec, CPU, **SMALL, **options)
        agent.plan_updates(10)
        metrics = agent.update(_batch(agent))
        assert {"train/critic_loss", "train/cql_penalty", "train/actor_loss", "train/bc_loss"} <= set(metrics)
        assert all(math.isfinite(v) for v in metrics.values())
        twin = DOM2(spec, CPU, **SMALL, **options)
        twin.load_state_dict(agent.state_dict())
        torch.manual_seed(5)
        a = agent.act(np.ones((3, 2, 1), np.float32), explore=False)
        torch.manual_seed(5)
        np.testing.assert_array_equal(a, twin.act(np.ones((3, 2, 1), np.float32), explore=False))
        assert a.shape == (3, 2, 1) and np.all(np.abs(a) <= 1.0)
        assert twin.actor_optim.param_groups[0]["lr"] == agent.actor_optim.param_groups[0]["lr"] < 3e-4


# -- learning ----------------------------------------------------------------------------------
def _mean_reward(policy, episodes: int = 200) -> float:
    env = BanditEnv(episodes)
    obs, _ = env.reset(0)
    return float(env.step(policy(obs))[2].mean())


@pytest.mark.slow
def test_dom2_beats_random_and_behaviour_cloning_on_the_bandit() -> None:
    """One mode of the bandit's data (N((0.3, 0.3), 0.5^2 I), clipped): dataset mean reward about
    0.09 + cov, independent cloning about E[a1] E[a2] ~ 0.09, random 0. Q_i(a_i) = a_i E[a_j] rises
    in a_i, so the Q term pushes each agent to the top of the data's support: > 0.4 clearly."""
    torch.manual_seed(0)
    ds = make_bandit_dataset(20_000, seed=0, modes=(0.3,), std=0.5, boundary="clip")
    agent = DOM2(BanditEnv(1).spec, CPU, actor_hidden=(64, 64), critic_hidden=(64, 64), actor_activation="relu",
                 critic_activation="relu", actor_lr=1e-3, critic_lr=1e-3, ema_start=0, ema_every=1, ema_decay=0.98)
    updates = 600
    agent.plan_updates(updates)
    source = OfflineRunner(total_updates=updates).batch_source(ds)
    rng = np.random.default_rng(0)
    for _ in range(updates):
        agent.update(source.sample(256, rng))
    trained = _mean_reward(lambda obs: agent.act(obs, explore=False))
    random = _mean_reward(lambda obs: np.random.default_rng(1).uniform(-1, 1, size=obs.shape).astype(np.float32))
    print(f"DOM2 {trained:.3f} vs random {random:.3f}, dataset {ds.reward.mean():.3f}")
    assert abs(random) < 0.1
    assert trained > 0.4 > ds.reward.mean() + 0.2
