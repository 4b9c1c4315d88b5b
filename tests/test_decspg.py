"""DecSPG, Algorithm 1 of DDPL (paper 002): the exact 'all'-policies step in closed form, the
tabular expected-SARSA estimate against a brute-force averaged Q, the Gaussian projection step
(Theorem 3.1) against quadrature, task errors, checkpoints, the policy artifact, and a slow
learning check."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from dmarl.algorithms.decspg import DecSPG, UnsupportedTaskError, reverse_kl_to_target
from dmarl.data.batch import Batch
from dmarl.envs import decspg_game as game
from dmarl.envs.base import EnvSpec
from dmarl.envs.factory import make_env
from dmarl.errors import UserError

from conftest import run_online_in_process

CPU = torch.device("cpu")


def _spec(n_agents: int = 2, n_states: int = 3, action_dim: int = 1) -> EnvSpec:
    return EnvSpec(
        name="test/one_hot", family="toy", agent_ids=tuple(f"agent_{i}" for i in range(n_agents)),
        obs_dims=(n_states,) * n_agents, action_dims=(action_dim,) * n_agents, state_dim=n_states,
        episode_limit=2, reward_convention="shared",
    )


def _one_hot(states: torch.Tensor, n_states: int) -> torch.Tensor:
    """``[B, N]`` state indices -> ``[B, N, n_states]`` one-hot observations."""
    return torch.nn.functional.one_hot(states, n_states).float()


def _batch(obs: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
           terminated: torch.Tensor) -> Batch:
    return Batch(obs=obs, state=obs[:, 0], actions=actions, reward=reward, next_obs=next_obs,
                 next_state=next_obs[:, 0], terminated=terminated)


def test_all_policies_step_is_pi_k_exp_eta_q_over_z():
    """Algorithm 1 line 5 with all policies: the new bin probabilities are pi_k exp(eta Q) / Z
    in every agent and state, for arbitrary pi_k and Q."""
    torch.manual_seed(0)
    algo = DecSPG(_spec(), CPU, policy_class="all", bins=7, eta=0.7)
    algo.policy.values.copy_(torch.randn(2, 3, 7))
    algo.critic.values.copy_(3 * torch.randn(2, 3, 7))
    pi_k = algo.policy.values.softmax(-1)
    expected = pi_k * torch.exp(0.7 * algo.critic.values)
    expected /= expected.sum(-1, keepdim=True)
    algo._exact_step()
    torch.testing.assert_close(algo.masses(), expected, rtol=1e-12, atol=1e-15)


def test_td_estimate_converges_to_the_exact_averaged_q_of_a_fixed_policy():
    """One state, two agents, fixed skewed policies (eta = 0), reward r = a1 a2 + (a1 - 0.3)^2,
    episodes end w.p. 1/2 (else back to the state, gamma 0.9). Exact averaged Q by brute force:
    Q_i(b) = E[r | a_i uniform in bin b, a_-i ~ pi_-i] + gamma / 2 V with V = E_pi[r] / (1 - gamma / 2);
    the expected-SARSA tables match it for both agents."""
    torch.manual_seed(1)
    g, gamma = 8, 0.9
    algo = DecSPG(_spec(n_states=1), CPU, policy_class="all", bins=g, eta=0.0, gamma=gamma, alpha_min=1e-4)
    algo.policy.values[0, 0] = torch.linspace(-1.0, 1.0, g)  # agent 0 skewed right, agent 1 left
    algo.policy.values[1, 0] = torch.linspace(1.5, -1.5, g)
    pi = algo.masses().clone()

    # brute force on 50 midpoints per bin: uniform within a bin, bins weighted by pi
    sub = 50
    a = torch.linspace(-1, 1, g * sub + 1, dtype=torch.float64)
    mid = (a[1:] + a[:-1]) / 2  # [G * sub]
    weight = algo.masses()[:, 0].repeat_interleave(sub, dim=-1) / sub  # [2, G * sub], sums to 1
    r = mid[:, None] * mid[None, :] + (mid[:, None] - 0.3) ** 2  # r[a1, a2]
    r_bar = [(r * weight[1][None, :]).sum(1), (r * weight[0][:, None]).sum(0)]  # agent i's action first
    value = (weight[0][:, None] * weight[1][None, :] * r).sum() / (1 - gamma / 2)
    exact = torch.stack([rb.reshape(g, sub).mean(1) for rb in r_bar]) + gamma / 2 * value  # [2, G]

    obs = torch.ones(512, 2, 1)
    for _ in range(300):
        actions = torch.as_tensor(algo.act(obs.numpy(), explore=True))
        reward = actions[:, 0, 0] * actions[:, 1, 0] + (actions[:, 0, 0] - 0.3) ** 2
        algo.update(_batch(obs, actions, reward, obs, (torch.rand(512) < 0.5).float()))
    torch.testing.assert_close(algo.masses(), pi)  # eta = 0: the policy is fixed
    assert (algo.critic.values[:, 0] - exact).abs().max() < 0.03, (algo.critic.values[:, 0], exact)
    assert (exact.amax(1) - exact.amin(1)).min() > 0.5  # the bins differ: the check has teeth


def _quadrature_reverse_kl(mean: float, std: float, anchor: tuple[float, float], q: torch.Tensor, eta: float) -> float:
    """KL(N(mean, std^2) || N(anchor) exp(eta Q(clip a)) / Z) by the midpoint rule on a fine grid of
    [-6, 6] (Q of an action: the bin of its clipped action, ``q`` on equal bins of [-1, 1])."""
    nodes = torch.linspace(-6.0, 6.0, 240_001, dtype=torch.float64)  # the bin edges are nodes
    x, dx = (nodes[1:] + nodes[:-1]) / 2, nodes[1] - nodes[0]  # midpoint rule: no cell straddles a jump
    g = q.shape[0]
    qx = q[((x.clamp(-1, 1) + 1) * g / 2).floor().long().clamp(0, g - 1)]

    def log_normal(m: float, s: float) -> torch.Tensor:
        return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)

    log_target = log_normal(*anchor) + eta * qx
    log_target = log_target - torch.logsumexp(log_target, 0) - math.log(dx)
    p = log_normal(mean, std).exp()
    return float(((p * (log_normal(mean, std) - log_target)).sum() * dx).item())


def test_gaussian_step_keeps_zero_mean_on_a_symmetric_q_and_decreases_the_reverse_kl():
    """Theorem 3.1: Q symmetric in a (a strong bump at 0, weak bumps at +-0.75, as the toy game's
    start state), pi_k = N(0, 0.3^2): the gradient step keeps the mean at 0, shrinks the std, and
    lowers the reverse KL to pi_k exp(eta Q) / Z (quadrature, independent of the module); the
    module's closed form equals the quadrature up to log Z."""
    g, eta = 100, 2.0
    algo = DecSPG(_spec(n_agents=1, n_states=1), CPU, policy_class="gaussian", bins=g, eta=eta,
                  gaussian_steps=5, gaussian_lr=0.05)
    centers = (algo.edges[1:] + algo.edges[:-1]) / 2
    q = torch.exp(-0.5 * (centers / 0.15) ** 2) + 0.5 * torch.exp(-0.5 * ((centers.abs() - 0.75) / 0.1) ** 2)
    torch.testing.assert_close(q, q.flip(0))
    algo.critic.values[0, 0] = q
    before = (0.0, 0.3)
    kl_before = _quadrature_reverse_kl(*before, before, q, eta)
    algo._projection_step()
    mean, std = algo.policy.values[0, 0, 0].item(), algo.policy.values[0, 0, 1].exp().item()
    kl_after = _quadrature_reverse_kl(mean, std, before, q, eta)
    assert abs(mean) < 1e-12 and std < 0.3 - 0.01
    assert kl_after < kl_before - 1e-3, (kl_before, kl_after)
    # closed form (up to log Z) against quadrature, at pi_k and after the step: the same offset
    offsets = [
        _quadrature_reverse_kl(m, s, before, q, eta) - reverse_kl_to_target(
            torch.tensor(m, dtype=torch.float64), torch.tensor(math.log(s), dtype=torch.float64),
            torch.tensor(0.0, dtype=torch.float64), torch.tensor(math.log(0.3), dtype=torch.float64),
            q, eta, algo.edges,
        ).item()
        for m, s in (before, (mean, std), (0.2, 0.5))
    ]
    assert max(offsets) - min(offsets) < 1e-6, offsets
    # an asymmetric Q moves the mean toward its higher side
    algo.policy.values[0, 0] = torch.tensor([0.0, math.log(0.3)], dtype=torch.float64)
    algo.critic.values[0, 0] = q + (centers > 0).double()
    algo._projection_step()
    assert algo.policy.values[0, 0, 0].item() > 0.01


