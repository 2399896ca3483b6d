"""PPO for any composed agent on environment tasks (Schulman et al. 2017), one readable file in the style of cleanrl.

The agent is the policy: its outputs are the action logits (`agentlab.scenarios.env_task`), so every plasticity
module applies to the whole policy per task exactly as in supervised streams (SupSup masks the read-out too, SET's
frozen-and-grow applies to every layer, adapters adapt every layer), and the agent's checkpoint is the policy's.
The value function V(s) is the learner's critic: an MLP over the same observations (cleanrl's critic: tanh layers,
orthogonal initialisation), new for every task. It serves training only (the advantages), never acting or evaluating,
so nothing of it needs keeping across tasks. A critic sharing the agent's trunk (the value as one more output) makes
the value targets, tens of reward units, pull on the policy's layers, and a read-out that cannot grow (a supermask over
fixed weights) cannot fit them at all: PPO then fails on CartPole where it succeeds with a critic of its own.

Per task (cleanrl's ppo.py, the defaults its CartPole run uses):

    envs = the task's SyncVectorEnv of num_envs copies, reset with seeds drawn from the run's generator
    repeat budget / (num_envs * num_steps) times:
        rollout   num_steps steps of every environment; actions sampled from softmax(logits) with the run's
                  generator; carried memories (reset = "episode") reset row by row where episodes end
        GAE       advantages A_t = sum_l (gamma lambda)^l delta_{t+l}, returns = A + V   (Schulman et al. 2016)
        update    update_epochs passes of num_minibatches minibatches; each minibatch is one step of the step
                  driver (`agentlab.driver.StepDriver`: the modules' loss terms, gradient clipping, after_step):
                      L = -min(r A, clip(r, 1 - eps, 1 + eps) A)                   clipped surrogate (eq. 7)
                        + vf_coef * 1/2 max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2)   the critic's, clipped
                        - ent_coef * H[pi]                                        entropy bonus
                  advantages normalised per minibatch; the learning rate annealed linearly to 0 over the task
        every epoch_iterations updates the driver ends an epoch (the modules' after_epoch: SET rewires there)

A memory carried across steps (attached with reset = "episode") is trained through time on pieces of the rollout: the
rollout keeps the memory's state every `bptt` steps, the steps of every environment are cut there and where episodes
start, and each minibatch of pieces is replayed as one padded batch of sequences (S, L, F), a piece cut at an episode
start from an empty memory, the others from the state kept where they begin (truncated backpropagation through time
from stored states, as R2D2 does without burn-in; cleanrl's ppo_atari_lstm replays whole rollouts). So the first epoch
sees the memory exactly as acting did. The backbone must keep the step axis (an MLP with per_step = true). Truncated
episodes are treated as ended (cleanrl does the same).

Logged (TensorBoard, against the loop's step): charts/episodic_return and charts/episodic_length (mean of the episodes
that ended in an update's rollout), charts/sps (environment steps per second, rollout and update), charts/env_steps,
charts/learning_rate, losses/policy_loss, losses/value_term (vf_coef times the value loss), losses/entropy_term,
losses/value_loss, losses/entropy, losses/approx_kl, losses/old_approx_kl, losses/clipfrac,
losses/explained_variance, losses/total.

Why no RL library: Stable-Baselines3 (and sb3-contrib's RecurrentPPO) build their own networks inside a policy class
and keep an LSTM's state in the algorithm, Tianshou and TorchRL do likewise with their own modules and buffers; hosting
an agent whose layers are wrapped per task, whose memories' states the agent threads and resets, and whose hooks
(start and end of a task, after every step and epoch) the loop and the step driver call, would mean overriding their
forward, evaluation, state handling and training loop: the library would add a dependency and keep none of its code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import Tensor, nn

from agentlab.agent import restrict_to_classes
from agentlab.config import check
from agentlab.data import Batch
from agentlab.driver import StepDriver, StepOutput
from agentlab.errors import UserError
from agentlab.learners.base import StatelessLearner
from agentlab.optim import OptimizerConfig, backward_step, make_optimizer, set_lr
from agentlab.registry import BuildEnv, register
from agentlab.scenarios.env_task import carries_state, check_stepwise, policy_logits


@dataclass(frozen=True)
class PPOConfig(OptimizerConfig):
    """Proximal Policy Optimisation settings (cleanrl's defaults unless noted)."""

    lr: float = 2.5e-4
    """learning rate (annealed linearly to 0 over each task with `anneal_lr`)"""
    optimizer: Literal["sgd", "adam", "rmsprop"] = "adam"
    """optimiser, new for every task, over the policy's trainable parameters and the critic's"""
    grad_clip: float = 0.5
    """clip the global gradient norm to this value (cleanrl's max_grad_norm); 0 = off"""
    total_steps: int = 0
    """environment steps per task; 0 = the task's budget (`budget_steps` of the stream)"""
    num_envs: int = 4
    """environments stepped side by side (gymnasium's SyncVectorEnv)"""
    num_steps: int = 128
    """steps of every environment per rollout"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation"""
    num_minibatches: int = 4
    """minibatches per update epoch (of transitions; of sequence pieces for an agent with a carried memory)"""
    update_epochs: int = 4
    """passes over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping epsilon"""
    clip_vloss: bool = True
    """clip the value loss around the rollout's values"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    target_kl: float = 0.0
    """stop an update's epochs when the approximate KL exceeds this; 0 = off"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over each task"""
    critic_hidden: list[int] = field(default_factory=lambda: [64, 64])
    """widths of the critic's hidden layers (tanh)"""
    bptt: int = 16
    """a carried memory is trained on pieces of at most this many steps (backpropagation through time), each started
    from the state the memory had when it acted there; 0 = pieces as long as the rollout"""
    epoch_iterations: int = 10
    """updates that make one epoch for the modules' after_epoch hook (SET rewires there)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.total_steps >= 0, "total_steps", self.total_steps, "an integer >= 0 (0 = the task's budget)")
        check(self.num_envs >= 1, "num_envs", self.num_envs, "an integer >= 1")
        check(self.num_steps >= 1, "num_steps", self.num_steps, "an integer >= 1")
        check(0 <= self.gamma <= 1, "gamma", self.gamma, "in [0, 1]")
        check(0 <= self.gae_lambda <= 1, "gae_lambda", self.gae_lambda, "in [0, 1]")
        check(self.num_minibatches >= 1, "num_minibatches", self.num_minibatches, "an integer >= 1")
        check(self.num_minibatches <= self.num_envs * self.num_steps, "num_minibatches", self.num_minibatches,
              "at most num_envs * num_steps")
        check(all(h >= 1 for h in self.critic_hidden), "critic_hidden", self.critic_hidden, "a list of integers >= 1")
        check(self.update_epochs >= 1, "update_epochs", self.update_epochs, "an integer >= 1")
        check(self.clip_coef > 0, "clip_coef", self.clip_coef, "a number > 0")
        check(self.ent_coef >= 0, "ent_coef", self.ent_coef, "a number >= 0")
        check(self.vf_coef >= 0, "vf_coef", self.vf_coef, "a number >= 0")
        check(self.target_kl >= 0, "target_kl", self.target_kl, "a number >= 0 (0 = off)")
        check(self.bptt >= 0, "bptt", self.bptt, "an integer >= 0 (0 = the whole rollout)")
        check(self.epoch_iterations >= 1, "epoch_iterations", self.epoch_iterations, "an integer >= 1")


class Critic(nn.Module):
    """V(s): an MLP over observations, tanh between layers, orthogonal weights (gain sqrt 2, the output's 1) and zero
    biases, as cleanrl's `layer_init` (Engstrom et al. 2020 found the initialisation matters for PPO)."""

    def __init__(self, width: int, hidden: list[int]) -> None:
        super().__init__()
        sizes = [width, *hidden, 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(sizes)):
            lin = nn.Linear(a, b)
            nn.init.orthogonal_(lin.weight, 1.0 if i == len(sizes) - 2 else math.sqrt(2))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.Tanh()] if i < len(sizes) - 2 else [lin]
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)[..., 0]  # (N,)


