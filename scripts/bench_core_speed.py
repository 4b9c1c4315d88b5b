"""Speed of the shared diffusion core (issue 3), measured in one run and printed.

(a) OU-chain sampling (H = 8) for N = 2 and N = 6 agents, batch 256: the agent-batched score
    network (one batched matmul per layer for all agents) versus a Python loop over N separate
    networks with identical weights.
(b) One OMAD-sized actor update (OMAD App. D.2: 3 x 256 GELU actor, 256-d Fourier time
    embedding, input BatchNorm, 2 x 2048 BatchRenorm distributional critic with 101 atoms,
    batch 256) backpropagated through the 8-step chain of every agent (Eq. 14), versus a tanh-
    Gaussian actor built from the same agent-batched MLP (one forward pass).

Usage: python scripts/bench_core_speed.py [--device cuda] [--repeats 20]
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
from dmarl.nn import AgentBatchedMLP

OBS_DIM, ACT_DIM, STATE_DIM, H = 50, 4, 100, 8
ACTOR = {"hidden": (256, 256, 256), "activation": "gelu", "time_dim": 256, "input_norm": True}


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
    """Per-round (loop, batched) seconds of one H-step OU sample of all agents (eval mode)."""
    loop = AgentLoopScoreMLP(n_agents, ACT_DIM, OBS_DIM, **ACTOR).to(device).eval()
    batched = AgentBatchedScoreMLP.from_modules(list(loop.agents)).eval()
    sched = OUSchedule(H, 3.3, 1e-3, 0.9999, shape="cosine").to(device)
    obs = torch.randn(batch, n_agents, OBS_DIM, device=device)
    shape = (batch, n_agents, ACT_DIM)
    return round_times(
        [
            lambda: ou_sample(loop.conditioned(obs), sched, shape),
            lambda: ou_sample(batched.conditioned(obs), sched, shape),
        ],
        repeats,
        block,
        device,
    )


def bench_actor_update(
    n_agents: int, batch: int, repeats: int, block: int, device: torch.device, with_critic: bool
) -> list[list[float]]:
    """Per-round (diffusion, Gaussian) seconds of one actor update: forward, backward, Adam step."""
    sched = OUSchedule(H, 3.3, 1e-3, 0.9999, shape="cosine").to(device)
    critic = CategoricalCritic(STATE_DIM + n_agents * ACT_DIM, v_max=200.0).to(device).eval()
    critic.requires_grad_(False)
    diffusion = AgentBatchedScoreMLP(n_agents, ACT_DIM, OBS_DIM, **ACTOR).to(device)
    gaussian = AgentBatchedMLP(n_agents, OBS_DIM, 2 * ACT_DIM, ACTOR["hidden"], "gelu", "batchnorm").to(device)
    obs = torch.randn(batch, n_agents, OBS_DIM, device=device)
    state = torch.randn(batch, STATE_DIM, device=device)
    alpha = 0.1

    def q_value(action: torch.Tensor) -> torch.Tensor:
        if not with_critic:
            return action.sum((-2, -1))
        return critic.q_value(critic(state, action.flatten(1)))

    def step(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    d_params, g_params = list(diffusion.parameters()), list(gaussian.parameters())
    d_opt = torch.optim.Adam(d_params, lr=3e-5, betas=(0.5, 0.999))
    g_opt = torch.optim.Adam(g_params, lr=3e-5, betas=(0.5, 0.999))

    def diffusion_update() -> None:
        out = ou_sample(diffusion.conditioned(obs), sched, (batch, n_agents, ACT_DIM), requires_grad=True)
        loss = max_entropy_actor_loss(q_value(out.action), out.entropy_lower_bound().sum(-1), alpha)
        step(d_params, d_opt, loss)

    def gaussian_update() -> None:
        mean, log_std = gaussian(obs).chunk(2, dim=-1)
        std = log_std.clamp(-5, 2).exp()
        pre = mean + std * torch.randn_like(mean)
        log_prob = torch.distributions.Normal(mean, std).log_prob(pre).sum(-1) - tanh_log_det(pre)
        loss = max_entropy_actor_loss(q_value(torch.tanh(pre)), -log_prob.sum(-1), alpha)
        step(g_params, g_opt, loss)

    return round_times([diffusion_update, gaussian_update], repeats, block, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7, help="rounds of interleaved blocks")
    parser.add_argument("--block", type=int, default=5, help="calls per block")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"device={device} torch={torch.__version__} threads={threads} rounds={args.repeats} x {args.block} calls")
    print(f"sizes: obs {OBS_DIM}, action {ACT_DIM} per agent, state {STATE_DIM}, H = {H}")
    print("actor: 3x256 GELU, 256-d Fourier time embedding, input BN; critic: 2x2048 ReLU + BatchRenorm, 101 atoms")
    print("\n(a) OU sampling, one H-step chain for all agents (eval mode, no grad)")
    print(f"{'N':>3} {'batch':>6} {'loop ms':>9} {'batched ms':>11} {'speed-up':>9} {'target 0.7N':>12}")
    for batch in (256, 16):
        for n in (2, 6):
            t_loop, t_batched = bench_sampling(n, batch, args.repeats, args.block, device)
            ms_loop, ms_batched = 1e3 * statistics.median(t_loop), 1e3 * statistics.median(t_batched)
            speed_up = median_ratio(t_loop, t_batched)
            print(f"{n:>3} {batch:>6} {ms_loop:>9.2f} {ms_batched:>11.2f} {speed_up:>8.2f}x {0.7 * n:>11.1f}x")
    print("\n(b) one actor update (forward + backward + Adam), batch 256, agent-batched actors")
    print(f"{'N':>3} {'critic':>14} {'diffusion ms':>13} {'gaussian ms':>12} {'ratio':>7}")
    for n in (2, 6):
        for with_critic in (True, False):
            t_diff, t_gauss = bench_actor_update(n, 256, args.repeats, args.block, device, with_critic)
            label = "2x2048 C51" if with_critic else "none (sum a)"
            ms_diff, ms_gauss = 1e3 * statistics.median(t_diff), 1e3 * statistics.median(t_gauss)
            print(f"{n:>3} {label:>14} {ms_diff:>13.2f} {ms_gauss:>12.2f} {median_ratio(t_diff, t_gauss):>6.2f}x")


if __name__ == "__main__":
    main()
