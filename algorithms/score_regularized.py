"""Score-regularised offline MARL: the machinery shared by OMSD and its BRPO ablations.

Paper: "Offline Multi-Agent Reinforcement Learning via Sequential Score Decomposition"
(OMSD; ../shared/papers/004_c62e3c38425d84c9.txt, restated in ../shared/docs/algorithms.md).
One class, :class:`ScoreRegularizedMARL`, runs the three phases of Alg. 1 / App. H; the
variants differ only in three structural choices, fixed by each registered subclass:

=============  ====================================  ===========================  ==============
variant        critic (phase 1)                      behaviour models (phase 2)   actors (phase 3)
=============  ====================================  ===========================  ==============
OMSD           central Q(s, a) (App. H.2)            mu_i(a_i | s, a^{<i}) (Eq.18)  Dirac pi_i(o_i)
BRPO-CTDE      central Q(s, a)                       mu_i(a_i | s)                Dirac pi_i(o_i)
BRPO-IND       per agent Q_i(o_i, a_i) (Eq. 7)       mu_i(a_i | o_i)              Dirac pi_i(o_i)
BRPO-JAL       central Q(s, a)                       mu(a | s), joint             joint pi(o_1..o_N)
=============  ====================================  ===========================  ==============

Equation map (paper 004)
- App. H.2 (IQL critic: L_V = E[L_2^tau(min_j Qhat_j(s, a) - V(s))], L_Q = E[(r + gamma
  (1 - term) V(s') - Q_j(s, a))^2], Polyak targets): ``IQLCritic``, ``iql_step`` ->
  `dmarl.critics.iql` (moved there to be shared with the IQL baseline).
- Eq. 18 (per-agent conditional denoising loss, VP SDE, t ~ U(0.02, 0.98) = ``behaviour_t_range``
  (App. D.5 / H.3; its own field, independent of the surrogate's times), prefix actions a^{<i}
  from the dataset): ``ScoreRegularizedMARL._behaviour_step`` -> `dmarl.diffusion.denoising_loss`
  on `ScoreMLP(..., prefix_dim=...)`; lr cosine-annealed over the phase (``_phase_scheduler``).
- Sequential decomposition mu(a | s) = prod_i mu_i(a_i | s, a^{<i}) (Sec. 3.2) in a
  configurable agent order: ``ScoreRegularizedMARL.units`` (``Unit.prefix``).
- Eq. 5-6 / Alg. 1 lines 11-15 (agents updated in order; agent i's prefix actions come from
  the *just-updated* actors of the agents before it, its suffix from the current actors):
  ``ScoreRegularizedMARL._actor_updates``.
- Eq. 6 / 19 / 20 (surrogate E_t[w(t) <sg(eps_psi_i(alpha_t a_i + sigma_t z, t | s, a^{<i})), a_i>]
  - beta <sg(grad_{a_i} Q(s, a)), a_i>): ``ScoreRegularizedMARL.surrogate_loss`` ->
  `dmarl.diffusion.losses.srpo_loss`, with grad_{a_i} Q from ``_q_guidance`` via
  `dmarl.diffusion.action_gradient`. Default ``surrogate = 'paper'``: Eq. 19's weighting
  w(t) = delta(t - 0.02) alpha_t / sigma_t, i.e. t = 0.02 only and w eps = -alpha_t grad log mu_t,
  the score -eps / sigma of Eq. 6 / 20 at t -> 0 (mode-seeking). The actor then descends
  -beta (grad_{a_i} Q + (1/beta) alpha_0.02 grad_{a_i} log mu_{i,0.02}), so ``beta`` is the
  paper's beta (Eq. 6: grad Q + (1/beta) grad log mu) up to alpha_0.02 = 0.997 and the
  t = 0.02 smoothing; it is relative to the Q scale (the bandit's Q lies in [-1, 1]).
  ``surrogate = 'srpo'``: SRPO's code, w(t) = sigma_t^2 averaged over t ~ U(0.02, 0.98); the score
  term then carries a positive t-average weight (beta not in the paper's units) and, being
  dominated by large t where a multimodal density is one blob, pulls towards the bulk of mu
  (on the bandit's marginal: the trough between the modes). ``weighting`` / ``t_range``
  override either reading's parts. See ``tests/test_omsd.py``.
- Actor lr: cosine-annealed to 0 over the run's total updates (App. D.3 "annealing AdamW";
  SRPO's CosineAnnealingLR): ``actor_lr_decay_steps = None`` (the horizon announced by the
  offline runner through ``plan_updates``), a positive count, or 0 (constant). Adam, not AdamW.
- Eq. 7 (BRPO-IND), Eq. 8 / Prop. F.2 (BRPO-CTDE, marginal scores), App. D.5 (BRPO-JAL joint
  diffusion model): the same loop with other ``Unit`` layouts (``algorithms/baselines/brpo.py``).

Phases and reuse. ``pretrain`` (called once by the offline runner) trains the critic for
``critic_steps`` and the behaviour models for ``behaviour_steps`` on dataset batches of
``pretrain_batch_size``; ``update`` (the runner's loop) is phase 3. A phase whose file is
given in ``pretrained_critic`` / ``pretrained_behaviour`` is loaded and not retrained (the
path may be a phase file written here, a run's ``checkpoint.pt`` or a run / phase directory
holding one). Each trained phase is written to ``phase_dir`` (``critic.pt``,
``behaviour.pt``) when set, and is always part of ``state_dict`` (hence of the run's
checkpoint, written by the runner right after ``pretrain``).

Readings of ambiguities (configurable)
- Q guidance: mean of the two target twins (SRPO's code; ``guidance_q = 'min'`` for the
  clipped double-Q); the critic is frozen in phase 3.
- Surrogate: the paper's Eq. 6 / 19 / 20 (score at t = 0.02, ``surrogate = 'paper'``) by
  default, SRPO's code as ``surrogate = 'srpo'`` (equation map above). The behaviour models are
  trained over ``behaviour_t_range`` in both cases.
- The IQL "temperature" of Tables 6-7 only weights IQL's AWR policy extraction, which OMSD
  does not use (its actors follow Eq. 6): ``iql_temperature`` is kept for provenance only.
- BRPO-IND conditions its critic and behaviour model on the agent's own observation o_i
  (independent learning sees no global state); the paper writes s (identical on the bandit).
- BRPO-CTDE uses the same sequential Q-gradient update as OMSD, so the two differ only in the
  score decomposition (marginal vs sequential), the ablation of Sec. 4.3.
- BRPO-JAL's joint actor maps the concatenated observations to the joint action
  (centralised execution, as the paper's "joint action learning").
- Behaviour networks: ``ScoreMLP`` (MLP with time features; the paper's 2-block residual
  U-Net of width 512 is approximated by ``behaviour_hidden = (512, 512)``, ReLU per Table 5).
- Datasets whose stored state differs in width from the task's (OMIGA stores agent 0's
  normalised global observation) need ``state_dim`` bound to the stored width.
- Adam kernel (speed only): ``adam_implementation`` (`dmarl.nn.optim.make_adam`), default
  ``'fused'``: on the bandit at CPU scale (one thread, 2026-12-02) the critic step is ~11 %, the
  behaviour step ~22 % and the actor update ~20 % faster than torch's default ``'for-loop'``
  kernel; it differs from it by float32 rounding (~1 ulp per step), so runs differ from those
  made before in the last digits. ``'for-loop'`` reproduces those bit for bit.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from dmarl.algorithms.multiagent import AgentSlices
from dmarl.algorithms.state import load_state, save_state
from dmarl.critics.iql import IQLCritic, iql_step
from dmarl.data.batch import Batch
from dmarl.diffusion.losses import SRPO_WEIGHTINGS, action_gradient, denoising_loss, srpo_loss
from dmarl.diffusion.schedules import VPSDE
from dmarl.diffusion.score_networks import ScoreMLP
from dmarl.envs.base import EnvSpec
from dmarl.errors import NonFiniteLossError, UserError
from dmarl.nn.deterministic import DeterministicActor
from dmarl.nn.optim import ADAM_BETAS, make_adam  # torch's default betas (the paper gives none)

CRITIC_KINDS = ("central", "independent")
BEHAVIOUR_KINDS = ("sequential", "marginal", "joint")
PHASE_FILES = {"critic": "critic.pt", "behaviour": "behaviour.pt"}
PHASE_FORMAT = "dmarl-phase"


# -- the structure of a variant -----------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One actor and its behaviour model: the agents whose actions it outputs, the agents
    whose (dataset / just-updated) actions condition its behaviour model, and its critic."""

    agents: tuple[int, ...]
    prefix: tuple[int, ...]
    critic: int


