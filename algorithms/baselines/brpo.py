"""BRPO-IND, BRPO-CTDE and BRPO-JAL — the multi-agent BRPO ablations of OMSD (paper 004, App. F).

Paper: "Offline Multi-Agent Reinforcement Learning via Sequential Score Decomposition"
(../shared/papers/004_c62e3c38425d84c9.txt, Sec. 4.1, 4.3, App. D.4-D.5, F, G.2-G.3).
All three run OMSD's pipeline (`dmarl.algorithms.score_regularized.ScoreRegularizedMARL`:
IQL critic, behaviour diffusion models, SRPO surrogate for Dirac actors) and change only
what is factorised:

- BRPO-IND (Prop. F.1, Eq. 7, Prop. G.2 / Eq. 9-13): per-agent IQL critics Q_i(o_i, a_i) on
  the team reward and marginal behaviour models mu_i(a_i | o_i); each agent follows
  grad_{a_i} Q_i + (1/beta) grad_{a_i} log mu_i. Independent learning: nothing global is used.
- BRPO-CTDE (Prop. F.2, Eq. 8, 14-17): the central critic Q^tot(s, a) and marginal
  behaviour models mu_i(a_i | s) (the factorisation mu(a | s) = prod_i mu_i(a_i | s) that
  Sec. 3.1 shows to be biased); actors updated in the same sequential order as OMSD, so the
  only difference to OMSD is the score decomposition.
- BRPO-JAL (joint action learning, App. D.4-D.5): the central critic, one joint behaviour
  model mu(a | s) and one joint actor pi(o_1, ..., o_N) -> a (centralised execution).

Equation -> function: Eq. 7/8 and 13/17 (gradients) -> ``ScoreRegularizedMARL._actor_updates``
and ``surrogate_loss`` (`dmarl.diffusion.srpo_loss`); Eq. 9 (surrogate) ->
``surrogate_loss``; App. D.4 critics -> ``iql_step``; App. D.5 behaviour models ->
``_behaviour_step``. Defaults and readings as OMSD's (gin/algorithms/brpo_*.gin), including
the surrogate (the paper's score at t = 0.02 by default, ``surrogate = 'srpo'`` for SRPO's).
"""
from __future__ import annotations

import gin

from dmarl.algorithms.score_regularized import ScoreRegularizedMARL
from dmarl.registry import register_algorithm

PAPER = "BRPO ablation of OMSD (paper 004, App. F)"


@register_algorithm("brpo_ind", kind="offline", paper=PAPER)
@gin.configurable
class BRPOInd(ScoreRegularizedMARL):
    """Per-agent critics and marginal behaviour models (independent learning)."""

    NAME = "brpo_ind"
    CRITIC = "independent"
    BEHAVIOUR = "marginal"


@register_algorithm("brpo_ctde", kind="offline", paper=PAPER)
@gin.configurable
class BRPOCTDE(ScoreRegularizedMARL):
    """Central critic, marginal behaviour models mu_i(a_i | s)."""

    NAME = "brpo_ctde"
    CRITIC = "central"
    BEHAVIOUR = "marginal"


@register_algorithm("brpo_jal", kind="offline", paper=PAPER)
@gin.configurable
class BRPOJAL(ScoreRegularizedMARL):
    """Central critic, joint behaviour model, joint actor (centralised execution)."""

    NAME = "brpo_jal"
    CRITIC = "central"
    BEHAVIOUR = "joint"
