"""OMSD and BRPO unit tests (issue 6 acceptance): sequential prefixes from the *updated*
actors, per-agent prefix widths, the surrogate gradient against a known behaviour density,
a configurable and observable agent order, phase files reused instead of retrained,
Proposition 3.1, the bandit dataset, checkpoint round trips, and every experiment gin."""
from __future__ import annotations

import copy
import glob
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from dmarl.algorithms.baselines.brpo import BRPOCTDE, BRPOInd, BRPOJAL
from dmarl.algorithms.omsd import OMSD
from dmarl.analysis import coordinated_modes, factorised, marginals, mode_shift_tv, tv_distance
from dmarl.data.batch import Batch
from dmarl.diffusion import VPSDE, srpo_loss
from dmarl.envs.base import EnvSpec
from dmarl.envs.datasets import load_dataset
from dmarl.envs.toy_data import MODES, STD, make_bandit_dataset, mixture_score, write_bandit_dataset
from dmarl.errors import UserError

SPEC = EnvSpec(
    name="test", family="test", agent_ids=("a", "b", "c"), obs_dims=(4, 3, 4), action_dims=(2, 1, 2),
    state_dim=5, episode_limit=10, reward_convention="sum",
)
BANDIT = EnvSpec(
    name="toy/bandit", family="toy", agent_ids=("agent_0", "agent_1"), obs_dims=(1, 1), action_dims=(1, 1),
    state_dim=1, episode_limit=1, reward_convention="shared",
)
TINY = dict(
    critic_hidden=(16, 16), behaviour_hidden=(16, 16), actor_hidden=(16, 16), time_dim=8,
    critic_steps=3, behaviour_steps=3, pretrain_batch_size=8, actor_lr=1e-2,
)


def make(cls: type = OMSD, spec: EnvSpec = SPEC, **kwargs: object):
    torch.manual_seed(0)
    return cls(spec, torch.device("cpu"), **{**TINY, **kwargs})


def batch(spec: EnvSpec = SPEC, b: int = 32, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n, o, a = spec.n_agents, spec.obs_max, spec.act_max
    actions = (torch.rand(b, n, a, generator=g) * 2 - 1) * torch.as_tensor(spec.action_mask(), dtype=torch.float32)
    obs_mask = torch.as_tensor(spec.obs_mask(), dtype=torch.float32)
    return Batch(
        obs=torch.randn(b, n, o, generator=g) * obs_mask, state=torch.randn(b, spec.state_dim, generator=g),
        actions=actions, reward=torch.randn(b, generator=g), next_obs=torch.randn(b, n, o, generator=g) * obs_mask,
        next_state=torch.randn(b, spec.state_dim, generator=g), terminated=torch.zeros(b),
    )


class Source:
    """A BatchSource over fixed random batches (what the runner passes to pretrain)."""

    def __init__(self, spec: EnvSpec = SPEC) -> None:
        self.spec, self.calls = spec, 0

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> Batch:
        self.calls += 1
        return batch(self.spec, batch_size, seed=int(rng.integers(1 << 30)))


def pretrain(algo, source: Source | None = None) -> None:
    source = source or Source(algo.spec)
    algo.pretrain(source, rng=np.random.default_rng(0), device=torch.device("cpu"), log=lambda m, s: None)


def record_prefixes(algo, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, torch.Tensor | None]]:
    seen: list[tuple[int, torch.Tensor | None]] = []
    original = algo.behaviour_denoiser

    def spy(k, cond, prefix):
        seen.append((k, None if prefix is None else prefix.detach().clone()))
        return original(k, cond, prefix)

    monkeypatch.setattr(algo, "behaviour_denoiser", spy)
    return seen


