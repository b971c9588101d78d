"""Can the Q-network represent the values at all? Supervised regression onto the true Q*.

DQN asks the network to fit moving, bootstrapped targets; when a run does not learn, this
separates "the targets are wrong" from "the network cannot fit values at this budget". States
are met on random walks into fresh episodes (doors drawn from the start), labelled with
`optimal_q` (the static-door Q*), and fitted with the profile's model, optimizer and lr
schedule, one segment per optimizer step on a fresh minibatch, from the Reset Z init. The
fitted network can then play real episodes greedily: a yardstick for what DQN could reach
with the same network, optimizer and number of steps.

What it found (`python -m hrm_agent bench fit`): the output first collapses to the same
values for every state (MSE = the variance of Q*, the collapse DQN runs show too) and leaves
that plateau only after ~750-1,500 fresh minibatches; the fitted network then plays far
worse than its share of optimal actions suggests (65% optimal, 8% success at 3,000 steps;
89% and 44% at 24,000).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from hrm_agent.envs import optimal_q
from hrm_agent.evaluate import evaluate
from hrm_agent.experiment import ExperimentConfig
from hrm_agent.models import build_model
from hrm_agent.optim import make_optimizers, set_lr
from hrm_agent.schedules import warmup_constant
from hrm_agent.trainer import resolve_device


def labelled_states(config: ExperimentConfig, n: int, seed: int, device: torch.device | str = "cpu",
                    walk_steps: int = 20) -> tuple[Tensor, Tensor]:
    """n observations met on random walks 0..walk_steps-1 steps into fresh episodes (doors
    shown, the start `<` once left, doors redrawn as in play) and their Q* (n, num_actions)."""
    envs = -(-n // walk_steps)
    env = config.env.make(envs, device=device, seed=seed, draw_doors_at_reset=True)
    generator = torch.Generator(device).manual_seed(seed)
    obs = env.reset(seed=seed)
    observations, q_star = [], []
    for _ in range(walk_steps):
        observations.append(obs)
        q_star.append(optimal_q(env, config.train.gamma))
        actions = torch.randint(config.model.num_actions, (envs,), device=device, generator=generator)
        obs = env.step(actions)[0]
    return torch.cat(observations)[:n], torch.cat(q_star)[:n]


def greedy_optimal_rate(q: Tensor, q_star: Tensor) -> float:
    """Fraction of states whose greedy action under q is optimal under q_star (ties count)."""
    best = q_star.max(dim=1, keepdim=True).values
    return (q_star.gather(1, q.argmax(dim=1, keepdim=True)) >= best - 1e-6).float().mean().item()


def fit_q_star(config: ExperimentConfig, steps: int, *, train_states: int = 50_000,
               eval_states: int = 1_000, eval_every: int = 100, episodes: int = 0,
               seed: int = 0) -> list[dict]:
    """Regress the config's model onto Q*; one record per `eval_every` steps (and step 0).
    With `episodes` > 0 the last record also holds the greedy success rate of the fitted
    network on that many validation episodes (Reset Z, one segment, as it was trained)."""
    tc = config.train
    device = resolve_device(tc.device)
    torch.manual_seed(seed)
    model = build_model(dataclasses.replace(config.model, segments=1)).to(device)
    optimizer, task_optimizer = make_optimizers(
        model, lr=tc.lr, weight_decay=tc.weight_decay, betas=(tc.beta1, tc.beta2),
        task_lr=tc.task_lr, task_weight_decay=tc.task_weight_decay)
    x_train, q_train = labelled_states(config, train_states, seed, device)
    x_eval, q_eval = labelled_states(config, eval_states, seed + 1, device)
    plateau = (q_eval - q_eval.mean(dim=0)).square().mean().item()  # MSE of a constant output
    generator = torch.Generator(device).manual_seed(seed)

    def record(step: int) -> dict:
        with torch.no_grad():
            q = model(x_eval, model.init_seed(eval_states)).q
        return {"step": step, "mse": (q - q_eval).square().mean().item(),
                "constant_output_mse": plateau, "greedy_optimal": greedy_optimal_rate(q, q_eval)}

    records = [record(0)]
    init = model.carry_from_seed(model.init_seed(tc.batch_size))  # Reset Z: the same every step
    for step in range(1, steps + 1):
        idx = torch.randint(train_states, (tc.batch_size,), generator=generator, device=device)
        _, q = model.segment(init, x_train[idx])
        loss = (q - q_train[idx]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        task_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        set_lr(optimizer, task_optimizer, warmup_constant(tc.lr, tc.lr_warmup_steps, step - 1),
               base_lr=tc.lr, task_lr=tc.task_lr)
        optimizer.step()
        task_optimizer.step()
        if step % eval_every == 0 or step == steps:
            records.append(record(step))
    if episodes:
        played = evaluate(model, config.env, carry_z=False, episodes=episodes,
                          seed=tc.val_seed, device=device)
        records[-1]["greedy_success"] = played["success_rate"]
    return records
