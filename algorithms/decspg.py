"""DecSPG — Algorithm 1 of DDPL (paper 002, Sec. 3), tabular, for the Sec. 3.2 comparison of
"all policies" with Gaussian policies.

Paper 002 (../shared/papers/002_8677891791ee1a2a.txt, Sec. 3; its inline math was lost in
extraction). Algorithm 1 (decentralised softmax policy gradient, Zhang et al., 2022) repeats:
estimate each agent's averaged action value Qbar_i(s, a_i) = E_{a_-i ~ pi_-i}[Q(s, a)] (line 4),
then move each agent's policy to pi_{k+1}^i ~ pi_k^i exp(eta Qbar_i), projected onto the
policy class Pi (line 5). Sec. 3.2 compares Pi = all policies (no projection: the exact step)
with Pi = Gaussians on envs/decspg_game.py; this module is that experiment, not DDPL's diffusion
networks (algorithms/ddpl.py, whose toy-game rows extend it to the diffusion class).

Paper -> code:

- Algorithm 1 line 4 (estimate Qbar_i): ``DecSPG._td_update``. One table per agent
  Q_i[s, b] over finite states s and G = ``bins`` equal bins b of the action interval [-1, 1]
  (Qbar_i is piecewise constant in a_i), learned by expected SARSA on replay batches:
  Q_i(s, b) += alpha (reward_scale r + gamma (1 - term) sum_b' pi_i(b'|s') Q_i(s', b') - Q_i(s, b)),
  pi_i(b'|s') the current policy's mass on bin b'. The other agents' actions enter through the
  sampled rewards and transitions only, so the estimate averages over pi_-i (as replayed).
- Algorithm 1 line 5, Pi = all policies (``policy_class='all'``): ``DecSPG._exact_step``,
  logits_i(s, .) += eta Q_i(s, .) for every state: pi_{k+1}^i = pi_k^i exp(eta Q_i) / Z
  exactly (the density is constant on each bin, so is exp(eta Q_i)).
- Algorithm 1 line 5, Pi = Gaussians, Theorem 3.1 (``policy_class='gaussian'``):
  ``DecSPG._projection_step``, ``gaussian_steps`` plain gradient-descent steps (lr
  ``gaussian_lr``) on the reverse KL of `reverse_kl_to_target`,
  KL(N(m, s^2) || pi_k exp(eta Q_i) / Z) = KL(N(m, s^2) || pi_k) - eta E_{N(m, s^2)}[Q_i] + log Z,
  pi_k the Gaussian before the update (fixed during its steps), over (mean, log std) per agent
  and state. Q_i of an action is Q_i of its clipped action's bin, so E[Q_i] is the sum over bins
  of Q_i times the Gaussian's mass on the bin (the two tails on the end bins), from the normal
  CDF: the limit of a quadrature on a fine grid, exact on the piecewise-constant Q_i (no sampling
  noise); the Gaussian part is in closed form. With one step (the default) the first term has
  zero gradient at pi_k, so the step is (m, log s) += lr eta grad E[Q_i], a policy-gradient step;
  more steps approach the projection itself (plain gradient descent: stable over several steps
  only for lr below ~2 s^2 in the mean direction).
- Prop. 3.2: nothing here; shown by running both classes on ``toy/decspg_game`` with N agents.

Choices the lost text forced (all gin-configurable):

- Tabular Q with expected SARSA, step alpha = max(1/n, ``alpha_min``), n the visit count of
  (agent, s, b): the paper says only that Qbar_i is "estimated" and, for its theory, "accurate
  for the reward" before the goal is reached; 1/n makes the early estimate the sample mean
  (unbiased for a fixed policy), the floor lets the estimate track the changing policies and
  bootstrap targets. The m samples of one cell in a batch count as m steps at once: weight
  max(m/n, 1 - (1 - alpha_min)^m) on their mean target (n counted after them; the running mean
  exactly when 1/n rules). Unvisited cells keep Q = 0.
- Rewards are scaled by ``reward_scale`` in the TD target (as in DDPL; the runner does not
  scale them), so eta acts on Q in scaled reward units.
- Cadence: every ``update`` call (the OnlineRunner's ``updates_per_env_step``) does one TD sweep
  over its batch and, every ``policy_delay`` calls, one policy step (line 5) for every agent
  and state: an "epoch" of Algorithm 1 is ``policy_delay`` updates.
- Sampling: 'all' draws a bin from the categorical, then an action uniformly inside it;
  'gaussian' draws N(m, s^2) and clips to [-1, 1]. ``act(explore=False)`` samples too, as DDPL
  evaluates: the DecSPG iterates are stochastic policies and Fig. 2 reports their average reward.
- Gaussian initial policy N(0, ``gaussian_init_std``^2) in every state (Theorem 3.1's zero-mean
  Gaussian of modest variance); 'all' starts uniform on [-1, 1] (logits 0). log std is clamped to
  ``log_std_bounds`` after each step (as in DDPL).
- Tasks: every agent's observation must be the one-hot of a finite state (its argmax is the state
  index; tables are sized by the largest observation) and every action 1-d. Actions are checked
  when the algorithm is built; observations on every training batch (obs and next_obs), with
  one `UnsupportedTaskError` naming the task and the field. ``act`` itself takes the argmax
  unchecked: the policy-artifact probe (`dmarl.policy.acting_modules`) calls it on zeros.
- Tables are `AgentTable` modules (``critic``: Q, ``visits``: n, ``policy``: logits or (mean,
  log std)): checkpoints hold all three, a policy artifact only the policy.

Measured on the toy game (gin/experiments/decspg_toy_cpu.gin: 4,000 env steps, ~1,900 updates,
1-3 s per run on a loaded 2-core CPU, 2026-12-02; final success, the optimum is 0.9^N):

- eta = 0.01 (chosen so that the all-policies class needs ~1,000-2,500 env steps, a visible
  learning curve; eta 0.03-1 reach the same end faster), seeds 0-4: all policies N = 1 0.865 /
  0.875 / 0.865 / 0.865 / 0.875, N = 2 0.735 / 0.73 / 0.735 / 0.735 / 0.735, N = 3 0 / 0.64 /
  0.665 / 0 / 0.525, N = 4 0 on every seed; Gaussians 0.005 on one seed at N = 1, 0 elsewhere.
- Robustness (seeds 5-9, N = 1 and 2; every choice was made on seeds 5-9, not on 0-4): Gaussians
  stay at <= 0.005 for eta 0.01-1, gaussian_lr 0.1-10 and 20 steps of lr 0.005 per update; all
  policies reach >= 0.67 at N = 2 for every eta tried. The Gaussian behaves as Theorem 3.1
  says: its start-state mean stays within 0.01 of 0 and its std shrinks (0.3 -> ~0.17 at N = 1,
  ~0.21 at N = 2) although its learned Q ranks +-a* above 0 (e.g. 3.1 and 2.7 against 1.0).
"""
from __future__ import annotations

