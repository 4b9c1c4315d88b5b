"""Speed of the shared diffusion core (issue 3), measured in one run and printed.

(a) OU-chain sampling (H = 8) for N = 2 and N = 6 agents, batch 16, 256 and 1024: the
    agent-batched score network (its default, which picks the stacked or the per-agent path by
    ``AgentBatchedScoreMLP.per_agent_path``), the stacked path forced, and a Python loop over N
    separate networks with identical weights.
(b) One OMAD-sized actor update (OMAD App. D.2: 3 x 256 GELU actor, 256-d Fourier time
    embedding, BatchRenorm on the observations once per sample as OMAD's
    ``ObsNormalisedPolicy``, residual score, 2 x 2048 BatchRenorm distributional critic with
    101 atoms, batch 256) backpropagated through the 8-step chain of every agent (Eq. 14),
    versus a tanh-Gaussian actor built from the same agent-batched MLP (one forward pass), both
    with the same Adam kernels (``--adam``). It also prints the ratio of the two updates'
    floating-point work (torch's ``FlopCounterMode``: matmuls): the ratio a diffusion update
    reaches if it runs its matmuls as efficiently as the Gaussian one and spends nothing else.
(c) One Adam step on the parameters of the 2 x 2048 critic and of the N = 2 diffusion actor,
    per implementation (`dmarl.nn.optim.make_adam`: for-loop, foreach, fused).

Usage: python scripts/bench_core_speed.py [--device cuda] [--repeats 20] [--adam fused]
Sizes are MaMuJoCo-like and stated in the output; timings come from ``--repeats`` rounds of
interleaved blocks
(``--block`` calls each): medians of the times and of the per-round ratios.
The chain is OMAD's default (``OUSchedule``: H = 8 cosine-ramp OU steps, horizon 3.3).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dmarl.critics import CategoricalCritic
from dmarl.diffusion import (
    AgentBatchedScoreMLP,
    AgentLoopScoreMLP,
    max_entropy_actor_loss,
    ou_sample,
    tanh_log_det,
)
from dmarl.diffusion.schedules import OUSchedule
from dmarl.nn import AgentBatchedMLP, BatchRenorm
from dmarl.nn.optim import ADAM_IMPLEMENTATIONS, make_adam

OBS_DIM, ACT_DIM, STATE_DIM, H = 50, 4, 100, 8
ACTOR = {"hidden": (256, 256, 256), "activation": "gelu", "time_dim": 256}


def round_times(fns: list[Callable[[], object]], repeats: int, block: int, device: torch.device) -> list[list[float]]:
    """Seconds per call of each ``fn`` in each of ``repeats`` rounds of interleaved blocks
    (``block`` calls of each fn in turn, after one warm-up round). Compare fns by the median
    over rounds of their per-round ratio: robust to other load on a shared machine."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats + 1):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(block):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= 1:
                times[i].append((time.perf_counter() - start) / block)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def bench_sampling(n_agents: int, batch: int, repeats: int, block: int, device: torch.device) -> list[list[float]]:
    """Per-round (loop, batched, stacked-forced) seconds of one H-step OU sample of all agents
    (eval mode)."""
    loop = AgentLoopScoreMLP(n_agents, ACT_DIM, OBS_DIM, **ACTOR).to(device).eval()
    batched = AgentBatchedScoreMLP.from_modules(list(loop.agents)).eval()
    stacked = AgentBatchedScoreMLP.from_modules(list(loop.agents)).eval()
    stacked.per_agent_min_elements = 2**62
    sched = OUSchedule(H, 3.3, 1e-3, 0.9999, shape="cosine").to(device)
    obs = torch.randn(batch, n_agents, OBS_DIM, device=device)
    shape = (batch, n_agents, ACT_DIM)
    return round_times(
        [
            lambda: ou_sample(loop.conditioned(obs), sched, shape),
            lambda: ou_sample(batched.conditioned(obs), sched, shape),
            lambda: ou_sample(stacked.conditioned(obs), sched, shape),
        ],
        repeats,
        block,
        device,
    )