@dataclass
class Rollout:
    """num_steps transitions of num_envs environments (T, N, ...) and what the update needs besides."""

    obs: Tensor  # (T, N, F)
    actions: Tensor  # (T, N)
    logprobs: Tensor  # (T, N)
    values: Tensor  # (T, N)
    rewards: Tensor  # (T, N)
    starts: Tensor  # (T, N) bool: obs[t] is the first of an episode
    memory: list[dict[str, Any]]  # the carried memories' states before obs[c * bptt] (leaves per memory), per c
    advantages: Tensor | None = None  # (T, N)
    returns: Tensor | None = None  # (T, N)


def gae(rollout: Rollout, next_value: Tensor, next_start: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns (T, N) (Schulman et al. 2016, eq. 16; cleanrl's loop)."""
    T = rollout.rewards.shape[0]
    adv = torch.zeros_like(rollout.rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        nonterminal = 1.0 - (next_start if t == T - 1 else rollout.starts[t + 1]).float()
        next_v = next_value if t == T - 1 else rollout.values[t + 1]
        delta = rollout.rewards[t] + gamma * next_v * nonterminal - rollout.values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + rollout.values


def segments(starts: Tensor, every: int = 0) -> list[tuple[int, int, int]]:
    """(env, start, end) pieces of each environment's steps (T, N), cut where an episode starts and every `every` steps."""
    out = []
    T, N = starts.shape
    every = every or T
    for e in range(N):
        cuts = [0, *[t for t in range(1, T) if bool(starts[t, e]) or t % every == 0], T]
        out.extend((e, a, b) for a, b in pairwise(cuts))
    return out


def _piece_states(memory: list[dict[str, Any]], pieces: list[tuple[int, int, int]], every: int) -> tuple[dict[str, Any], Tensor]:
    """The carried memories' states a batch of pieces starts from (leaves (S, ...) per memory) and which pieces start
    afresh (S,): a piece at a multiple of `every` goes on from the state kept there, one cut at an episode start
    (or kept as none: the memory had not been used yet) starts fresh."""
    keys = next((list(m) for m in memory if m), [])
    fresh = torch.tensor([a % every != 0 or not memory[a // every] for _, a, _ in pieces], dtype=torch.bool)
    if not keys:
        return {}, fresh
    ref = next(m for m in memory if m)
    state = {}
    for k in keys:
        leaves = []
        for j, leaf in enumerate(ref[k]):
            rows = [leaf.new_zeros(leaf.shape[1:]) if f else memory[a // every][k][j][e] for (e, a, _), f in zip(pieces, fresh)]
            leaves.append(torch.stack(rows))
        state[k] = leaves
    return state, fresh


def _snapshot(agent: Any) -> dict[str, Any]:
    return {k: [leaf.clone() for leaf in v] for k, v in agent.get_extra_state()["memory_states"].items()}


def _restore(agent: Any, state: dict[str, Any]) -> None:
    agent.reset_memory()
    agent.set_extra_state({"memory_states": state})


class PPO(StatelessLearner):
    """PPO on `env` tasks; see the module docstring."""

    name = "ppo"

    def __init__(self, cfg: PPOConfig) -> None:
        self.cfg = cfg

    # ---------------------------------------------------------------- acting
    def _act(self, agent: Any, critic: Critic, obs: Tensor, task: Any, stepwise: bool,
             gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Sampled actions, their log-probabilities and the values (N,) for observations (N, F)."""
        with torch.no_grad():
            logp = torch.log_softmax(policy_logits(agent, obs, task.id, task.classes, stepwise=stepwise), -1)
            value = critic(obs)
        action = torch.multinomial(logp.exp().cpu(), 1, generator=gen)[:, 0].to(obs.device)
        return action, logp.gather(-1, action[:, None])[:, 0], value

    def _collect(self, agent: Any, critic: Critic, envs: Any, state: dict[str, Any], task: Any, stepwise: bool, ctx: Any,
                 episodes: list[tuple[float, float]]) -> Rollout:
        cfg, dev = self.cfg, ctx.device
        T, N = cfg.num_steps, cfg.num_envs
        obs_t = torch.zeros(T, N, state["obs"].shape[-1], device=dev)
        actions = torch.zeros(T, N, dtype=torch.long, device=dev)
        logprobs, values, rewards = (torch.zeros(T, N, device=dev) for _ in range(3))
        starts = torch.zeros(T, N, dtype=torch.bool, device=dev)
        every = cfg.bptt or T
        memory: list[dict[str, Any]] = []
        agent.eval()
        for t in range(T):
            if stepwise and t % every == 0:
                memory.append(_snapshot(agent))
            obs_t[t], starts[t] = state["obs"], state["start"]
            a, logprobs[t], values[t] = self._act(agent, critic, state["obs"], task, stepwise, ctx.generator)
            actions[t] = a
            nxt, reward, term, trunc, info = envs.step(a.cpu().numpy())
            done = np.logical_or(term, trunc)
            rewards[t] = torch.as_tensor(reward, dtype=torch.float32, device=dev)
            state["obs"] = torch.as_tensor(nxt, dtype=torch.float32, device=dev)
            state["start"] = torch.as_tensor(done, device=dev)
            if done.any():
                if stepwise:
                    agent.reset_memory(state["start"])
                if "episode" in info:
                    ended = info["_episode"]
                    episodes.extend(zip(info["episode"]["r"][ended].tolist(), info["episode"]["l"][ended].tolist()))
        return Rollout(obs_t, actions, logprobs, values, rewards, starts, memory)

    # ---------------------------------------------------------------- learning
    def _minibatches(self, rollout: Rollout, stepwise: bool, gen: torch.Generator) -> Iterator[Any]:
        """Minibatches of one epoch: transitions (flat indices) or, for a carried memory, pieces of sequences."""
        T, N = rollout.rewards.shape
        if stepwise:
            pieces = segments(rollout.starts, self.cfg.bptt)
            order = torch.randperm(len(pieces), generator=gen)
            for idx in torch.tensor_split(order, min(self.cfg.num_minibatches, len(pieces))):
                yield ("pieces", [pieces[int(i)] for i in idx])
        else:
            order = torch.randperm(T * N, generator=gen)
            yield from (("flat", idx) for idx in torch.tensor_split(order, self.cfg.num_minibatches) if len(idx))

    def _forward(self, agent: Any, rollout: Rollout, item: Any, task: Any) -> tuple[Tensor, Tensor, Tensor, Batch]:
        """New logits for a minibatch and its rows of the rollout: (logits (M, A), time index (M,), env index (M,),
        the observed batch)."""
        kind, idx = item
        T, N = rollout.rewards.shape
        dev = rollout.obs.device
        if kind == "flat":
            t, e = idx // N, idx % N
            t, e = t.to(dev), e.to(dev)
            obs = rollout.obs[t, e]
            logits = restrict_to_classes(agent(obs, task.id), task.classes)
            return logits, t, e, Batch(obs, rollout.actions[t, e], task.id)
        pieces = idx
        S, L = len(pieces), max(b - a for _, a, b in pieces)
        x = rollout.obs.new_zeros(S, L, rollout.obs.shape[-1])
        rows_t, rows_e, rows_s, rows_l = [], [], [], []
        for s, (e, a, b) in enumerate(pieces):
            x[s, : b - a] = rollout.obs[a:b, e]
            rows_t.append(torch.arange(a, b))
            rows_e.append(torch.full((b - a,), e))
            rows_s.append(torch.full((b - a,), s))
            rows_l.append(torch.arange(b - a))
        start, fresh = _piece_states(rollout.memory, pieces, self.cfg.bptt or T)
        _restore(agent, start)
        agent.reset_memory(fresh.to(dev))  # pieces cut at an episode start begin with an empty memory
        out = agent(x, task.id)
        if out.dim() != 3:
            raise UserError("an agent with a memory carried across steps needs a backbone that keeps the step axis: "
                            "set backbone.per_step = true (the MLP applies its layers to every step)")
        s_i, l_i = torch.cat(rows_s).to(dev), torch.cat(rows_l).to(dev)
        t, e = torch.cat(rows_t).to(dev), torch.cat(rows_e).to(dev)
        logits = restrict_to_classes(out[s_i, l_i], task.classes)
        return logits, t, e, Batch(x, rollout.actions[t, e], task.id)

    def _loss(self, agent: Any, critic: Critic, rollout: Rollout, item: Any, task: Any) -> StepOutput:
        cfg = self.cfg
        logits, t, e, observed = self._forward(agent, rollout, item, task)
        newvalue = critic(rollout.obs[t, e])
        logp_all = torch.log_softmax(logits, -1)
        actions = rollout.actions[t, e]
        newlogprob = logp_all.gather(-1, actions[:, None])[:, 0]
        p = logp_all.exp()
        entropy = -(p * torch.where(p > 0, logp_all, torch.zeros_like(logp_all))).sum(-1).mean()
        logratio = newlogprob - rollout.logprobs[t, e]
        ratio = logratio.exp()
        with torch.no_grad():
            old_approx_kl = (-logratio).mean()
            approx_kl = ((ratio - 1) - logratio).mean()
            clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
        adv = rollout.advantages[t, e]
        if cfg.norm_adv and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
        ret, old_v = rollout.returns[t, e], rollout.values[t, e]
        if cfg.clip_vloss:
            clipped = old_v + (newvalue - old_v).clamp(-cfg.clip_coef, cfg.clip_coef)
            v_loss = 0.5 * torch.max((newvalue - ret) ** 2, (clipped - ret) ** 2).mean()
        else:
            v_loss = 0.5 * ((newvalue - ret) ** 2).mean()
        losses = {"policy_loss": pg_loss, "value_term": cfg.vf_coef * v_loss, "entropy_term": -cfg.ent_coef * entropy}
        logs = {"value_loss": float(v_loss.detach()), "entropy": float(entropy.detach()), "approx_kl": float(approx_kl),
                "old_approx_kl": float(old_approx_kl), "clipfrac": float(clipfrac)}
        return StepOutput(losses, logits, observed, logs=logs, examples=int(t.numel()))

    # ---------------------------------------------------------------- one task
    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        if task.kind != "env":
            raise UserError(f"learner 'ppo' trains environment tasks; task {task.name!r} is a {task.kind!r} task: "
                            "choose a learner for that kind (see `agentlab list`)")
        cfg = self.cfg
        stepwise = carries_state(agent)
        if stepwise:
            check_stepwise(agent, ctx.device)
        budget = cfg.total_steps or task.train.budget_steps
        per_iteration = cfg.num_envs * cfg.num_steps
        iterations = max(1, budget // per_iteration)
        critic = Critic(task.train.spec.shapes[0], list(cfg.critic_hidden)).to(ctx.device)
        optimizer = make_optimizer([*agent.trainable_parameters(), *critic.parameters()], cfg)

        def update(opt: torch.optim.Optimizer, loss: Tensor, params: Any, clip: float) -> None:
            backward_step(opt, loss, [*params, *critic.parameters()], clip)  # one norm over policy and critic, as cleanrl

        driver = StepDriver(agent, optimizer, ctx, grad_clip=cfg.grad_clip, update=update)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
        envs = task.train.spec.vector(cfg.num_envs)
        agent.reset_memory()
        try:
            obs, _ = envs.reset(seed=[seed + k for k in range(cfg.num_envs)])
            state = {"obs": torch.as_tensor(obs, dtype=torch.float32, device=ctx.device),
                     "start": torch.ones(cfg.num_envs, dtype=torch.bool, device=ctx.device)}
            env_steps, epoch = 0, 0
            for it in range(iterations):
                t0 = time.perf_counter()
                lr = cfg.lr * (1.0 - it / iterations) if cfg.anneal_lr else cfg.lr
                set_lr(optimizer, lr)
                episodes: list[tuple[float, float]] = []
                rollout = self._collect(agent, critic, envs, state, task, stepwise, ctx, episodes)
                env_steps += per_iteration
                end_memory = _snapshot(agent) if stepwise else {}
                with torch.no_grad():
                    next_value = critic(state["obs"])  # bootstraps the rollout's last steps
                rollout.advantages, rollout.returns = gae(rollout, next_value, state["start"], cfg.gamma, cfg.gae_lambda)
                for _ in range(cfg.update_epochs):
                    kl = []
                    for item in self._minibatches(rollout, stepwise, ctx.generator):
                        logged = driver.step(partial(self._loss, agent, critic, rollout, item, task))
                        kl.append(logged["approx_kl"])
                    if cfg.target_kl and float(np.mean(kl)) > cfg.target_kl:
                        break
                if stepwise:
                    _restore(agent, end_memory)
                if (it + 1) % cfg.epoch_iterations == 0 or it == iterations - 1:
                    driver.end_epoch(epoch)
                    epoch += 1
                self._log(ctx, rollout, episodes, per_iteration / max(time.perf_counter() - t0, 1e-9), env_steps, lr)
        finally:
            envs.close()
            agent.reset_memory()

    def _log(self, ctx: Any, rollout: Rollout, episodes: list[tuple[float, float]], sps: float, env_steps: int,
             lr: float) -> None:
        step = ctx.global_step
        if episodes:
            r, length = zip(*episodes)
            ctx.log_scalar("charts/episodic_return", float(np.mean(r)), step)
            ctx.log_scalar("charts/episodic_length", float(np.mean(length)), step)
        ctx.log_scalar("charts/sps", sps, step)
        ctx.log_scalar("charts/env_steps", float(env_steps), step)
        ctx.log_scalar("charts/learning_rate", lr, step)
        y, v = rollout.returns.flatten(), rollout.values.flatten()
        var = float(y.var()) if y.numel() > 1 else 0.0
        ev = float("nan") if var == 0 else 1.0 - float((y - v).var()) / var
        if math.isfinite(ev):
            ctx.log_scalar("losses/explained_variance", ev, step)


@register("learner", "ppo", PPOConfig)
def build_ppo(cfg: PPOConfig, env: BuildEnv) -> PPO:
    """Proximal Policy Optimisation (clipped surrogate, GAE, value loss, entropy bonus) on environment tasks."""
    return PPO(cfg)
