"""OMSD — Offline MARL with Sequential Score Decomposition.

Paper: "Offline Multi-Agent Reinforcement Learning via Sequential Score Decomposition"
(../shared/papers/004_c62e3c38425d84c9.txt; restated in ../shared/docs/algorithms.md).
The three phases live in `dmarl.algorithms.score_regularized.ScoreRegularizedMARL`, shared
with the BRPO ablations (`dmarl.algorithms.baselines.brpo`); OMSD fixes a central critic and
sequential (prefix-conditioned) behaviour models.

Equation map
- Eq. 1 / Eq. 18 (denoising loss of agent i's conditional model eps_psi_i(a_t^i | s, a^{<i}, t),
  VP SDE, t ~ U(0.02, 0.98) = ``behaviour_t_range``): ``ScoreRegularizedMARL._behaviour_step`` ->
  `dmarl.diffusion.denoising_loss`; models are `dmarl.diffusion.ScoreMLP` with
  ``prefix_dim = sum of the action dims of the agents before i in `agent_order```.
- Eq. 2-3 / Lemma 2.1 (BRPO objective, reverse KL): realised by the surrogate below.
- Eq. 4 (per-agent objective with mu_i(. | s, a_{<i})) and the sequential decomposition
  mu(a | s) = prod_i mu_i(a_i | s, a_{<i}) (Sec. 3.2): ``build_units`` (unit prefixes).
- Eq. 5-6 (per-agent gradient grad_{a_i} Q^tot(s, a) + (1/beta) grad_{a_i} log mu_i(a_i | s, a_{<i}),
  prefix from the just-updated actors; Alg. 1 lines 11-15): ``ScoreRegularizedMARL._actor_updates``.
- Eq. 19-20 (surrogate; default ``surrogate = 'paper'``: w(t) = delta(t - 0.02) alpha_t / sigma_t,
  the score -eps / sigma at t -> 0 of Eq. 6 / 20, beta in the paper's units; SRPO's
  sigma_t^2-weighted average over U(0.02, 0.98) with ``surrogate = 'srpo'``):
  ``ScoreRegularizedMARL.surrogate_loss`` -> `dmarl.diffusion.losses.srpo_loss`,
  ``_q_guidance`` + `dmarl.diffusion.action_gradient` for grad_{a_i} Q.
- App. H.2 (IQL critic: expectile V, twin Q, Polyak targets): ``IQLCritic`` / ``iql_step`` ->
  `dmarl.critics.iql_value_loss`, `iql_q_loss`, `polyak_update`.
- Alg. 1 (phases: critic, behaviour models in parallel, sequential actor updates):
  ``ScoreRegularizedMARL.pretrain`` (phases 1-2, loadable from files: ``pretrained_critic``,
  ``pretrained_behaviour``; written to ``phase_dir``) and ``update`` (phase 3).
- Proposition 3.1 / Corollary 3.2 (combinatorial mode shift, TV = 1 - K^{1-n}):
  `dmarl.analysis.mode_shift`.
- Sec. 4.1 bandit and its dataset: `dmarl.envs.toy` (task ``toy/bandit``) and
  `dmarl.envs.toy_data.make_bandit_dataset` (unclipped mixture; its diffused score in closed
  form: `dmarl.envs.toy_data.mixture_score`).

Defaults are Table 5 (batch 512 via ``OfflineRunner.batch_size``, Adam 3e-4, gamma 0.99,
Polyak 0.005, 2 x 256 ReLU critic and Dirac actor, behaviour width 512 with a 64-d time
embedding; actor and behaviour lr cosine-annealed, App. D.3 / H); per-task beta and IQL tau are in gin/experiments/omsd_*.gin (Tables 6-11).
Execution is decentralised: agent i's actor sees only o_i; prefixes are used in training only.
The agent order (``agent_order``, default 0..N-1) fixes both the decomposition and the update
order; the paper reports insensitivity to it (App. D.7.4), which
gin/benchmarks/omsd_bandit.gin checks on the bandit with the reversed order.
"""
from __future__ import annotations

import gin

from dmarl.algorithms.score_regularized import ScoreRegularizedMARL
from dmarl.registry import register_algorithm


@register_algorithm("omsd", kind="offline", paper="OMSD: Sequential Score Decomposition (paper 004)")
@gin.configurable
class OMSD(ScoreRegularizedMARL):
    """Central IQL critic, prefix-conditioned behaviour models, sequential Dirac actors."""

    NAME = "omsd"
    CRITIC = "central"
    BEHAVIOUR = "sequential"