class ActorUpdates:
    """OMAD's diffusion actor update and a tanh-Gaussian one against the same frozen critic."""

    def __init__(self, n_agents: int, batch: int, device: torch.device, with_critic: bool, adam: str) -> None:
        self.n, self.batch, self.with_critic = n_agents, batch, with_critic
        self.sched = OUSchedule(H, 3.3, 1e-3, 0.9999, shape="cosine").to(device)
        self.critic = CategoricalCritic(STATE_DIM + n_agents * ACT_DIM, v_max=200.0).to(device).eval()
        self.critic.requires_grad_(False)
        self.diffusion = AgentBatchedScoreMLP(n_agents, ACT_DIM, OBS_DIM, **ACTOR).to(device)
        self.obs_norm = BatchRenorm(n_agents * OBS_DIM).to(device)
        self.gaussian = AgentBatchedMLP(n_agents, OBS_DIM, 2 * ACT_DIM, ACTOR["hidden"], "gelu", "batchnorm").to(device)
        self.obs = torch.randn(batch, n_agents, OBS_DIM, device=device)
        self.state = torch.randn(batch, STATE_DIM, device=device)
        self.d_params = [*self.diffusion.parameters(), *self.obs_norm.parameters()]
        self.g_params = list(self.gaussian.parameters())
        self.d_opt = make_adam(self.d_params, 3e-5, (0.5, 0.999), adam, "--adam")
        self.g_opt = make_adam(self.g_params, 3e-5, (0.5, 0.999), adam, "--adam")

    def q_value(self, action: torch.Tensor) -> torch.Tensor:
        if not self.with_critic:
            return action.sum((-2, -1))
        return self.critic.q_value(self.critic(self.state, action.flatten(1)))

    @staticmethod
    def step(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def diffusion_update(self) -> None:
        obs = self.obs_norm(self.obs.flatten(1)).view_as(self.obs)
        shape = (self.batch, self.n, ACT_DIM)
        out = ou_sample(self.diffusion.conditioned(obs), self.sched, shape, requires_grad=True, residual=True)
        loss = max_entropy_actor_loss(self.q_value(out.action), out.entropy_lower_bound().sum(-1), 0.1)
        self.step(self.d_params, self.d_opt, loss)

    def gaussian_update(self) -> None:
        mean, log_std = self.gaussian(self.obs).chunk(2, dim=-1)
        std = log_std.clamp(-5, 2).exp()
        pre = mean + std * torch.randn_like(mean)
        log_prob = torch.distributions.Normal(mean, std).log_prob(pre).sum(-1) - tanh_log_det(pre)
        loss = max_entropy_actor_loss(self.q_value(torch.tanh(pre)), -log_prob.sum(-1), 0.1)
        self.step(self.g_params, self.g_opt, loss)

    def flop_ratio(self) -> float:
        """Floating-point work of one diffusion update over one Gaussian update."""
        from torch.utils.flop_counter import FlopCounterMode

        counts = []
        for update in (self.diffusion_update, self.gaussian_update):
            with FlopCounterMode(display=False) as counter:
                update()
            counts.append(counter.get_total_flops())
        return counts[0] / counts[1]


def bench_adam(repeats: int, block: int, device: torch.device) -> dict[str, tuple[float, float]]:
    """Median seconds of one Adam step per implementation: (2 x 2048 critic, N = 2 actor)."""
    sets = [
        list(CategoricalCritic(STATE_DIM + 2 * ACT_DIM, v_max=200.0).to(device).parameters()),
        list(AgentBatchedScoreMLP(2, ACT_DIM, OBS_DIM, **ACTOR).to(device).parameters()),
    ]
    for params in sets:
        for p in params:
            p.grad = torch.randn_like(p)
    fns = [
        make_adam(params, 3e-5, (0.5, 0.999), impl, "adam").step
        for impl in ADAM_IMPLEMENTATIONS
        for params in sets
    ]
    times = round_times(fns, repeats, block, device)
    k = len(sets)
    return {
        impl: tuple(statistics.median(t) for t in times[i * k:(i + 1) * k])
        for i, impl in enumerate(ADAM_IMPLEMENTATIONS)
    }


def bench_sampling_table(args: argparse.Namespace, device: torch.device) -> None:
    print("\n(a) OU sampling, one H-step chain for all agents (eval mode, no grad)")
    print("batched = AgentBatchedScoreMLP's default (per_agent_path rule); stacked = stacked path forced")
    print(f"{'N':>3} {'batch':>6} {'loop ms':>9} {'batched ms':>11} {'speed-up':>9} {'stacked ms':>11} {'speed-up':>9}")
    for batch in args.batches:
        for n in (2, 6):
            t_loop, t_batched, t_stacked = bench_sampling(n, batch, args.repeats, args.block, device)
            ms = [1e3 * statistics.median(t) for t in (t_loop, t_batched, t_stacked)]
            up_batched, up_stacked = median_ratio(t_loop, t_batched), median_ratio(t_loop, t_stacked)
            print(f"{n:>3} {batch:>6} {ms[0]:>9.2f} {ms[1]:>11.2f} {up_batched:>8.2f}x {ms[2]:>11.2f} {up_stacked:>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7, help="rounds of interleaved blocks")
    parser.add_argument("--block", type=int, default=5, help="calls per block")
    parser.add_argument("--adam", default="fused", choices=ADAM_IMPLEMENTATIONS, help="actors' Adam kernels in (b)")
    parser.add_argument("--skip-sampling", action="store_true", help="skip (a)")
    parser.add_argument("--only-sampling", action="store_true", help="run (a) only")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 256, 1024], help="batch sizes in (a)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"device={device} torch={torch.__version__} threads={threads} rounds={args.repeats} x {args.block} calls")
    print(f"sizes: obs {OBS_DIM}, action {ACT_DIM} per agent, state {STATE_DIM}, H = {H}")
    print("actor: 3x256 GELU, 256-d Fourier time embedding; critic: 2x2048 ReLU + BatchRenorm, 101 atoms")
    if not args.skip_sampling:
        bench_sampling_table(args, device)
    if args.only_sampling:
        return
    print(f"\n(b) one actor update (forward + backward + Adam '{args.adam}'), batch 256, agent-batched actors")
    print(f"{'N':>3} {'critic':>14} {'diffusion ms':>13} {'gaussian ms':>12} {'ratio':>7} {'FLOP ratio':>11}")
    for n in (2, 6):
        for with_critic in (True, False):
            updates = ActorUpdates(n, 256, device, with_critic, args.adam)
            fns = [updates.diffusion_update, updates.gaussian_update]
            t_diff, t_gauss = round_times(fns, args.repeats, args.block, device)
            label = "2x2048 C51" if with_critic else "none (sum a)"
            ms_diff, ms_gauss = 1e3 * statistics.median(t_diff), 1e3 * statistics.median(t_gauss)
            ratio = median_ratio(t_diff, t_gauss)
            print(f"{n:>3} {label:>14} {ms_diff:>13.2f} {ms_gauss:>12.2f} {ratio:>6.2f}x {updates.flop_ratio():>10.2f}x")
    print("\n(c) one Adam step, ms: 2x2048 C51 critic / N = 2 diffusion actor")
    for impl, (critic_s, actor_s) in bench_adam(args.repeats, args.block, device).items():
        print(f"  {impl:>9}: {1e3 * critic_s:8.2f} / {1e3 * actor_s:6.2f}")


if __name__ == "__main__":
    main()