import math

import gin
import numpy as np
import torch
from torch import Tensor, nn

from dmarl.algorithms.state import Checkpointed
from dmarl.data.batch import Batch
from dmarl.envs.base import EnvSpec
from dmarl.errors import UserError
from dmarl.registry import register_algorithm

POLICY_CLASSES = ("all", "gaussian")
LOG_2PI_E = math.log(2 * math.pi * math.e)


class UnsupportedTaskError(UserError, ValueError):
    """The task's observations are not one-hot states or its actions are not 1-d."""


class AgentTable(nn.Module):
    """Values per agent, state and column ``[N, S, K]`` (a parameter without gradient: tables are
    set, not trained by an optimiser). A module, so that checkpoints and policy artifacts treat it
    like the networks of other algorithms; ``forward(states [..., N])`` -> the rows ``[..., N, K]``."""

    def __init__(self, n_agents: int, n_states: int, columns: int, device: torch.device) -> None:
        super().__init__()
        self.values = nn.Parameter(
            torch.zeros(n_agents, n_states, columns, dtype=torch.float64, device=device), requires_grad=False
        )

    def forward(self, states: Tensor) -> Tensor:
        return self.values[torch.arange(self.values.shape[0], device=states.device), states]


def bin_masses(mean: Tensor, log_std: Tensor, edges: Tensor) -> Tensor:
    """Mass ``[..., G]`` of N(mean, std^2), clipped to [edges[0], edges[-1]], on each of the G bins
    between ``edges`` (the tails go to the end bins)."""
    z = (edges[1:-1] - mean[..., None]) / log_std.exp()[..., None]
    cdf = torch.special.ndtr(z)
    zeros, ones = torch.zeros_like(cdf[..., :1]), torch.ones_like(cdf[..., :1])
    return torch.diff(torch.cat([zeros, cdf, ones], dim=-1), dim=-1)


