"""Small helpers shared by tests (importable as `tests_helpers`: pytest puts tests/ on the path)."""

from pathlib import Path

import torch

from agentlab.data import Split
from agentlab.task import LazyStream, Task

REPO = Path(__file__).resolve().parents[1]


def permuted_stream(n_tasks: int = 3, n: int = 400, d: int = 20, seed: int = 0) -> LazyStream:
    """Permuted-MNIST in miniature: one 4-class Gaussian problem, each task permutes the features."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, d, generator=g) * 2.0
    y = torch.randint(0, 4, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    perms = [torch.arange(d)] + [torch.randperm(d, generator=g) for _ in range(n_tasks - 1)]

    def make(i: int) -> Task:
        xp = x[:, perms[i]]
        return Task(id=i, name=f"perm/{i}", kind="classification", train=Split(xp[:300], y[:300]),
                    eval=Split(xp[300:], y[300:]), classes=(0, 1, 2, 3))

    return LazyStream("perm", "domain", n_tasks, make, n_classes=4, input_shape=(d,))


# A run of the embedded default recipe in about a second: one agent, two steps a task.
QUICK = ["--no-progress", "--agent", "finetune", "--set", "learner.epochs=1", "--set", "learner.max_steps=2"]


def cli(*args: str) -> tuple[int, str, str]:
    """`agentlab ARGS` in this process: (exit code, stdout, stderr). An exception escaping `main` (a traceback for
    a user) propagates; argparse's exit (code 2 with its usage message) is returned as an exit code."""
    import contextlib
    import io

    from agentlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()