def _exact_decspg_success(n_agents: int, eta: float, epochs: int, goal_rate: float = 1.0) -> float:
    """Algorithm 1 with all policies and *exact* averaged Q on the toy game's closed forms (801-point
    action grid, uniform start, agents identical by symmetry): the success probability after
    ``epochs`` steps. ``goal_rate`` slows the goal state's policy steps (eta * goal_rate)."""
    a = np.linspace(-1.0, 1.0, 801)
    r0, p, rg = game.start_reward(a), game.success_probability(a), game.goal_reward(a)
    start = goal = np.full(a.shape, 1.0 / a.size)
    for _ in range(epochs):
        success, r0_mean, goal_value = start @ p, start @ r0, goal @ rg
        # Qbar_i(start, a_i): agent i's share of the mean reward + the others' expected share
        # + gamma P(all others succeed) p(a_i) V(goal); Qbar_i(goal, a_i) likewise
        q_start = (r0 + (n_agents - 1) * r0_mean) / n_agents + 0.99 * success ** (n_agents - 1) * p * goal_value
        q_goal = (rg + (n_agents - 1) * goal_value) / n_agents
        start = start * np.exp(eta * (q_start - q_start.max()))
        goal = goal * np.exp(eta * goal_rate * (q_goal - q_goal.max()))
        start, goal = start / start.sum(), goal / goal.sum()
    return float((start @ p) ** n_agents)


