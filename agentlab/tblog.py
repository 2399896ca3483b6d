"""TensorBoard logging with a small fixed vocabulary of tags (listed in README.md).

    cl/avg_acc, cl/bwt, cl/fwt, cl/forgetting     headline metrics after each task (x = tasks trained)
    cl/forgetting/task_NNN                        Chaudhry forgetting of task NNN
    eval/acc/task_NNN                             accuracy on task NNN after each task
    eval/<figure>/task_NNN                        every other figure the task's evaluator reports (ci95,
                                                  bits_per_seq, time_mae_s, task_inference_acc...)
    eval/task_inference_acc                       share of eval examples whose task was inferred right
    losses/<term>                                 training loss terms (x = global step)
    ledger/total_KiB, ledger/backbone_KiB, ledger/<module>/KiB   memory ledger after each task (KiB = 1,024 bytes)
    ledger/params, ledger/trainable_params, ledger/sparsity
    plasticity/<module>/<figure>, memory/<module>/<figure>   module figures after each task
    charts/steps_per_sec, charts/examples_per_sec (x = global step)
    images: cl/accuracy_matrix after each task; module images under their prefixes (titles start with the agent)
    text: hparams table; HPARAMS tab: every agent of a run against one schema (`hparams_schema`)

Every tag names its step axis: per-task tags use the task index, training tags
the global optimisation step.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

# The label of the agent whose images are being drawn: `heatmap_image` starts every title with it, so an image
# card in TensorBoard says whose it is even where the run name is cut short.
_IMAGE_OWNER: contextvars.ContextVar[str] = contextvars.ContextVar("agentlab_image_owner", default="")


@contextlib.contextmanager
def images_of(label: str) -> Iterator[None]:
    """Heat-maps drawn inside this block carry `label` at the start of their title."""
    token = _IMAGE_OWNER.set(label)
    try:
        yield
    finally:
        _IMAGE_OWNER.reset(token)


def heatmap_figure(R: np.ndarray, title: str = "accuracy R[i, j]", *, xlabel: str = "evaluated on task j",
                   ylabel: str = "after training task i", vmin: float = 0.0, vmax: float = 1.0,
                   percent: bool = True, colorbar_label: str = "") -> Any:
    """A matplotlib figure of the matrix R with a colour bar, its values printed in each cell (x 100 when `percent`)
    up to 20 x 20. The fonts are large for the size: TensorBoard shows images scaled down to its card. Inside
    `images_of(label)` the title starts with the label."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    R = np.asarray(R, dtype=float)
    rows, cols = R.shape
    n = max(rows, cols)
    side = float(np.clip(3.8 + 0.3 * n, 4.6, 14.0))  # inches; at 110 dpi at least 506 pixels high
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    shown = ax.imshow(np.where(np.isnan(R), np.nan, R), vmin=vmin, vmax=vmax, cmap="viridis")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.tick_params(labelsize=12)
    if colorbar_label:
        bar.set_label(colorbar_label, fontsize=12)
    if percent:
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
    if n <= 20:
        size = 16 if n <= 6 else 12 if n <= 10 else 8
        for i in range(rows):
            for j in range(cols):
                if not np.isnan(R[i, j]):
                    text = f"{100 * R[i, j]:.0f}" if percent else f"{R[i, j]:.2g}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=size,
                            color="white" if R[i, j] < vmin + 0.6 * (vmax - vmin) else "black")
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
    ax.tick_params(labelsize=12)
    ax.set_xlabel(xlabel, fontsize=13)
    ax.set_ylabel(ylabel, fontsize=13)
    owner = _IMAGE_OWNER.get()
    ax.set_title(f"{owner}: {title}" if owner else title, fontsize=14, fontweight="bold" if owner else "normal")
    fig.tight_layout()
    return fig


def figure_image(fig: Any, dpi: int = 110) -> np.ndarray:
    """A matplotlib figure as an RGB image (H, W, 3) uint8; the figure is closed."""
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    buf.seek(0)
    img = mpimg.imread(buf)[..., :3]
    return (img * 255).astype(np.uint8)


def heatmap_image(R: np.ndarray, title: str = "accuracy R[i, j]", **kwargs: Any) -> np.ndarray:
    """`heatmap_figure` as an RGB image (H, W, 3) uint8: at least 600 x 500 pixels."""
    return figure_image(heatmap_figure(R, title, **kwargs))


