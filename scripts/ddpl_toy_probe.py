"""One DDPL run on the DecSPG toy game (gin/experiments/ddpl_toy_decspg_cpu.gin), printing the
success rate of every evaluation, eta, the ISSM weight statistics and where the start-state
samples sit, so settings can be compared a cell at a time:

    OMP_NUM_THREADS=1 nice -n 10 python scripts/ddpl_toy_probe.py --n 2 --seed 0 \
        --bind "DDPL.eta_target_kl = 1.0" --bind "DDPL.sampling_policy_interval = 20"

``--fit-critic LR STEPS`` only regresses DDPL's critic (the gin's network) on the exact start
reward r0 at uniform actions and prints the fit against r0 (no RL): how fast the network
resolves the game's bumps at a learning rate.

``--oracle`` replaces the learned critic by the game's exact Q (scaled rewards, goal value of
the goal state's optimal action; the learned critic still trains but is not used by the
policy), to tell critic problems from policy-update problems.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from dmarl.envs import decspg_game as game
from torch import Tensor, nn

from dmarl.runners.online import OnlineRunner
from dmarl.train import build_algorithm, make_task_env, parse_settings


class OracleQ(nn.Module):
    """Per-agent Q_i(s, a_i) of the game in scaled units, assuming the other agents at +-a* and
    the goal state's optimal action: start: r0(a_i) / N (agent i's share of the mean reward; the
    others' shares are constant in a_i and left out) + p(a_i) 0.9^(N-1) gamma GOAL_REWARD;
    goal: goal_reward(a_i) / N. Not the averaged Q under the current policies."""

    def __init__(self, n_agents: int, reward_scale: float, gamma: float) -> None:
        super().__init__()
        self.n, self.scale, self.gamma = n_agents, reward_scale, gamma

    def min_q(self, cond: Tensor, action: Tensor) -> Tensor:
        a = action[..., 0].double().numpy()
        others = game.SUCCESS_PROB ** (self.n - 1)
        start = game.start_reward(a) / self.n + game.success_probability(a) * others * self.gamma * game.GOAL_REWARD
        goal = game.goal_reward(a) / self.n
        at_goal = cond[..., game.GOAL].numpy() > 0.5
        return torch.as_tensor(self.scale * np.where(at_goal, goal, start), dtype=torch.float32)


def fit_critic(algo: Any, lr: float, steps: int, batch: int = 64) -> None:
    """Regress ``algo.critic`` on reward_scale r0(a) at a ~ U[-1, 1] in the start state."""
    optim = torch.optim.Adam(algo.critic.parameters(), lr=lr)
    n = algo.spec.n_agents
    state = torch.zeros(batch, n, 3)
    state[..., game.START] = 1.0
    cond = algo.critic_cond(state, state[:, 0])
    for _ in range(steps):
        a = torch.rand(batch, n, 1) * 2 - 1
        target = torch.as_tensor(algo.reward_scale * game.start_reward(a[..., 0].numpy()), dtype=torch.float32)
        loss = ((algo.critic(cond, a) - target) ** 2).mean(dim=1).sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
    grid = torch.linspace(-1, 1, 21)
    q = algo.critic.min_q(cond[:21], grid[:, None, None].expand(21, n, 1))[:, 0].detach().numpy()
    for name, values in (("a", grid.numpy()), ("fit", q / algo.reward_scale), ("r0(a)", game.start_reward(grid.numpy()))):
        print(f"{name:6s}", [round(float(v), 2) for v in values])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bind", action="append", default=[])
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--fit-critic", nargs=2, metavar=("LR", "STEPS"))
    args = parser.parse_args()
    settings = parse_settings(
        ["gin/experiments/ddpl_toy_decspg_cpu.gin", f"gin/tasks/toy_decspg_game_n{args.n}.gin"],
        [f"run.seed = {args.seed}", *args.bind],
    )
    torch.manual_seed(args.seed)
    if args.fit_critic:
        fit_critic(build_algorithm(settings, make_task_env(settings, 1).spec), float(args.fit_critic[0]),
                   int(args.fit_critic[1]))
        return
    runner = OnlineRunner()
    env, eval_env = make_task_env(settings, runner.num_envs), make_task_env(settings, runner.eval_num_envs)
    algo = build_algorithm(settings, env.spec)
    if args.oracle:
        oracle = OracleQ(args.n, algo.reward_scale, algo.gamma)
        algo.critic.min_q = oracle.min_q  # the policy update and TD targets read min_q

    def log(metrics: dict[str, float], step: int) -> None:
        keys = ("eval/success_rate", "policy/eta", "policy/issm_ess", "policy/issm_kl", "policy/gaussian_std")
        shown = {k.split("/")[1]: round(v, 3) for k, v in metrics.items() if k in keys}
        if shown:
            print(step, shown, flush=True)

    start = time.time()
    final = runner.run(algo, env, eval_env, seed=args.seed, device=torch.device("cpu"), log=log,
                       save_checkpoint=lambda state: None)
    obs = torch.zeros(2000, args.n, 3)
    obs[..., game.START] = 1.0
    a = algo.sample(algo.policy_cond(obs))[..., 0].numpy()
    print("start-state action quartiles per agent:", np.round(np.quantile(a, [0.1, 0.25, 0.5, 0.75, 0.9], axis=0).T, 2).tolist())
    grid = torch.linspace(-1, 1, 21)
    for where in (game.START, game.GOAL):
        state = torch.zeros(21, args.n, 3)
        state[..., where] = 1.0
        q = algo.critic.min_q(algo.critic_cond(state, state[:, 0]), grid[:, None, None].expand(21, args.n, 1))
        print(f"Q(state {where}, a) / reward_scale on a = -1, -0.9, ..., 1 (agent 0):",
              np.round(q[:, 0].detach().numpy() / algo.reward_scale, 2).tolist())
    print(f"final success {final['final/success_rate']:.3f}  wall {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