@pytest.mark.parametrize("n_agents", [1, 2, 3])
def test_the_game_admits_the_paper_s_result_under_exact_decspg(n_agents: int):
    """The game's constants (envs/decspg_game.py) let exact DecSPG with all policies reach the optimum
    0.9^N from a uniform start whose success is low (0.224^N: the goal must be discovered), for N = 1-3;
    for N <= 2 (the claims' range) also when the goal state's policy learns 20x slower (at N = 3 that
    slow goal policy lets the start policy collapse onto the bump at 0 first: success 0)."""
    optimum = game.SUCCESS_PROB**n_agents
    assert _exact_decspg_success(n_agents, eta=1.0, epochs=0) < 0.23**n_agents
    for goal_rate in (1.0, 0.05) if n_agents <= 2 else (1.0,):
        assert _exact_decspg_success(n_agents, eta=1.0, epochs=2000, goal_rate=goal_rate) > 0.99 * optimum


def test_tasks_without_one_hot_states_or_with_multi_dim_actions_are_refused_by_name():
    with pytest.raises(UnsupportedTaskError, match=r"test/one_hot: action_dims = \(2, 2\)"):
        DecSPG(_spec(action_dim=2), CPU)
    algo = DecSPG(_spec(), CPU)
    good = _one_hot(torch.zeros(4, 2, dtype=torch.long), 3)
    actions, reward, term = torch.zeros(4, 2, 1), torch.zeros(4), torch.ones(4)
    algo.update(_batch(good, actions, reward, good, term))
    for field, bad in (("obs", 0.5 * good), ("next_obs", good + good.roll(1, -1))):
        with pytest.raises(UnsupportedTaskError, match=rf"test/one_hot: batch\.{field} is not the one-hot"):
            algo.update(_batch(bad, actions, reward, good, term) if field == "obs" else
                        _batch(good, actions, reward, bad, term))
    with pytest.raises(UserError, match="DecSPG.policy_class"):
        DecSPG(_spec(), CPU, policy_class="flow")
    with pytest.raises(UserError, match=r"DecSPG.log_std_bounds = \(-1.0, 1.0\)"):
        DecSPG(_spec(), CPU, policy_class="gaussian", log_std_bounds=(-1.0, 1.0))
    from dmarl.train import parse_settings

    for bad, expected in (("alpha_min = 0.0", r"\(0, 1\]"), ("bins = 1", ">= 2"), ("gaussian_lr = 0.0", "> 0")):
        with pytest.raises(UserError, match=rf"DecSPG\.{bad} is out of range; expected {expected}"):
            parse_settings(["gin/experiments/decspg_toy_cpu.gin", "gin/tasks/toy_decspg_game_n2.gin"],
                           [f"DecSPG.{bad}"])