@dataclass(frozen=True)
class HParamSchema:
    """The HPARAMS tab's columns for every agent of one run: the union of the agents' keys, each with its type and
    the values the agents take (TensorBoard shows the columns of whichever run's schema it reads first, so every
    agent writes this same one)."""

    keys: tuple[str, ...]
    """hyper-parameter names, in column order"""
    values: Mapping[str, Mapping[str, Any]]
    """agent label -> {key: value} (a key an agent lacks is absent: an empty cell)"""
    metrics: tuple[str, ...]
    """metric names, logged as scalars `hparam/<name>` when an agent completes"""

    @classmethod
    def of(cls, agents: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> "HParamSchema":
        """From each agent's flat hyper-parameters; values that are not numbers, strings or booleans become
        strings (a list `[128, 128]` reads "[128, 128]")."""
        keys: list[str] = []
        values: dict[str, dict[str, Any]] = {}
        for label, hp in agents.items():
            values[label] = {k: _scalar(v) for k, v in hp.items() if v is not None}
            keys += [k for k in hp if k not in keys and hp[k] is not None]
        return cls(tuple(keys), values, tuple(metrics))

    def column(self, key: str) -> list[Any]:
        return [hp[key] for hp in self.values.values() if key in hp]

    def differs(self, key: str) -> bool:
        """True when the agents do not all hold the same value (an agent without the key counts as different)."""
        col = self.column(key)
        return len(col) < len(self.values) or len({repr(v) for v in col}) > 1


def _scalar(v: Any) -> Any:
    if isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, tuple):
        return str(list(v))
    return str(v)


def _column_type(values: list[Any]) -> str:
    if values and all(isinstance(v, bool) for v in values):
        return "bool"
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "number"
    return "string"


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

    def hparams_start(self, schema: HParamSchema, label: str) -> None:
        """The HPARAMS tab's schema (every agent's keys) and this agent's row, written when its training starts."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        infos = []
        for key in schema.keys:
            col = schema.column(key)
            kind = _column_type(col)
            info = api_pb2.HParamInfo(name=key, differs=schema.differs(key))
            if kind == "number":
                info.type = api_pb2.DATA_TYPE_FLOAT64
                info.domain_interval.min_value, info.domain_interval.max_value = float(min(col)), float(max(col))
            elif kind == "bool":
                info.type = api_pb2.DATA_TYPE_BOOL
                info.domain_discrete.extend(sorted(set(col)))
            else:
                info.type = api_pb2.DATA_TYPE_STRING
                info.domain_discrete.extend(sorted({str(v) for v in col}))
            infos.append(info)
        metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"hparam/{m}"), display_name=m) for m in schema.metrics]
        experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for key, v in schema.values[label].items():
            kind = _column_type(schema.column(key))
            if kind == "number":
                start.hparams[key].number_value = float(v)
            elif kind == "bool":
                start.hparams[key].bool_value = bool(v)
            else:
                start.hparams[key].string_value = str(v)
        self._hparams_summary("experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment))
        self._hparams_summary("session_start_info", plugin_data_pb2.HParamsPluginData(session_start_info=start))

    def hparams_end(self, metrics: Mapping[str, float], *, completed: bool) -> None:
        """The agent's metrics (`hparam/<name>` scalars, the HPARAMS tab's metric columns) and its session's end."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        for k, v in metrics.items():
            if v is not None and not np.isnan(v):
                self.writer.add_scalar(f"hparam/{k}", float(v), 0)
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_ABORTED,
                                            end_time_secs=time.time())
        self._hparams_summary("session_end_info", plugin_data_pb2.HParamsPluginData(session_end_info=end))

    def _hparams_summary(self, what: str, data: Any) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import metadata

        tag = {"experiment": metadata.EXPERIMENT_TAG, "session_start_info": metadata.SESSION_START_INFO_TAG,
               "session_end_info": metadata.SESSION_END_INFO_TAG}[what]
        meta = metadata.create_summary_metadata(data)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """One session's hyper-parameters against its final metrics (a schema of its own keys)."""
        label = "."
        schema = HParamSchema.of({label: hparams}, list(metrics))
        self.hparams_start(schema, label)
        self.hparams_end(metrics, completed=True)

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