def build_units(n_agents: int, behaviour: str, critic: str, order: Sequence[int]) -> list[Unit]:
    """Units in update order. ``sequential``: agent order[k] is conditioned on order[:k]."""
    if behaviour == "joint":
        return [Unit(tuple(range(n_agents)), (), 0)]
    units = []
    for k, i in enumerate(order):
        prefix = tuple(order[:k]) if behaviour == "sequential" else ()
        units.append(Unit((i,), prefix, i if critic == "independent" else 0))
    return units


def check_order(order: Sequence[int] | None, n_agents: int) -> tuple[int, ...]:
    if order is None:
        return tuple(range(n_agents))
    order = tuple(int(i) for i in order)
    if sorted(order) != list(range(n_agents)):
        raise UserError(f"agent_order must be a permutation of 0..{n_agents - 1}, got {order}")
    return order


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # never unpickle a foreign file
        raise UserError(f"{path}: could not be read safely as a torch file: {err}") from None


def read_phase(path: str | Path, phase: str) -> dict[str, Any]:
    """The saved ``phase`` ('critic' or 'behaviour') from a phase file, a run checkpoint, or
    a directory holding either: ``{"layout": ..., "state": ...}`` (layout None if unknown)."""
    path = Path(path)
    if path.is_dir():
        for name in (PHASE_FILES[phase], "checkpoint.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserError(f"pretrained {phase}: {path} holds neither {PHASE_FILES[phase]} nor checkpoint.pt")
    if not path.is_file():
        raise UserError(f"pretrained {phase}: no such file {path}")
    data = _torch_load(path)
    if isinstance(data, dict) and data.get("format") == PHASE_FORMAT:
        if data.get("phase") != phase:
            raise UserError(f"pretrained {phase}: {path} holds the {data.get('phase')!r} phase")
        return {"layout": data.get("layout"), "state": data["state"], "source": str(path)}
    algorithm = data.get("algorithm") if isinstance(data, dict) else None
    phases = algorithm.get("phases") if isinstance(algorithm, dict) else None
    if isinstance(phases, dict) and phase in phases:
        saved = phases[phase]
        return {"layout": saved.get("layout"), "state": saved["state"], "source": str(path)}
    raise UserError(f"pretrained {phase}: {path} is neither a dmarl phase file nor a checkpoint holding one")


# -- the algorithm ------------------------------------------------------------------------
class ScoreRegularizedMARL:
    """Critic + behaviour diffusion models + Dirac actors (module docstring).

    Subclasses fix ``CRITIC`` (central | independent), ``BEHAVIOUR`` (sequential | marginal |
    joint) and ``NAME``; everything else is a hyperparameter.
    """

    NAME: ClassVar[str] = "score_regularized"
    CRITIC: ClassVar[str] = "central"
    BEHAVIOUR: ClassVar[str] = "sequential"
    # checkpointed besides "phases" (the critic and behaviour networks with their layouts)
    checkpointed: ClassVar[tuple[str, ...]] = (
        "v_optims", "q_optims", "behaviour_optim", "actors", "actor_optims", "actor_schedulers", "counters",
        "phase_sources",
    )

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        beta: float = 0.05,
        gamma: float = 0.99,
        polyak: float = 0.005,
        iql_tau: float = 0.7,
        iql_temperature: float = 10.0,
        critic_lr: float = 3e-4,
        critic_hidden: tuple[int, ...] = (256, 256),
        critic_steps: int = 2_000_000,
        behaviour_lr: float = 3e-4,
        behaviour_lr_anneal: bool = True,
        behaviour_hidden: tuple[int, ...] = (512, 512),
        behaviour_activation: str = "relu",
        time_dim: int = 64,
        time_embedding_kind: str = "fourier",
        behaviour_steps: int = 2_000_000,
        sde_b0: float = 0.1,
        sde_b1: float = 20.0,
        behaviour_t_range: tuple[float, float] = (0.02, 0.98),
        surrogate: str = "paper",
        weighting: str | None = None,
        t_range: tuple[float, float] | None = None,
        actor_lr: float = 3e-4,
        actor_hidden: tuple[int, ...] = (256, 256),
        actor_lr_decay_steps: int | None = None,
        agent_order: tuple[int, ...] | None = None,
        sequential: bool = True,
        guidance_q: str = "mean",
        subtract_noise: bool = False,
        pretrain_batch_size: int = 512,
        pretrain_log_interval: int = 1000,
        pretrained_critic: str | None = None,
        pretrained_behaviour: str | None = None,
        phase_dir: str | None = None,
        state_dim: int | None = None,
        adam_implementation: str = "fused",
    ) -> None:
        if self.CRITIC not in CRITIC_KINDS or self.BEHAVIOUR not in BEHAVIOUR_KINDS:
            raise TypeError(f"{type(self).__name__}: bad CRITIC/BEHAVIOUR class attributes")
        if guidance_q not in ("mean", "min"):
            raise UserError(f"{type(self).__name__}.guidance_q must be 'mean' or 'min', got {guidance_q!r}")
        weighting, t_range = resolve_surrogate(type(self).__name__, surrogate, weighting, t_range)
        check_t_range(f"{type(self).__name__}.behaviour_t_range", behaviour_t_range)
        if actor_lr_decay_steps is not None and actor_lr_decay_steps < 0:
            raise UserError(
                f"{type(self).__name__}.actor_lr_decay_steps must be None (the run's total updates), 0 (constant lr) "
                f"or a positive step count, got {actor_lr_decay_steps}"
            )
        self.spec, self.device = spec, device
        self.slices = AgentSlices(spec)
        self.beta, self.gamma, self.polyak = beta, gamma, polyak
        self.iql_tau, self.iql_temperature = iql_tau, iql_temperature
        self.critic_steps, self.behaviour_steps = critic_steps, behaviour_steps
        self.t_range, self.guidance_q, self.subtract_noise = tuple(t_range), guidance_q, subtract_noise
        self.behaviour_t_range = tuple(behaviour_t_range)
        self.behaviour_lr_anneal = behaviour_lr_anneal
        self.surrogate, self.weighting = surrogate, weighting
        self.actor_lr_decay_steps = actor_lr_decay_steps
        self.sequential = sequential
        self.pretrain_batch_size, self.pretrain_log_interval = pretrain_batch_size, pretrain_log_interval
        self.pretrained = {"critic": pretrained_critic, "behaviour": pretrained_behaviour}
        self.phase_dir = phase_dir
        self.state_dim = int(state_dim or spec.state_dim)
        self.order = check_order(agent_order, spec.n_agents)
        self.units = build_units(spec.n_agents, self.BEHAVIOUR, self.CRITIC, self.order)
        self.sde = VPSDE(sde_b0, sde_b1).to(device)
        dims = spec.action_dims

        # phase 1: one central critic on (s, joint a), or one per agent on (o_i, a_i)
        if self.CRITIC == "central":
            layout = [(self.state_dim, spec.joint_action_dim)]
        else:
            layout = [(spec.obs_dims[i], dims[i]) for i in range(spec.n_agents)]
        self.critics = nn.ModuleList(IQLCritic(x, a, critic_hidden) for x, a in layout).to(device)
        field = f"{type(self).__name__}.adam_implementation"

        def adam(params: Any, lr: float) -> torch.optim.Adam:
            return make_adam(params, lr, ADAM_BETAS, adam_implementation, field)

        self.v_optims = [adam(c.v.parameters(), critic_lr) for c in self.critics]
        self.q_optims = [adam(c.q.parameters(), critic_lr) for c in self.critics]

        # phase 2: one behaviour model per unit, indexed like self.units
        self.behaviour = nn.ModuleList(
            ScoreMLP(
                action_dim=self._width(u.agents), obs_dim=self._cond_dim(u), prefix_dim=self._width(u.prefix),
                hidden=behaviour_hidden, activation=behaviour_activation, time_dim=time_dim,
                time_embedding_kind=time_embedding_kind,
            )
            for u in self.units
        ).to(device)
        self.behaviour_optim = adam(self.behaviour.parameters(), behaviour_lr)

        # phase 3: one deterministic tanh actor per unit on its agents' own observations
        self.actors = nn.ModuleList(
            DeterministicActor(sum(spec.obs_dims[i] for i in u.agents), self._width(u.agents), actor_hidden)
            for u in self.units
        ).to(device)
        self.actor_optims = [adam(a.parameters(), actor_lr) for a in self.actors]
        self.actor_schedulers = [
            torch.optim.lr_scheduler.LambdaLR(o, lambda k: self._lr_factor(k)) for o in self.actor_optims
        ]
        self.counters = {"critic_steps": 0, "behaviour_steps": 0, "updates": 0}
        self.phase_sources = {"critic": "untrained", "behaviour": "untrained"}

    # -- layout helpers ---------------------------------------------------------------------
    def _width(self, agents: Sequence[int]) -> int:
        return sum(self.spec.action_dims[i] for i in agents)

    def _cond_dim(self, unit: Unit) -> int:
        """Behaviour-model condition: o_i for BRPO-IND, the global state otherwise."""
        return self.spec.obs_dims[unit.agents[0]] if self.CRITIC == "independent" else self.state_dim

    def unit_of(self, agent: int) -> int:
        """Index (in ``self.units`` / ``self.behaviour`` / ``self.actors``) of the unit acting for ``agent``."""
        return next(k for k, u in enumerate(self.units) if agent in u.agents)

    def _lr_factor(self, k: int) -> float:
        """Cosine annealing of the actor lr from 1 to 0 over ``_decay_steps`` updates (SRPO's
        CosineAnnealingLR, eta_min 0); constant when the horizon is 0. Read at each step, so
        a horizon announced later by ``plan_updates`` applies."""
        n = self._decay_steps
        return 1.0 if n <= 0 else 0.5 * (1.0 + math.cos(math.pi * min(k, n) / n))

    @property
    def _decay_steps(self) -> int:
        """The actor lr's annealing horizon: ``actor_lr_decay_steps``, or (None) the run's
        total updates once the runner announced them with ``plan_updates`` (constant before)."""
        if self.actor_lr_decay_steps is not None:
            return int(self.actor_lr_decay_steps)
        return int(getattr(self, "_planned_updates", 0))

    def plan_updates(self, total_updates: int) -> None:
        """Called by the offline runner before phase 3: the number of actor updates of the run
        (the horizon of the default cosine annealing, App. D.3 "annealing AdamW")."""
        self._planned_updates = int(total_updates)

    def _agent_actions(self, actions: Tensor) -> list[Tensor]:
        """Padded ``[B, N, A_max]`` -> per-agent true actions ``[B, A_i]``."""
        return [actions[..., i, :d] for i, d in enumerate(self.spec.action_dims)]

    def _cat(self, per_agent: Sequence[Tensor], agents: Sequence[int]) -> Tensor | None:
        return torch.cat([per_agent[i] for i in agents], dim=-1) if agents else None

    def _actor_input(self, obs: Tensor, unit: Unit) -> Tensor:
        return torch.cat([self.slices.obs(obs, i) for i in unit.agents], dim=-1)

    def _behaviour_cond(self, batch: Batch, unit: Unit) -> Tensor:
        if self.CRITIC == "independent":
            return self.slices.obs(batch.obs, unit.agents[0])
        return self._state(batch.state)

    def _state(self, state: Tensor) -> Tensor:
        if state.shape[-1] != self.state_dim:
            raise UserError(
                f"{type(self).__name__}: the data's state has width {state.shape[-1]} but the networks were built "
                f"for {self.state_dim} (the task's state); bind {type(self).__name__}.state_dim = {state.shape[-1]} "
                "for datasets that store another state (e.g. OMIGA's global observation)"
            )
        return state

    def _critic_inputs(
        self, k: int, batch: Batch, per_agent: Sequence[Tensor], *, next_: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(condition, action) of critic k for the given per-agent actions."""
        if self.CRITIC == "central":
            return self._state(batch.next_state if next_ else batch.state), torch.cat(list(per_agent), dim=-1)
        return self.slices.obs(batch.next_obs if next_ else batch.obs, k), per_agent[k]

    # -- acting (decentralised for per-agent units) ---------------------------------------
    def _act_all(self, obs: Tensor) -> list[Tensor]:
        """Every agent's action ``[B, A_i]`` from the current actors."""
        out: list[Tensor | None] = [None] * self.spec.n_agents
        for unit, actor in zip(self.units, self.actors):
            self._scatter(out, unit, actor(self._actor_input(obs, unit)))
        return out  # type: ignore[return-value]

    def _scatter(self, per_agent: list, unit: Unit, action: Tensor) -> None:
        start = 0
        for i in unit.agents:
            d = self.spec.action_dims[i]
            per_agent[i] = action[..., start : start + d]
            start += d

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        """Deterministic actions; agent i's actor sees only ``obs[:, i, :O_i]`` (BRPO-JAL's
        joint actor sees every agent's observation: centralised execution)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.slices.pad_actions(self._act_all(obs_t)).cpu().numpy()

    # -- phases 1 and 2 --------------------------------------------------------------------
    def pretrain(
        self,
        source: Any,
        *,
        rng: np.random.Generator,
        device: torch.device,
        log: Callable[[dict[str, float], int], None],
    ) -> None:
        """Alg. 1 lines 2-9: the critic, then the behaviour models (loaded instead when configured)."""
        for phase, steps, step_fn in (
            ("critic", self.critic_steps, self._critic_step),
            ("behaviour", self.behaviour_steps, self._behaviour_step),
        ):
            if self.pretrained[phase]:
                self.load_phase(phase, self.pretrained[phase])
                continue
            window: dict[str, list[float]] = {}
            scheduler = self._phase_scheduler(phase, steps)
            for step in range(1, steps + 1):
                metrics = step_fn(source.sample(self.pretrain_batch_size, rng, device))
                if scheduler is not None:
                    scheduler.step()
                for name, value in metrics.items():
                    if not math.isfinite(value):
                        raise NonFiniteLossError(f"{name} = {value} at {phase} pretraining step {step}")
                    window.setdefault(name, []).append(value)
                if step % self.pretrain_log_interval == 0 or step == steps:
                    log({k: float(np.mean(v)) for k, v in window.items()}, step)
                    window = {}
            self.phase_sources[phase] = f"trained ({steps} steps)"
            if self.phase_dir:
                self.save_phase(phase, Path(self.phase_dir) / PHASE_FILES[phase])

    def _phase_scheduler(self, phase: str, steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The behaviour models' lr: cosine-annealed to 0 over the phase (App. H: SRPO's
        "Annealing AdamW"; ``behaviour_lr_anneal = False``: constant). The critic's is fixed (App. D.3)."""
        if phase != "behaviour" or not self.behaviour_lr_anneal or steps <= 0:
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.behaviour_optim, T_max=steps, eta_min=0.0)

    def _critic_step(self, batch: Batch) -> dict[str, float]:
        """App. H.2 on a dataset batch, for every critic."""
        data = self._agent_actions(batch.actions)
        metrics: dict[str, list[float]] = {}
        for k, critic in enumerate(self.critics):
            x, a = self._critic_inputs(k, batch, data)
            next_x, _ = self._critic_inputs(k, batch, data, next_=True)
            out = iql_step(
                critic, self.v_optims[k], self.q_optims[k], x, a, batch.reward, batch.terminated, next_x,
                tau=self.iql_tau, gamma=self.gamma, polyak=self.polyak,
            )
            for name, value in out.items():
                metrics.setdefault(name, []).append(value)
        self.counters["critic_steps"] += 1
        return {f"pretrain/critic_{k}": float(np.mean(v)) for k, v in metrics.items()}

    def _behaviour_step(self, batch: Batch) -> dict[str, float]:
        """Eq. 18 for every unit at once (the models are independent: "in parallel")."""
        data = self._agent_actions(batch.actions)
        losses = []
        for unit, net in zip(self.units, self.behaviour):
            a0 = self._cat(data, unit.agents)
            t = self.sde.sample_t((a0.shape[0],), low=self.behaviour_t_range[0], high=self.behaviour_t_range[1])
            denoiser = net.conditioned(self._behaviour_cond(batch, unit), self._cat(data, unit.prefix))
            losses.append(denoising_loss(denoiser, self.sde, a0, t=t).mean())
        loss = torch.stack(losses).sum()
        self.behaviour_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.behaviour_optim.step()
        self.counters["behaviour_steps"] += 1
        return {"pretrain/behaviour_loss": loss.item() / len(losses)}

    # -- phase 3: actors (Eq. 5-6, 19-20) ----------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        metrics = self._actor_updates(batch)
        self.counters["updates"] += 1
        return metrics

    def behaviour_denoiser(self, k: int, cond: Tensor, prefix: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
        """Unit k's eps_psi(. , t | cond, prefix) (a seam the tests observe)."""
        return self.behaviour[k].conditioned(cond, prefix)

    def surrogate_loss(
        self, k: int, cond: Tensor, prefix: Tensor | None, action: Tensor, q_grad: Tensor
    ) -> Tensor:
        """Eq. 19-20 for unit k: the surrogate with the behaviour score of mu_k(. | cond, prefix)
        (``surrogate`` reading: 'paper' = the score at t = 0.02, 'srpo' = SRPO's average)."""
        return srpo_loss(
            self.behaviour_denoiser(k, cond, prefix), self.sde, action, q_grad, self.beta,
            weighting=self.weighting, t_range=self.t_range, subtract_noise=self.subtract_noise,
        )

    def _q_guidance(self, unit: Unit, batch: Batch, per_agent: list[Tensor]) -> Callable[[Tensor], Tensor]:
        """a_unit -> Q used for grad_{a_unit} Q: the other agents' actions fixed to ``per_agent``."""
        critic = self.critics[unit.critic]

        def q(action: Tensor) -> Tensor:
            joint = list(per_agent)
            self._scatter(joint, unit, action)
            x, a = self._critic_inputs(unit.critic, batch, joint)
            qs = critic.q_target(x, a)
            return qs.mean(0) if self.guidance_q == "mean" else qs.min(0).values

        return q

    def _actor_updates(self, batch: Batch) -> dict[str, float]:
        """Alg. 1 lines 12-15: units in order; with ``sequential`` each later unit sees the
        actions of the already-updated earlier actors (prefix for its behaviour model and the
        other agents' actions in Q), otherwise every unit sees the pre-step actions."""
        with torch.no_grad():
            current = self._act_all(batch.obs)
        losses, qs = [], []
        for k, (unit, actor, optim) in enumerate(zip(self.units, self.actors, self.actor_optims)):
            inp = self._actor_input(batch.obs, unit)
            action = actor(inp)
            q_fn = self._q_guidance(unit, batch, current)
            q_grad = action_gradient(q_fn, action)
            prefix = self._cat(current, unit.prefix)
            loss = self.surrogate_loss(k, self._behaviour_cond(batch, unit), prefix, action, q_grad)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            self.actor_schedulers[k].step()
            losses.append(loss.item())
            with torch.no_grad():
                qs.append(q_fn(action.detach()).mean().item())
                if self.sequential:
                    self._scatter(current, unit, actor(inp))
        return {"train/actor_loss": float(np.mean(losses)), "train/q_policy": float(np.mean(qs))}

    # -- phase files and checkpointing ---------------------------------------------------
    def _phase_layout(self, phase: str) -> dict[str, Any]:
        if phase == "critic":
            return {"kind": self.CRITIC, "inputs": [[c.cond_dim, c.action_dim] for c in self.critics]}
        return {
            "kind": self.BEHAVIOUR,
            "order": list(self.order) if self.BEHAVIOUR == "sequential" else None,
            "nets": [dict(net.config) for net in self.behaviour],
        }

    def _phase_state(self, phase: str) -> dict[str, Any]:
        if phase == "critic":
            return {"critics": self.critics.state_dict()}
        return {"behaviour": self.behaviour.state_dict()}

    def save_phase(self, phase: str, path: str | Path) -> Path:
        """Write one phase's networks (``torch.save`` of state dicts plus their layout)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": PHASE_FORMAT, "phase": phase, "algorithm": self.NAME,
            "layout": self._phase_layout(phase), "state": self._phase_state(phase),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    def load_phase(self, phase: str, path: str | Path) -> None:
        """Load a saved phase (see ``read_phase``); its layout must match this configuration."""
        saved = read_phase(path, phase)
        mine = _jsonable(self._phase_layout(phase))
        if saved["layout"] is not None and _jsonable(saved["layout"]) != mine:
            raise UserError(
                f"pretrained {phase} {saved['source']} was built for {saved['layout']}, this run needs {mine}"
            )
        try:
            if phase == "critic":
                self.critics.load_state_dict(saved["state"]["critics"])
            else:
                self.behaviour.load_state_dict(saved["state"]["behaviour"])
        except (KeyError, RuntimeError) as err:
            raise UserError(f"pretrained {phase} {saved['source']} does not fit this run's networks: {err}") from None
        self.phase_sources[phase] = f"loaded from {saved['source']}"

    def state_dict(self) -> dict[str, Any]:
        phases = {p: {"layout": self._phase_layout(p), "state": self._phase_state(p)} for p in PHASE_FILES}
        return {"phases": phases, **save_state(self, self.checkpointed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_state(self, state, self.checkpointed, handled=("phases",))
        self.critics.load_state_dict(state["phases"]["critic"]["state"]["critics"])
        self.behaviour.load_state_dict(state["phases"]["behaviour"]["state"]["behaviour"])

SURROGATES: dict[str, tuple[str, tuple[float, float]]] = {
    "paper": ("score", (0.02, 0.02)),  # Eq. 6 / 19 / 20: -eps / sigma at t -> 0 (t = 0.02), mode-seeking
    "srpo": ("vds", (0.02, 0.98)),  # SRPO's code: w(t) = sigma_t^2 averaged over t ~ U(0.02, 0.98)
}


def check_t_range(field: str, t_range: Sequence[float]) -> None:
    if len(t_range) != 2 or not 0.0 < t_range[0] <= t_range[1] <= 1.0:
        raise UserError(f"{field} must be a pair (low, high) with 0 < low <= high <= 1, got {tuple(t_range)}")


def resolve_surrogate(
    owner: str, surrogate: str, weighting: str | None, t_range: Sequence[float] | None
) -> tuple[str, tuple[float, float]]:
    """(weighting, t_range) of the surrogate: the named reading's, each overridable."""
    if surrogate not in SURROGATES:
        raise UserError(f"{owner}.surrogate must be one of {tuple(SURROGATES)}, got {surrogate!r}")
    default_w, default_t = SURROGATES[surrogate]
    weighting = default_w if weighting is None else weighting
    t_range = tuple(default_t if t_range is None else t_range)
    if weighting not in SRPO_WEIGHTINGS:
        raise UserError(f"{owner}.weighting must be one of {SRPO_WEIGHTINGS}, got {weighting!r}")
    check_t_range(f"{owner}.t_range", t_range)
    return weighting, (float(t_range[0]), float(t_range[1]))


def _jsonable(value: Any) -> Any:
    """Tuples -> lists (layouts compare equal after a torch save/load round trip)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