@pytest.mark.parametrize("policy_class", ["all", "gaussian"])
def test_checkpoint_round_trip_continues_identically(policy_class: str):
    """state_dict through torch.save / torch.load(weights_only=True) into a fresh instance: the
    same state, and the same actions and updates after it (same torch seed)."""
    spec = make_env("toy/decspg_game", 1, n_agents=2).spec
    env = make_env("toy/decspg_game", 16, n_agents=2)

    def batch(algo: DecSPG, seed: int) -> Batch:
        obs, _ = env.reset(seed=seed)
        actions = algo.act(obs, explore=True)
        next_obs, _, reward, term, _, info = env.step(actions)
        return _batch(torch.as_tensor(obs), torch.as_tensor(actions), torch.as_tensor(reward),
                      torch.as_tensor(info["final_obs"]), torch.as_tensor(term).float())

    torch.manual_seed(2)
    algo = DecSPG(spec, CPU, policy_class=policy_class, eta=0.5)
    for seed in range(5):
        algo.update(batch(algo, seed))
    buffer = io.BytesIO()
    torch.save(algo.state_dict(), buffer)
    buffer.seek(0)
    clone = DecSPG(spec, CPU, policy_class=policy_class, eta=0.5)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    assert list(clone.state_dict()) == ["critic", "visits", "policy", "updates"] and clone.updates == 5
    for name in ("critic", "visits", "policy"):
        assert torch.equal(getattr(clone, name).values, getattr(algo, name).values), name
    results = []
    for model in (algo, clone):
        torch.manual_seed(3)
        metrics = model.update(batch(model, 99))
        results.append((model.act(env.reset(seed=7)[0], explore=False), metrics, model.policy.values.clone()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    torch.testing.assert_close(results[0][2], results[1][2], rtol=0, atol=0)


def test_policy_artifact_holds_the_policy_table_only_and_acts_like_the_trained_algorithm():
    """`dmarl.policy` finds the policy table by running ``act`` on zero observations (not one-hot:
    act must not refuse them); a fresh instance loaded from the artifact acts identically."""
    from dmarl.policy import load_policy_state, policy_state

    spec = make_env("toy/decspg_game", 1, n_agents=2).spec
    obs = _one_hot(torch.randint(0, 3, (64, 2), generator=torch.Generator().manual_seed(0)), 3).numpy()
    for policy_class in ("all", "gaussian"):
        torch.manual_seed(4)
        trained = DecSPG(spec, CPU, policy_class=policy_class)
        trained.policy.values.add_(0.3 * torch.randn_like(trained.policy.values))
        state = policy_state(trained, spec)
        assert list(state["modules"]) == ["policy"]  # not the critic or the visit counts
        fresh = DecSPG(spec, CPU, policy_class=policy_class)
        load_policy_state(fresh, state, "test")
        actions = []
        for algo in (trained, fresh):
            torch.manual_seed(5)
            actions.append(algo.act(obs, explore=False))
        np.testing.assert_array_equal(actions[0], actions[1])


def _toy_run(policy_class: str, n_agents: int, seed: int) -> tuple[float, DecSPG]:
    """One run of gin/experiments/decspg_toy_cpu.gin with the online runner: the final
    evaluation's success rate and the trained algorithm."""
    final, algo = run_online_in_process(
        ["gin/experiments/decspg_toy_cpu.gin", f"gin/tasks/toy_decspg_game_n{n_agents}.gin"],
        [f"DecSPG.policy_class = '{policy_class}'"], seed,
    )
    return final["final/success_rate"], algo


@pytest.mark.slow
def test_all_policies_reach_the_goal_of_the_two_agent_game_and_gaussians_do_not():
    """Sec. 3.2.2 / Prop. 3.2 at N = 2 (best policy: 0.81), seeds 0 and 1 (deterministic on CPU;
    seeds 0-4 measured 'all' 0.735 / 0.73 / 0.735 / 0.735 / 0.735, Gaussian 0 on every seed; the
    untrained 'all' policy reaches the goal in ~5 % of episodes, the untrained Gaussian in ~0.1 %).
    The Gaussian fails as Theorem 3.1 says: its start-state mean stays near 0 and its std shrinks
    from 0.3 (measured 0.21-0.22 at N = 2, seeds 0-4), so a Gaussian that never updates fails this
    test too."""
    for seed in (0, 1):
        success, algo = _toy_run("all", 2, seed)
        assert success >= 0.65, (seed, success)
        success, algo = _toy_run("gaussian", 2, seed)
        mean, std = algo.policy.values[:, 0, 0], algo.policy.values[:, 0, 1].exp()  # start state, both agents
        assert success <= 0.02, (seed, success)
        assert mean.abs().max() < 0.1 and std.max() < 0.25, (seed, mean, std)