# -- sequential decomposition ------------------------------------------------------------
@pytest.mark.parametrize("sequential", [True, False])
def test_prefix_comes_from_the_just_updated_actors(sequential: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    algo = make(sequential=sequential, actor_lr=0.05)
    pretrain(algo)
    data = batch()
    with torch.no_grad():
        before = algo._act_all(data.obs)
    seen = record_prefixes(algo, monkeypatch)
    algo.update(data)
    with torch.no_grad():
        after = algo._act_all(data.obs)
    assert [k for k, _ in seen] == [0, 1, 2] and seen[0][1] is None
    for k, prefix in seen[1:]:
        agents = algo.units[k].prefix
        fresh = torch.cat([after[i] for i in agents], dim=-1)
        stale = torch.cat([before[i] for i in agents], dim=-1)
        assert not torch.allclose(fresh, stale, atol=1e-4)  # the earlier actors did move
        expected, other = (fresh, stale) if sequential else (stale, fresh)
        torch.testing.assert_close(prefix, expected)
        assert not torch.allclose(prefix, other, atol=1e-4)


def test_behaviour_models_see_their_own_prefix_widths() -> None:
    algo = make()
    assert [net.prefix_dim for net in algo.behaviour] == [0, 2, 3]  # a^{<i} widths with action dims (2, 1, 2)
    assert [net.action_dim for net in algo.behaviour] == [2, 1, 2]
    assert all(net.obs_dim == SPEC.state_dim for net in algo.behaviour)
    reordered = make(agent_order=(2, 0, 1))  # agent 2 first, then 0 (prefix a2), then 1 (prefix a2, a0)
    widths = {u.agents[0]: net.prefix_dim for u, net in zip(reordered.units, reordered.behaviour)}
    assert widths == {2: 0, 0: 2, 1: 4}
    assert [net.prefix_dim for net in make(BRPOCTDE).behaviour] == [0, 0, 0]
    ind = make(BRPOInd)
    assert [net.prefix_dim for net in ind.behaviour] == [0, 0, 0]
    assert [net.obs_dim for net in ind.behaviour] == list(SPEC.obs_dims)  # independent: o_i, not s
    assert [(c.cond_dim, c.action_dim) for c in ind.critics] == [(4, 2), (3, 1), (4, 2)]
    jal = make(BRPOJAL)
    assert len(jal.behaviour) == 1 and jal.behaviour[0].action_dim == 5 and jal.behaviour[0].prefix_dim == 0


def test_behaviour_training_conditions_on_dataset_prefix_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    algo = make(agent_order=(1, 2, 0))
    data = batch()
    seen = {}
    for k, net in enumerate(algo.behaviour):
        original = net.conditioned

        def spy(cond, prefix=None, k=k, original=original):
            seen[k] = prefix
            return original(cond, prefix)

        monkeypatch.setattr(net, "conditioned", spy)
    algo._behaviour_step(data)
    a = [data.actions[:, i, :d] for i, d in enumerate(SPEC.action_dims)]
    assert seen[0] is None
    torch.testing.assert_close(seen[1], a[1])
    torch.testing.assert_close(seen[2], torch.cat([a[1], a[2]], dim=-1))


def test_agent_order_is_configurable_and_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    for order in [(0, 1, 2), (2, 1, 0), (1, 0, 2)]:
        algo = make(agent_order=order)
        updated: list[int] = []
        original = algo.surrogate_loss

        def spy(k, *args, algo=algo, original=original):
            updated.append(algo.units[k].agents[0])
            return original(k, *args)

        monkeypatch.setattr(algo, "surrogate_loss", spy)
        algo.update(batch())
        assert tuple(updated) == order and algo.order == order
        assert [u.prefix for u in algo.units] == [tuple(order[:k]) for k in range(3)]
    with pytest.raises(UserError, match="permutation of 0..2"):
        make(agent_order=(0, 0, 1))


def test_execution_is_decentralised() -> None:
    algo = make()
    obs = batch().obs.numpy()
    base = algo.act(obs, explore=False)
    changed = obs.copy()
    changed[:, 1] += 5.0  # only agent 1's observation changes
    out = algo.act(changed, explore=False)
    assert out.shape == (32, 3, 2) and np.all(out[:, 1, 1:] == 0)  # padding stays zero
    np.testing.assert_array_equal(out[:, [0, 2]], base[:, [0, 2]])
    assert not np.allclose(out[:, 1], base[:, 1])


# -- the surrogate gradient (Eq. 6, 19-20) ------------------------------------------------
def gaussian_eps(sde: VPSDE, mean: torch.Tensor, std: float):
    """Exact eps*(x, t) = -sigma_t grad log mu_t(x) for mu = N(mean, std^2 I) under the VP SDE."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (v.unsqueeze(-1) for v in sde.alpha_sigma(t))
        return sigma * (x - alpha * mean) / (alpha**2 * std**2 + sigma**2)

    return eps


def score_weight(sde: VPSDE, weighting: str, std: float, t_range: tuple[float, float]) -> float:
    """c with E_{t,z}[w(t) eps*(alpha_t a + sigma_t z, t)] = c (a - mean) = -c std^2 grad log mu(a)."""
    t = torch.linspace(*t_range, 20001, dtype=torch.float64)
    alpha, sigma = VPSDE(float(sde.b0), float(sde.b1)).to(torch.float64).alpha_sigma(t)
    w = sigma**2 if weighting == "vds" else alpha / sigma
    return float((w * sigma * alpha / (alpha**2 * std**2 + sigma**2)).mean())


@pytest.mark.parametrize("surrogate, beta", [("srpo", 0.3), ("paper", 5.0)])
def test_surrogate_gradient_is_grad_q_plus_behaviour_score(
    surrogate: str, beta: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = EnvSpec("test2", "test", ("a", "b"), (3, 3), (2, 2), 4, 10, "shared")
    algo = make(spec=spec, beta=beta, surrogate=surrogate)
    weighting = algo.weighting
    mean, std = torch.tensor([0.5, -0.2]), 0.4
    monkeypatch.setattr(algo, "behaviour_denoiser", lambda k, cond, prefix: gaussian_eps(algo.sde, mean, std))
    torch.manual_seed(0)
    n = 200_000
    a = torch.tensor([-0.3, 0.6]).repeat(n, 1).requires_grad_(True)
    w = torch.tensor([1.0, 0.5])  # Q(a) = <w, a>: grad_a Q = w
    q_grad = w.repeat(n, 1)
    loss = algo.surrogate_loss(1, torch.zeros(n, 4), torch.zeros(n, 2), a, q_grad)
    (grad,) = torch.autograd.grad(loss * n, a)
    ascent = -grad.mean(0)  # the actor moves along -grad
    grad_log_mu = -(a[0].detach() - mean) / std**2
    c = score_weight(algo.sde, weighting, std, algo.t_range)
    if surrogate == "paper":  # beta in the paper's units: the score term is (1/beta) grad log mu_{t=0.02}
        assert algo.t_range == (0.02, 0.02) and 0.95 < c * std**2 <= 1.0  # (std^2 vs std^2 + sigma_0.02^2)
    expected = algo.beta * (w + (c * std**2 / algo.beta) * grad_log_mu)  # beta (grad Q + (1/beta_eff) grad log mu)
    cos = torch.nn.functional.cosine_similarity(ascent, expected, dim=0)
    assert cos > 0.999, (ascent, expected)
    torch.testing.assert_close(ascent, expected, rtol=0.03, atol=2e-3)
    for part in (w, grad_log_mu):  # neither term alone gives this direction
        assert torch.nn.functional.cosine_similarity(ascent, part, dim=0) < 0.95


# -- phases -------------------------------------------------------------------------------
def test_phases_are_written_and_loaded_instead_of_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make(phase_dir=str(tmp_path / "phases"))
    pretrain(first)
    assert first.counters["critic_steps"] == 3 and first.counters["behaviour_steps"] == 3
    assert sorted(p.name for p in (tmp_path / "phases").iterdir()) == ["behaviour.pt", "critic.pt"]
    phases = tmp_path / "phases"
    second = make(pretrained_critic=str(phases / "critic.pt"), pretrained_behaviour=str(phases))  # file or directory
    for name in ("_critic_step", "_behaviour_step"):
        monkeypatch.setattr(second, name, lambda b, name=name: pytest.fail(f"{name} ran for a loaded phase"))
    source = Source()
    pretrain(second, source)
    assert source.calls == 0 and second.counters["critic_steps"] == 0 and second.counters["behaviour_steps"] == 0
    for mine, theirs in ((second.critics, first.critics), (second.behaviour, first.behaviour)):
        for (key, x), (_, y) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            torch.testing.assert_close(x, y, msg=key)
    assert second.phase_sources["critic"].startswith("loaded from")

    # a run checkpoint (the runner saves state_dict() right after pretrain) is accepted too
    torch.save({"algorithm": first.state_dict()}, tmp_path / "checkpoint.pt")
    third = make(pretrained_critic=str(tmp_path / "checkpoint.pt"), pretrained_behaviour=str(tmp_path), critic_steps=0)
    pretrain(third)
    torch.testing.assert_close(third.behaviour.state_dict(), first.behaviour.state_dict())
    # only the critic is shared: one phase loaded, the other trained
    ctde = make(BRPOCTDE, pretrained_critic=str(tmp_path / "phases" / "critic.pt"))
    pretrain(ctde)
    assert ctde.counters == {"critic_steps": 0, "behaviour_steps": 3, "updates": 0}
    with pytest.raises(UserError, match="was built for"):
        pretrain(make(BRPOCTDE, pretrained_behaviour=str(tmp_path / "phases")))
    with pytest.raises(UserError, match="was built for"):
        pretrain(make(BRPOInd, pretrained_critic=str(tmp_path / "phases")))
    with pytest.raises(UserError, match="holds the 'critic' phase"):
        pretrain(make(pretrained_behaviour=str(tmp_path / "phases" / "critic.pt")))


def test_state_dict_round_trip_continues_identically() -> None:
    algo = make(actor_lr_decay_steps=10)
    pretrain(algo)
    algo.update(batch())
    clone = make(actor_lr_decay_steps=10)
    clone.load_state_dict(copy.deepcopy(algo.state_dict()))  # as through a checkpoint file
    assert clone.counters == algo.counters
    for x in (algo, clone):
        torch.manual_seed(5)
        x.update(batch(seed=2))
    obs = batch(seed=3).obs.numpy()
    np.testing.assert_array_equal(algo.act(obs, explore=False), clone.act(obs, explore=False))
    assert clone.actor_optims[0].param_groups[0]["lr"] == algo.actor_optims[0].param_groups[0]["lr"] < 1e-2


def test_wrong_state_width_names_the_fix() -> None:
    algo = make()
    wide = batch()
    wide.state = torch.zeros(32, 7)
    with pytest.raises(UserError, match=r"OMSD.state_dim = 7"):
        algo._critic_step(wide)
    assert make(state_dim=7).critics[0].cond_dim == 7


def test_iql_critic_fits_the_bandit_reward() -> None:
    algo = make(spec=BANDIT, critic_hidden=(32, 32), critic_lr=3e-3)
    data = make_bandit_dataset(20_000, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(400):
        algo._critic_step(data.sample(256, rng))
    grid = torch.tensor([[0.8, 0.8], [-0.8, -0.8], [0.5, 0.9], [-0.9, -0.6]])  # in the data's support
    with torch.no_grad():
        q = algo.critics[0].q(torch.ones(4, 1), grid).mean(0)
    torch.testing.assert_close(q, grid[:, 0] * grid[:, 1], atol=0.1, rtol=0.0)


# -- Proposition 3.1 -----------------------------------------------------------------------
@pytest.mark.parametrize("n_modes", [2, 3])
def test_combinatorial_mode_shift_matches_brute_force(n_modes: int) -> None:
    for n in range(1, 9 if n_modes == 2 else 6):
        joint = coordinated_modes(n, n_modes)
        approx = factorised(joint)
        assert all(m == pytest.approx({k: 1 / n_modes for k in range(n_modes)}) for m in marginals(joint))
        assert len(approx) == n_modes**n and all(p == pytest.approx(n_modes**-n) for p in approx.values())
        assert tv_distance(joint, approx) == pytest.approx(mode_shift_tv(n, n_modes), abs=1e-12)
    assert mode_shift_tv(1) == 0.0 and mode_shift_tv(2) == 0.5 and mode_shift_tv(3) == 0.75
    assert mode_shift_tv(30) == pytest.approx(1.0, abs=1e-8)


def test_mode_shift_by_sampling() -> None:
    """Monte Carlo: draw from pi*, factorise the empirical marginals, measure TV on the cube."""
    rng = np.random.default_rng(0)
    n = 4
    joint = (rng.integers(0, 2, size=200_000)[:, None] * np.ones(n, dtype=np.int64))
    counts: dict[tuple[int, ...], float] = {}
    for row, c in zip(*np.unique(joint, axis=0, return_counts=True)):
        counts[tuple(int(v) for v in row)] = c / len(joint)
    assert tv_distance(counts, factorised(counts)) == pytest.approx(1 - 2 ** (1 - n), abs=0.01)


# -- the bandit dataset ------------------------------------------------------------------
def test_bandit_dataset_is_reproducible_and_has_the_papers_mixture(tmp_path: Path) -> None:
    a = make_bandit_dataset(50_000, seed=3)
    b = make_bandit_dataset(50_000, seed=3)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.actions, make_bandit_dataset(50_000, seed=4).actions)
    act = a.actions[:, :, 0]
    np.testing.assert_array_equal(a.reward, act[:, 0] * act[:, 1])
    pos = act[:, 0] + act[:, 1] > 0  # the two modes never mix: both coordinates share the mode
    assert abs(pos.mean() - 0.5) < 0.01 and (np.sign(act[pos]) > 0).mean() > 0.99
    # the default stores the draws unclipped (the paper): ~25 % of coordinates beyond +-1, none on it
    beyond = 0.5 * (1 - math.erf(0.2 / 0.3 / math.sqrt(2)))  # P(|a_i| > 1) = P(z > 0.2 / 0.3) ~ 0.25
    assert abs((np.abs(act) > 1.0).mean() - beyond) < 0.01 and not np.any(np.abs(act) == 1.0)
    for k, centre in ((pos, 0.8), (~pos, -0.8)):  # each mode is N(centre, 0.3^2 I), isotropic
        np.testing.assert_allclose(act[k].mean(0), [centre, centre], atol=0.01)
        np.testing.assert_allclose(act[k].std(0), [0.3, 0.3], atol=0.01)
        assert abs(np.corrcoef(act[k][:, 0], act[k][:, 1])[0, 1]) < 0.02
    clipped = make_bandit_dataset(50_000, seed=3, boundary="clip").actions[:, :, 0]  # option: an env's clipping
    assert abs((np.abs(clipped) == 1.0).mean() - beyond) < 0.01 and np.all(np.abs(clipped) <= 1.0)
    resampled = make_bandit_dataset(20_000, seed=3, boundary="resample").actions
    assert np.all(np.abs(resampled) < 1.0)
    with pytest.raises(UserError, match="boundary"):
        make_bandit_dataset(10, boundary="wrap")
    out = write_bandit_dataset(tmp_path / "bandit", 1000, seed=7)
    back = load_dataset(out, spec=BANDIT)
    np.testing.assert_array_equal(back.actions, make_bandit_dataset(1000, seed=7).actions)
    prov = back.metadata["provenance"]
    assert prov["seed"] == 7 and prov["mixture"]["std"] == 0.3 and prov["boundary"] == "none"
    assert back.terminated.all() and (back.episodes.lengths == 1).all()


def test_make_bandit_cli(tmp_path: Path) -> None:
    from dmarl.cli import main

    assert main(["datasets", "make-bandit", "--out", str(tmp_path / "b"), "--size", "500", "--seed", "2"]) == 0
    np.testing.assert_array_equal(load_dataset(tmp_path / "b").actions, make_bandit_dataset(500, seed=2).actions)
    assert main(["datasets", "make-bandit", "--out", str(tmp_path / "b"), "--size", "500"]) == 2  # exists, no --force


# -- configs ------------------------------------------------------------------------------
EXPERIMENTS = sorted(Path(p).name for p in glob.glob(str(REPO / "gin/experiments/omsd_*.gin")) if "bandit" not in p)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_gins_parse_with_the_papers_values(name: str) -> None:
    import gin

    from dmarl.train import parse_settings

    settings = parse_settings([str(REPO / "gin/experiments" / name)], [])
    assert settings.algorithm == "omsd" and settings.dataset
    beta = gin.query_parameter("OMSD.beta")
    tables = {  # (Tables 8/10, 9/11): dataset -> beta
        "omar_simple_spread_expert": 0.001, "omar_simple_spread_random": 0.05, "omar_simple_tag_random": 0.5,
        "omar_simple_world_expert": 0.01, "omar_halfcheetah_2x3_medium_replay": 0.05,
    }
    key = name[len("omsd_"): -len(".gin")]
    if key in tables:
        assert beta == tables[key]
    if "omiga" in name:  # evaluated on the legacy OMIGA task its data were recorded in (no global-obs mode)
        assert settings.task.startswith("omiga/") and not settings.global_obs


def test_bandit_benchmark_declares_all_methods_over_five_seeds() -> None:
    from dmarl.bench.spec import expand, load_benchmark

    cells = expand(load_benchmark(REPO / "gin/benchmarks/omsd_bandit.gin"))
    table1 = [c for c in cells if c.comparison == "table1"]
    assert {c.algorithm for c in table1} == {"omsd", "omsd_order_1_0", "brpo_ind", "brpo_ctde", "brpo_jal"}
    assert sorted({c.seed for c in table1}) == [0, 1, 2, 3, 4]
    assert all("run.dataset = 'toy/omsd_bandit'" in c.bindings for c in cells)  # generated, boundary checked
    assert {c.algorithm for c in cells if c.comparison == "srpo"} == {
        "omsd_srpo", "brpo_ind_srpo", "brpo_ctde_srpo", "brpo_jal_srpo"
    }


# -- issue 10: the paper's surrogate, behaviour time range, lr annealing --------------------
def mixture_eps(sde: VPSDE, dims: int = 1):
    """Exact eps*(x, t) = -sigma_t grad log mu_t(x) of the bandit mixture (closed form)."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = sde.alpha_sigma(t)
        a, s = alpha.double().numpy(), sigma.double().numpy()
        score = np.stack([mixture_score(xi, ai, si, dims=dims) for xi, ai, si in zip(x.double().numpy(), a, s)])
        return torch.as_tensor(-s[:, None] * score, dtype=x.dtype)

    return eps


def test_mixture_score_is_the_gradient_of_the_diffused_log_density() -> None:
    alpha, sigma, h = 0.9, 0.3, 1e-5
    var = alpha**2 * STD**2 + sigma**2

    def log_density(x: np.ndarray) -> np.ndarray:  # equal mixture of N(alpha m 1, var I), brute force
        terms = [np.exp(-((x - alpha * m) ** 2).sum(-1) / (2 * var)) for m in MODES]
        return np.log(sum(terms) / len(terms))

    x = np.random.default_rng(0).uniform(-1.5, 1.5, (50, 2))
    numeric = np.stack([(log_density(x + h * e) - log_density(x - h * e)) / (2 * h) for e in np.eye(2)], -1)
    np.testing.assert_allclose(mixture_score(x, alpha, sigma, dims=2), numeric, rtol=1e-5, atol=1e-6)
    # one agent's marginal: the same closed form in one dimension
    log_1d = lambda v: np.log(sum(np.exp(-((v - alpha * m) ** 2) / (2 * var)) for m in MODES))  # noqa: E731
    numeric_1d = (log_1d(x[:, 0] + h) - log_1d(x[:, 0] - h)) / (2 * h)
    np.testing.assert_allclose(mixture_score(x[:, :1], alpha, sigma)[:, 0], numeric_1d, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("surrogate, towards_mode", [("paper", True), ("srpo", False)])
def test_paper_surrogate_is_mode_seeking_on_the_bimodal_marginal(surrogate: str, towards_mode: bool) -> None:
    """Between the modes (a = 0.3, the + side) with no Q gradient, the paper's score at t = 0.02
    moves the actor to the nearest mode 0.8; SRPO's sigma_t^2 average over U(0.02, 0.98) is
    dominated by large t, where the marginal is one blob around 0, and pulls to the trough."""
    algo = make(BRPOCTDE, spec=BANDIT, surrogate=surrogate)
    algo.behaviour_denoiser = lambda k, cond, prefix: mixture_eps(algo.sde)
    torch.manual_seed(0)
    n = 100_000
    a = torch.full((n, 1), 0.3, requires_grad=True)
    loss = algo.surrogate_loss(0, torch.ones(n, 1), None, a, torch.zeros(n, 1))
    (grad,) = torch.autograd.grad(loss * n, a)
    ascent = -grad.mean().item()
    assert (ascent > 0) == towards_mode, ascent
    if towards_mode:  # the paper's units: the step is the score itself, ~ -(0.3 - 0.8) / 0.3^2
        assert ascent == pytest.approx(float(mixture_score(np.array([0.3]), *_alpha_sigma(algo, 0.02))[0]), rel=0.05)


def _alpha_sigma(algo, t: float) -> tuple[float, float]:
    alpha, sigma = algo.sde.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(alpha), float(sigma)


def test_defaults_are_the_papers_reading_and_readings_are_named() -> None:
    algo = make()
    assert (algo.surrogate, algo.weighting, algo.t_range) == ("paper", "score", (0.02, 0.02))
    assert algo.behaviour_t_range == (0.02, 0.98)
    srpo = make(surrogate="srpo")
    assert (srpo.weighting, srpo.t_range) == ("vds", (0.02, 0.98))
    assert make(surrogate="srpo", t_range=(0.1, 0.5)).t_range == (0.1, 0.5)  # each part overridable
    with pytest.raises(UserError, match="OMSD.surrogate must be one of"):
        make(surrogate="sprO")
    with pytest.raises(UserError, match="OMSD.behaviour_t_range"):
        make(behaviour_t_range=(0.5, 0.2))


def test_behaviour_models_draw_t_over_their_own_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eq. 18 is trained over behaviour_t_range (App. D.5: U(0.02, 0.98)) even though the
    surrogate reads the score at t = 0.02 only (before the fix both read ``t_range``)."""
    import dmarl.algorithms.score_regularized as sr

    seen: dict[str, list] = {"behaviour": [], "surrogate": []}
    original_dsm, original_srpo = sr.denoising_loss, sr.srpo_loss

    def spy_dsm(model, sde, a0, *, t):
        seen["behaviour"].append(t.detach().clone())
        return original_dsm(model, sde, a0, t=t)

    def spy_srpo(*args, t_range, **kwargs):
        seen["surrogate"].append(tuple(t_range))
        return original_srpo(*args, t_range=t_range, **kwargs)

    monkeypatch.setattr(sr, "denoising_loss", spy_dsm)
    monkeypatch.setattr(sr, "srpo_loss", spy_srpo)
    algo = make(behaviour_steps=20, pretrain_batch_size=256)
    pretrain(algo)
    algo.update(batch())
    t = torch.cat(seen["behaviour"])
    assert t.min() >= 0.02 and t.max() <= 0.98 and t.min() < 0.1 and t.max() > 0.9 and t.std() > 0.2
    assert seen["surrogate"] and all(r == (0.02, 0.02) for r in seen["surrogate"])
    seen["behaviour"].clear()
    pretrain(make(behaviour_t_range=(0.3, 0.4), behaviour_steps=5))
    t = torch.cat(seen["behaviour"])
    assert t.min() >= 0.3 and t.max() <= 0.4


def test_actor_lr_is_cosine_annealed_over_the_runs_updates() -> None:
    algo = make()  # actor_lr_decay_steps = None: the horizon is the run's total updates
    pretrain(algo)
    algo.plan_updates(4)  # what the offline runner announces before phase 3
    lrs = []
    for _ in range(5):
        algo.update(batch())
        lrs.append(algo.actor_optims[0].param_groups[0]["lr"])
    base = TINY["actor_lr"]
    np.testing.assert_allclose(lrs, [base * 0.5 * (1 + math.cos(math.pi * min(k, 4) / 4)) for k in range(1, 6)],
                               atol=1e-12)
    constant = make(actor_lr_decay_steps=0)
    pretrain(constant)
    constant.plan_updates(4)
    for _ in range(3):
        constant.update(batch())
    assert constant.actor_optims[0].param_groups[0]["lr"] == base
    with pytest.raises(UserError, match="actor_lr_decay_steps"):
        make(actor_lr_decay_steps=-1)


def test_behaviour_lr_is_annealed_over_its_phase_and_critic_lr_is_fixed() -> None:
    algo = make(behaviour_steps=6, behaviour_lr=1e-3)
    pretrain(algo)
    assert algo.behaviour_optim.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert algo.q_optims[0].param_groups[0]["lr"] == 3e-4
    fixed = make(behaviour_steps=6, behaviour_lr=1e-3, behaviour_lr_anneal=False)
    pretrain(fixed)
    assert fixed.behaviour_optim.param_groups[0]["lr"] == 1e-3


def test_offline_runner_announces_its_updates() -> None:
    from dmarl.runners.offline import OfflineRunner

    seen = []

    class Algo:
        def plan_updates(self, n: int) -> None:
            seen.append(n)

        def update(self, batch) -> dict[str, float]:
            return {}

    class Data:
        def subset(self, fraction, seed):
            return self

    runner = OfflineRunner(total_updates=0, eval_interval=1, log_interval=1, checkpoint_interval=1)
    runner.batch_source = lambda dataset: Source(BANDIT)  # type: ignore[method-assign]
    runner.evaluation = lambda *a, **k: {}  # type: ignore[method-assign]
    runner.run(Algo(), Data(), None, seed=0, device=torch.device("cpu"), log=lambda m, s: None,
               save_checkpoint=lambda state: None)
    assert seen == [0]


# -- issue 10 item 9: the behaviour models fit the bandit's score at the CPU budget ---------
def bandit_cpu_budget(cls: str) -> dict[str, object]:
    """The behaviour-model budget of gin/experiments/omsd_bandit_cpu.gin for class ``cls``."""
    import gin

    from dmarl.train import parse_settings

    gins = ("gin/algorithms/omsd.gin", "gin/tasks/toy_bandit.gin", "gin/experiments/omsd_bandit_cpu.gin")
    parse_settings([str(REPO / g) for g in gins], ["run.dataset = 'toy/omsd_bandit'"])
    keys = ("behaviour_hidden", "time_dim", "behaviour_steps", "behaviour_lr", "pretrain_batch_size")
    def value(key: str) -> object:
        v = gin.query_parameter(key)
        return value(f"{str(v)[1:]}/macro.value") if str(v).startswith("%") else v

    return {k: value(f"{cls}.{k}") for k in keys}


@pytest.mark.slow
def test_learned_bandit_scores_at_t002_match_the_closed_form() -> None:
    """OMSD's behaviour models trained with the bandit CPU budget on the generated dataset:
    agent 0's marginal score and agent 1's conditional score given a0 = 0.8, read at t = 0.02
    as -eps / sigma (what the surrogate uses), against the closed form of the diffused mixture.
    The old budget (batch 256, constant lr 3e-4) learned a unimodal marginal here."""
    from dmarl.data.offline import make_sampler

    budget = bandit_cpu_budget("OMSD")
    torch.manual_seed(0)  # before the networks are built: their initialisation is part of the fit
    algo = OMSD(BANDIT, torch.device("cpu"), critic_steps=0, **budget)
    source = make_sampler(make_bandit_dataset(200_000, seed=0), "uniform")
    pretrain(algo, source)
    alpha, sigma = _alpha_sigma(algo, 0.02)
    x = torch.linspace(-1.1, 1.1, 45)[:, None]
    t = torch.full((45,), 0.02)
    with torch.no_grad():
        marginal = -algo.behaviour_denoiser(0, torch.ones(45, 1), None)(x, t)[:, 0].numpy() / sigma
        conditional = -algo.behaviour_denoiser(1, torch.ones(45, 1), torch.full((45, 1), 0.8))(x, t)[:, 0].numpy() / sigma
    xs = x[:, 0].numpy()
    true_marginal = mixture_score(xs[:, None], alpha, sigma)[:, 0]
    # given a0 = 0.8 the posterior on the modes is ~(1, 1e-6): agent 1's law is the + mode
    true_conditional = -(xs - alpha * 0.8) / (alpha**2 * STD**2 + sigma**2)
    # inside the action box, away from the trough (slope ~60 at 0, where any smooth fit is least
    # exact); outside the box (|a| > 1) the data thin out and the fit over-estimates the flanks
    away = (np.abs(xs) >= 0.3) & (np.abs(xs) <= 1.0)
    rel = np.abs(marginal - true_marginal)[away].mean() / np.abs(true_marginal[away]).mean()
    # measured 0.35 (seed 0, 1 or 2 threads; unseeded initialisations gave 0.21-0.53): a bimodal
    # fit of the right shape, not an exact one; the old budget learned a unimodal score (> 1)
    assert rel < 0.6, (rel, np.round(np.c_[xs, true_marginal, marginal], 2))
    # bimodal: the sign agrees wherever the score is clear, away from the trough (a smooth fit
    # crosses zero near, not exactly at, 0); a unimodal fit points the wrong way on 0.3 <= |a| < 0.8
    strong = (np.abs(true_marginal) > 1.5) & away
    assert np.all(np.sign(marginal[strong]) == np.sign(true_marginal[strong]))
    rel = np.abs(conditional - true_conditional).mean() / np.abs(true_conditional).mean()
    assert rel < 0.5, (rel, np.round(np.c_[xs, true_conditional, conditional], 2))


def _all_parameters(algo) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for m in (algo.critics, algo.behaviour, algo.actors) for p in m.parameters()])


@pytest.mark.parametrize("cls", [OMSD, BRPOCTDE])
def test_adam_kernels_follow_one_update_rule(cls: type) -> None:
    """'fused' (the default) and torch's 'for-loop' Adam give the same pretraining and actor
    updates up to float32 rounding; a bad kernel name is one message naming the field."""
    assert make(cls).actor_optims[0].defaults["fused"] is True
    assert not make(cls, adam_implementation="for-loop").behaviour_optim.defaults["fused"]
    initial = _all_parameters(make(cls))
    runs = {}
    for impl in ("fused", "for-loop"):
        algo = make(cls, adam_implementation=impl)
        pretrain(algo)
        torch.manual_seed(5)
        algo.update(batch(seed=2))
        runs[impl] = _all_parameters(algo)
    assert (runs["fused"] - initial).abs().max() > 1e-3  # the steps moved the networks
    assert torch.allclose(runs["fused"], runs["for-loop"], rtol=0, atol=1e-5)
    with pytest.raises(UserError, match=rf"{cls.__name__}.adam_implementation = 'sgd'"):
        make(cls, adam_implementation="sgd")
