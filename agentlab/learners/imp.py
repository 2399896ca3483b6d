"""Iterative magnitude pruning (Frankle & Carbin 2019) as a learner: train, prune, rewind, retrain; repeat.

    round 0   train the dense network; remember the weights at step k (k = 0: the initialisation)
    round r   prune `prune_fraction` of the remaining weights by magnitude (the trained round r-1 ticket);
              control: same mask, fresh random values, train, evaluate     (optional, `control = true`)
              ticket:  rewind the survivors to their step-k values, train, evaluate

Accuracy of a round: with `validation = N`, the last N training examples (of a fixed
shuffle) are held out and the round reports test accuracy at the epoch of minimum
validation loss, as Frankle & Carbin do ("early-stopping iteration", Section 2), plus
that epoch and the last epoch's accuracy; with `validation = 0`, the last epoch's.
`eval_every = 100` checks the validation loss every 100 steps, as they do, instead of
after every epoch.

The agent needs a `lottery` plasticity module. After `fit` the agent holds the
last round's trained ticket; `rows` holds the whole curve (fraction remaining,
ticket accuracy, control accuracy). TensorBoard: `plasticity/<name>/ticket_acc`
and `.../random_acc` against the fraction remaining in basis points (x = 10,000
* remaining: 500 = 5%), and `.../ticket_acc_by_round` against the round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from agentlab.config import check
from agentlab.driver import StepOutput
from agentlab.evaluate import evaluate
from agentlab.learners.finetune import require_classification, train_split
from agentlab.learners.sgd import SGDConfig, supervised_loss
from agentlab.plasticity.lottery import Lottery
from agentlab.registry import BuildEnv, register


@dataclass(frozen=True)
class IMPConfig(SGDConfig):
    """Training settings of every round plus the pruning schedule."""

    rounds: int = 5
    """pruning rounds after the dense one (remaining after r rounds is about (1 - prune_fraction)^r)"""
    rewind_step: int = 0
    """rewind survivors to their values after this many steps of the dense run (0 = the initialisation)"""
    control: bool = False
    """also train the random re-initialisation of every round's mask (doubles the cost)"""
    validation: int = 0
    """training examples held out for early stopping (0 = report the last epoch's test accuracy)"""
    eval_every: int = 0
    """with validation: check the validation loss every this many steps (Frankle & Carbin: 100) instead of
    after every epoch (0)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rounds >= 0, "rounds", self.rounds, "an integer >= 0")
        check(self.rewind_step >= 0, "rewind_step", self.rewind_step, "an integer >= 0")
        check(self.validation >= 0, "validation", self.validation, "an integer >= 0")
        check(self.eval_every >= 0, "eval_every", self.eval_every, "an integer >= 0 (0 = after every epoch)")


def find_lottery(agent: Any) -> Lottery:
    found = [p for p in agent.plasticity if isinstance(p, Lottery)]
    if len(found) != 1:
        raise ValueError("the imp learner needs exactly one `lottery` plasticity module in the agent; add [[plasticity]] name = \"lottery\"")
    return found[0]


def run_imp(
    agent: Any, task: Any, cfg: IMPConfig, ctx: Any, *, seed: int = 0, on_row: Callable[[dict], None] | None = None
) -> list[dict[str, float]]:
    """The IMP loop of the module docstring; returns one row per round."""
    lottery = find_lottery(agent)
    train, val = _hold_out(task.train, cfg.validation, seed)
    steps = 0

    def dense_step(batch: Any) -> StepOutput:
        nonlocal steps
        if steps == cfg.rewind_step:
            lottery.remember()  # the values at step k, before the k-th update
        steps += 1
        return supervised_loss(agent, batch, task)

    def train_round(step_fn: Any = None) -> tuple[float, float, float]:
        """Train one round; (test accuracy at the early-stopping point, that point in epochs, last test accuracy).

        The early-stopping point is the epoch end (or, with `eval_every`, the step) of minimum validation loss;
        it is reported in epochs (fractional with `eval_every`)."""
        best = {"loss": float("inf"), "acc": float("nan"), "epoch": -1.0}
        per_epoch = -(-len(train) // cfg.batch_size)
        done = {"steps": 0}

        def check(at_epoch: float) -> None:
            loss = _mean_loss(agent, val, task.id, ctx.device)
            if loss < best["loss"]:
                best.update(loss=loss, acc=evaluate(agent, task, device=ctx.device).acc, epoch=at_epoch)

        def on_epoch(epoch: int) -> None:
            if val is not None and not cfg.eval_every:
                check(float(epoch))

        def on_step(logged: dict[str, float]) -> None:
            done["steps"] += 1
            if val is not None and cfg.eval_every and done["steps"] % cfg.eval_every == 0:
                check(done["steps"] / per_epoch)

        train_split(agent, task, train, cfg, ctx, step_fn=step_fn, on_step=on_step, on_epoch=on_epoch)
        last = evaluate(agent, task, device=ctx.device).acc
        if val is None:
            return last, float(cfg.epochs - 1), last
        if cfg.eval_every and done["steps"] % cfg.eval_every:
            check(done["steps"] / per_epoch)  # the end of training is a candidate too
        return best["acc"], float(best["epoch"]), last

    dense, dense_epoch, dense_last = train_round(dense_step)
    if lottery.rewind_state is None:  # rewind_step beyond the run: rewind to its end
        lottery.remember()
    rows = [{"round": 0, "remaining": lottery.remaining(), "ticket_acc": dense, "random_acc": dense,
             "ticket_epoch": dense_epoch, "ticket_last_acc": dense_last}]
    _log(ctx, lottery.name, rows[-1])
    if on_row:
        on_row(rows[-1])
    for r in range(1, cfg.rounds + 1):
        lottery.prune()
        row: dict[str, float] = {"round": r, "remaining": lottery.remaining()}
        if cfg.control:
            lottery.reinit(seed * 1000 + r)
            row["random_acc"], row["random_epoch"], row["random_last_acc"] = train_round()
        lottery.rewind()
        row["ticket_acc"], row["ticket_epoch"], row["ticket_last_acc"] = train_round()
        rows.append(row)
        _log(ctx, lottery.name, row)
        if on_row:
            on_row(row)
    return rows


def _hold_out(split: Any, n: int, seed: int) -> tuple[Any, Any]:
    """(training part, validation part) of `split`: the last `n` of a fixed shuffle held out (n = 0: no validation)."""
    if n == 0:
        return split, None
    if n >= len(split):
        raise ValueError(f"validation = {n} leaves no training examples (the split has {len(split)}); lower it")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 7919))
    return split.subset(order[:-n]), split.subset(order[-n:])


def _mean_loss(agent: Any, split: Any, task_id: int, device: str = "cpu") -> float:
    """Mean cross-entropy of the agent on `split` (the early-stopping criterion)."""
    was_training = agent.training
    agent.eval()
    total = 0.0
    with torch.no_grad():
        for batch in split.batches(1000):
            batch = batch.to(device)
            out, _ = agent.predict(batch.x, task_id)
            total += float(F.cross_entropy(out, batch.y, reduction="sum"))
    agent.train(was_training)
    return total / len(split)


def _log(ctx: Any, name: str, row: dict[str, float]) -> None:
    x = int(round(10_000 * row["remaining"]))
    ctx.log_scalar(f"plasticity/{name}/ticket_acc", row["ticket_acc"], x)
    if "random_acc" in row:
        ctx.log_scalar(f"plasticity/{name}/random_acc", row["random_acc"], x)
    ctx.log_scalar(f"plasticity/{name}/ticket_acc_by_round", row["ticket_acc"], int(row["round"]))
    ctx.log_scalar(f"plasticity/{name}/remaining_by_round", row["remaining"], int(row["round"]))


def curve_image(rows: list[dict[str, float]]) -> Any:
    """Accuracy against fraction of weights remaining (log x), ticket and random control: an RGB array (H, W, 3)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = [100 * r["remaining"] for r in rows]
    ax.plot(x, [100 * r["ticket_acc"] for r in rows], "o-", label="ticket (rewound)")
    if all("random_acc" in r for r in rows):
        ax.plot(x, [100 * r["random_acc"] for r in rows], "s--", label="random re-init")
    ax.axhline(100 * rows[0]["ticket_acc"], color="gray", lw=0.8, label="dense")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("% of weights remaining")
    ax.set_ylabel("test accuracy %")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    buf.seek(0)
    return (mpimg.imread(buf)[..., :3] * 255).astype("uint8")


class IMP:
    """The `imp` learner: finds a lottery ticket on each task it fits (usually a single-task stream)."""

    name = "imp"

    def __init__(self, cfg: IMPConfig, *, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.rows: list[dict[str, float]] = []

    def fit(self, agent: Any, task: Any, ctx: Any) -> None:
        require_classification(task, self.name)
        self.rows = run_imp(agent, task, self.cfg, ctx, seed=self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]

    def state_bytes(self) -> int:
        return 0


@register("learner", "imp", IMPConfig)
def build_imp(cfg: IMPConfig, env: BuildEnv) -> IMP:
    """Iterative magnitude pruning with rewinding (lottery tickets); needs a `lottery` plasticity module."""
    return IMP(cfg, seed=env.seed)