def reverse_kl_to_target(
    mean: Tensor, log_std: Tensor, anchor_mean: Tensor, anchor_log_std: Tensor, q: Tensor, eta: float, edges: Tensor
) -> Tensor:
    """KL(N(mean, std^2) || pi_k exp(eta Q) / Z) - log Z per element ``[...]``: pi_k =
    N(anchor_mean, anchor_std^2), ``q [..., G]`` piecewise constant on the bins of ``edges``
    (an action's Q is that of its clipped action's bin)."""
    var, anchor_var = (2 * log_std).exp(), (2 * anchor_log_std).exp()
    kl_anchor = anchor_log_std - log_std + (var + (mean - anchor_mean) ** 2) / (2 * anchor_var) - 0.5
    return kl_anchor - eta * (bin_masses(mean, log_std, edges) * q).sum(-1)


@register_algorithm("decspg", kind="online", paper="DecSPG, Algorithm 1 of DDPL (paper 002): all policies vs Gaussian")
@gin.configurable
class DecSPG(Checkpointed):
    """Tabular Algorithm 1 of paper 002 on one-hot states and 1-d actions (module docstring)."""

    checkpointed = ("critic", "visits", "policy", "updates")

    def __init__(
        self,
        spec: EnvSpec,
        device: torch.device,
        policy_class: str = "all",
        bins: int = 100,
        eta: float = 1.0,
        gamma: float = 0.99,
        reward_scale: float = 1.0,
        alpha_min: float = 0.05,
        policy_delay: int = 1,
        gaussian_init_std: float = 0.3,
        gaussian_steps: int = 1,
        gaussian_lr: float = 0.1,
        log_std_bounds: tuple[float, float] = (-5.0, 1.0),
    ) -> None:
        if policy_class not in POLICY_CLASSES:
            raise UserError(f"DecSPG.policy_class = {policy_class!r}: expected one of {POLICY_CLASSES}")
        # ranges of the other parameters: dmarl.validation.CONSTRAINTS, checked when the config is parsed
        if not log_std_bounds[0] < math.log(gaussian_init_std) < log_std_bounds[1]:
            raise UserError(
                f"DecSPG.log_std_bounds = {log_std_bounds!r}: expected bounds around log(gaussian_init_std) = "
                f"{math.log(gaussian_init_std):.3g}"
            )
        if any(d != 1 for d in spec.action_dims):
            raise UnsupportedTaskError(
                f"DecSPG on {spec.name}: action_dims = {spec.action_dims}; the tabular DecSPG needs a 1-d action "
                "per agent"
            )
        self.spec, self.device = spec, device
        self.policy_class, self.bins, self.eta, self.gamma = policy_class, bins, eta, gamma
        self.reward_scale, self.alpha_min, self.policy_delay = reward_scale, alpha_min, policy_delay
        self.gaussian_steps, self.gaussian_lr, self.log_std_bounds = gaussian_steps, gaussian_lr, log_std_bounds
        n, s = spec.n_agents, spec.obs_max
        self.edges = torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64, device=device)
        self.obs_mask = torch.as_tensor(spec.obs_mask(), device=device)  # [N, O_max]
        self.critic = AgentTable(n, s, bins, device)  # Q_i(s, b)
        self.visits = AgentTable(n, s, bins, device)  # n(s, b) per agent
        # 'all': logits (0: uniform on [-1, 1]); 'gaussian': (mean, log std) per agent and state
        self.policy = AgentTable(n, s, bins if policy_class == "all" else 2, device)
        if policy_class == "gaussian":
            self.policy.values[..., 1] = math.log(gaussian_init_std)
        self.updates = 0

    # -- states and policies ------------------------------------------------------------
    def states(self, obs: Tensor) -> Tensor:
        """State index ``[..., N]`` of each agent: the argmax of its own observation."""
        return obs.masked_fill(~self.obs_mask, -math.inf).argmax(-1)

    def check_one_hot(self, obs: Tensor, field: str) -> None:
        """One `UnsupportedTaskError` naming the task and ``field`` unless every agent's
        observation in ``obs [..., N, O_max]`` is a one-hot vector."""
        own = obs.masked_fill(~self.obs_mask, 0.0)
        if not (((own == 0) | (own == 1)).all() and (own.sum(-1) == 1).all()):
            raise UnsupportedTaskError(
                f"DecSPG on {self.spec.name}: batch.{field} is not the one-hot of a finite state for every agent; "
                "the tabular DecSPG needs one-hot state observations"
            )

    def bin_of(self, actions: Tensor) -> Tensor:
        """Bin index of 1-d actions in [-1, 1] (``[..., N, 1]`` -> ``[..., N]``)."""
        b = ((actions[..., 0].double() + 1.0) * (self.bins / 2.0)).floor().long()
        return b.clamp(0, self.bins - 1)

    def masses(self) -> Tensor:
        """pi_i(b | s) for every agent, state and bin ``[N, S, G]``."""
        params = self.policy.values
        if self.policy_class == "all":
            return params.softmax(-1)
        return bin_masses(params[..., 0], params[..., 1], self.edges)

    def entropy(self) -> Tensor:
        """Differential entropy of each agent's policy per state ``[N, S]`` (the Gaussian's
        before clipping)."""
        if self.policy_class == "all":
            p = self.masses()
            return -torch.special.xlogy(p, p).sum(-1) + math.log(2.0 / self.bins)
        return 0.5 * LOG_2PI_E + self.policy.values[..., 1]

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, explore: bool) -> np.ndarray:
        """A sample of each agent's policy at its state, explore or not (module docstring)."""
        s = self.states(torch.as_tensor(obs, device=self.device))  # [E, N]
        params = self.policy(s)  # [E, N, G] or [E, N, 2]
        if self.policy_class == "all":
            b = torch.multinomial(params.softmax(-1).reshape(-1, self.bins), 1).reshape(s.shape)
            a = self.edges[b] + torch.rand(s.shape, dtype=torch.float64, device=self.device) * (2.0 / self.bins)
        else:
            noise = torch.randn(s.shape, dtype=torch.float64, device=self.device)
            a = (params[..., 0] + params[..., 1].exp() * noise).clamp(-1.0, 1.0)
        return a[..., None].float().cpu().numpy()

    # -- learning -----------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        self.check_one_hot(batch.obs, "obs")
        self.check_one_hot(batch.next_obs, "next_obs")
        self.updates += 1
        metrics = self._td_update(batch)
        if self.updates % self.policy_delay == 0:
            if self.policy_class == "all":
                self._exact_step()
            else:
                self._projection_step()
        agents = torch.arange(self.spec.n_agents, device=self.device)
        metrics["policy/entropy"] = self.entropy()[agents, self.states(batch.obs)].mean().item()
        return metrics

    def _td_update(self, batch: Batch) -> dict[str, float]:
        """Algorithm 1 line 4: one expected-SARSA sweep over the batch (module docstring)."""
        q, visits = self.critic.values, self.visits.values
        n, s_max, g = q.shape
        agents = torch.arange(n, device=self.device)
        s, s_next, b = self.states(batch.obs), self.states(batch.next_obs), self.bin_of(batch.actions)  # [B, N]
        v_next = (self.masses() * q).sum(-1)[agents, s_next]  # sum_b' pi_i(b'|s') Q_i(s', b')
        target = self.reward_scale * batch.reward.double()[:, None] + self.gamma * (
            1.0 - batch.terminated.double()[:, None]
        ) * v_next
        q_old = q[agents, s, b]
        cell = ((agents * s_max + s) * g + b).flatten()
        hits = torch.bincount(cell, minlength=n * s_max * g).double().reshape(n, s_max, g)
        sums = torch.bincount(cell, weights=target.flatten(), minlength=n * s_max * g).reshape(n, s_max, g)
        visits += hits
        seen = hits > 0
        m = hits[seen]
        alpha = torch.maximum(m / visits[seen], 1.0 - (1.0 - self.alpha_min) ** m)
        q[seen] += alpha * (sums[seen] / m - q[seen])
        return {
            "critic/td_error": (target - q_old).abs().mean().item(),
            "critic/q_mean": q_old.mean().item() / self.reward_scale,
        }

    def _exact_step(self) -> None:
        """Algorithm 1 line 5 with all policies: pi_{k+1}^i = pi_k^i exp(eta Q_i) / Z in every state
        (logits kept centred at their maximum, which leaves the softmax unchanged)."""
        logits = self.policy.values
        logits += self.eta * self.critic.values
        logits -= logits.amax(-1, keepdim=True)

    def _projection_step(self) -> None:
        """Algorithm 1 line 5 with Gaussians, Theorem 3.1: ``gaussian_steps`` gradient-descent
        steps on `reverse_kl_to_target` from pi_k in every agent and state."""
        anchor = self.policy.values.clone()
        params = anchor.clone().requires_grad_(True)
        for _ in range(self.gaussian_steps):
            loss = reverse_kl_to_target(
                params[..., 0], params[..., 1], anchor[..., 0], anchor[..., 1], self.critic.values, self.eta,
                self.edges,
            )
            (grad,) = torch.autograd.grad(loss.sum(), params)
            with torch.no_grad():
                params -= self.gaussian_lr * grad
                params[..., 1].clamp_(*self.log_std_bounds)
        self.policy.values.copy_(params.detach())
