"""TensorBoard logging with a small fixed vocabulary of tags (listed in README.md).

    cl/avg_acc, cl/bwt, cl/fwt, cl/forgetting     headline metrics after each task (x = tasks trained)
    cl/forgetting/task_NNN                        Chaudhry forgetting of task NNN
    eval/acc/task_NNN                             accuracy on task NNN after each task
    eval/task_inference_acc                       share of eval examples whose task was inferred right
    losses/<term>                                 training loss terms (x = global step)
    ledger/<module>/bytes, ledger/total_bytes     memory ledger after each task
    ledger/params, ledger/trainable_params, ledger/sparsity
    plasticity/<module>/<figure>, memory/<module>/<figure>   module figures after each task
    charts/steps_per_sec, charts/examples_per_sec (x = global step)
    images: cl/accuracy_matrix after each task; module images under their prefixes
    text: hparams table, config

Every tag names its step axis: per-task tags use the task index, training tags
the global optimisation step.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch


def heatmap_image(R: np.ndarray, title: str = "accuracy R[i, j]", *, xlabel: str = "evaluated on task j",
                  ylabel: str = "after training task i", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """The accuracy matrix as an RGB image (H, W, 3) uint8, with values printed in each cell."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    R = np.asarray(R, dtype=float)
    n = R.shape[0]
    size = min(1.2 + 0.45 * n, 14)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(np.where(np.isnan(R), np.nan, R), vmin=vmin, vmax=vmax, cmap="viridis")
    if n <= 20:
        for i in range(R.shape[0]):
            for j in range(R.shape[1]):
                if not np.isnan(R[i, j]):
                    ax.text(j, i, f"{100 * R[i, j]:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if R[i, j] < vmin + 0.6 * (vmax - vmin) else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    buf.seek(0)
    import matplotlib.image as mpimg

    img = mpimg.imread(buf)[..., :3]
    return (img * 255).astype(np.uint8)


class TBLogger:
    """A thin wrapper over `SummaryWriter` that keeps our tag vocabulary in one place."""

    def __init__(self, log_dir: Path | str, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return
        self.writer.add_scalar(tag, float(value), step)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        for k, v in values.items():
            self.scalar(prefix + k, v, step)

    def image(self, tag: str, img: Any, step: int) -> None:
        if isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[-1] in (1, 3):
            self.writer.add_image(tag, img, step, dataformats="HWC")
        else:
            t = torch.as_tensor(img)
            if t.ndim == 2:
                t = t.unsqueeze(0)
            self.writer.add_image(tag, t, step, dataformats="CHW")

    def histogram(self, tag: str, values: Any, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def hparams_table(self, hparams: Mapping[str, Any]) -> None:
        """Hyper-parameters as a markdown table (TensorBoard's TEXT tab)."""
        rows = ["| key | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(hparams.items())]
        self.text("hparams", "\n".join(rows))

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """TensorBoard's HPARAMS tab: the flat hyper-parameters against the final metrics."""
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        mets = {f"hparam/{k}": float(v) for k, v in metrics.items() if v == v}
        self.writer.add_hparams(clean, mets, run_name=".")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists of tables get their index."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_dict(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v):
            for i, item in enumerate(v):
                out.update(flatten_dict(item, f"{key}.{i}."))
        else:
            out[key] = v
    return out
