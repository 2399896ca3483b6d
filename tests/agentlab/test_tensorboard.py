"""What TensorBoard shows of a run: the HPARAMS tab as TensorBoard's own hparams backend serves it to the browser
(every agent, the union of their keys, bytes and accuracy as metrics), ledger cards in KiB, heat-maps that name
their agent, and every figure an evaluator reports. tools/tensorboard_check.py looks at the same tab in Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agentlab import recipe as recipes
from agentlab import tblog
from agentlab.evaluate import EvalResult
from agentlab.loop import LoopConfig, run
from agentlab.runner import run_recipe

AGENTS = ["finetune", "replay", "supsup_memory"]


@pytest.fixture(scope="module")
def three_agents(tmp_path_factory):
    """The default recipe's fine-tuning, replay and SupSup-with-memory agents, two steps a task."""
    name, table = recipes.read_recipe("digits-split")
    resolved = recipes.resolve(name, recipes.apply_overrides(table, ["learner.epochs=1", "learner.max_steps=2"]))
    run_dir, results = run_recipe(resolved, run_dir=tmp_path_factory.mktemp("tb") / "run", only=AGENTS)
    assert all(r.completed for r in results.values())
    return run_dir, results


def _hparams_backend(logdir):
    """What TensorBoard's HPARAMS tab receives: (experiment, {session name: (hparams, metrics)})."""
    from tensorboard import context as tb_context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    ctx = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider))
    experiment = get_experiment.Handler(tb_context.RequestContext(), ctx, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    groups = list_session_groups.Handler(tb_context.RequestContext(), ctx, "", request).run().session_groups
    value = lambda v: getattr(v, v.WhichOneof("kind"))  # noqa: E731
    sessions = {g.name: ({k: value(v) for k, v in g.hparams.items()}, {m.name.tag: m.value for m in g.metric_values})
                for g in groups}
    return experiment, sessions


def test_hparams_tab_lists_every_agent_with_its_distinct_keys(three_agents):
    run_dir, results = three_agents
    experiment, sessions = _hparams_backend(run_dir)
    columns = {h.name: h for h in experiment.hparam_infos}
    # the union of the agents' keys: replay's buffer, SupSup's plasticity and memory keys, beside what all share
    for key in ["components", "learner.name", "learner.buffer_size", "learner.policy", "plasticity.0.name",
                "memory.0.name", "memory.0.capacity", "learner.lr", "learner.epochs", "backbone.hidden", "seed", "stream.name"]:
        assert key in columns, key
    assert columns["learner.buffer_size"].differs and columns["plasticity.0.name"].differs
    assert not columns["stream.name"].differs
    assert {m.name.tag for m in experiment.metric_infos} >= {"hparam/avg_acc", "hparam/total_KiB"}
    assert set(sessions) == set(AGENTS)
    hp = {label: s[0] for label, s in sessions.items()}
    assert hp["replay"]["learner.buffer_size"] == 200 and "learner.buffer_size" not in hp["finetune"]
    assert hp["supsup_memory"]["plasticity.0.name"] == "supsup" and "plasticity.0.name" not in hp["replay"]
    assert hp["supsup_memory"]["memory.0.capacity"] == 400 and hp["supsup_memory"]["backbone.bias"] is False
    assert hp["finetune"]["backbone.bias"] is True  # a key the recipe sets for one agent: the others' defaults
    assert hp["supsup_memory"]["components"] == "finetune · mlp + supsup + episodic"
    assert hp["replay"]["learner.lr"] == pytest.approx(0.002) and hp["supsup_memory"]["learner.lr"] == pytest.approx(0.01)
    for label, (_, metrics) in sessions.items():
        r = results[label]
        assert metrics["hparam/avg_acc"] == pytest.approx(r.metrics["avg_acc"], rel=1e-5)
        assert metrics["hparam/total_KiB"] == pytest.approx(r.ledger[-1]["total_bytes"] / 1024, rel=1e-5)
    assert "hparam/task_inference_acc" in sessions["supsup_memory"][1]


def test_every_agent_writes_the_same_schema(three_agents):
    """TensorBoard takes its columns from the first run it reads: each agent's folder alone gives the same ones."""
    run_dir, _ = three_agents
    schemas = []
    for label in AGENTS:
        experiment, sessions = _hparams_backend(run_dir / label)
        schemas.append([(h.name, h.type, list(h.domain_discrete)) for h in experiment.hparam_infos])
        assert list(sessions) == ["."]
    assert schemas[0] == schemas[1] == schemas[2]


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_ledger_cards_in_kib_and_none_for_what_holds_nothing(three_agents):
    run_dir, results = three_agents
    finetune, replay = _scalars(run_dir / "finetune"), _scalars(run_dir / "replay")
    assert "ledger/total_KiB" in finetune.Tags()["scalars"] and "ledger/total_bytes" not in finetune.Tags()["scalars"]
    assert not [t for t in finetune.Tags()["scalars"] if t.startswith("ledger/learner_")]  # keeps nothing: no card
    points = replay.Scalars("ledger/learner_replay/KiB")
    assert len(points) == 5
    assert points[-1].value == pytest.approx(results["replay"].ledger[-1]["modules"]["learner_replay"]["bytes"] / 1024)
    assert replay.Scalars("ledger/total_KiB")[-1].value == pytest.approx(results["replay"].ledger[-1]["total_bytes"] / 1024)


def test_heatmap_has_a_colour_bar_and_the_agents_label_in_its_title():
    R = np.array([[0.9, 0.1], [0.8, 0.7]])
    with tblog.images_of("replay"):
        fig = tblog.heatmap_figure(R, "accuracy R[i, j] in % after task 1")
    assert fig.axes[0].get_title() == "replay: accuracy R[i, j] in % after task 1"
    assert len(fig.axes) == 2  # the matrix and its colour bar
    img = tblog.figure_image(fig)
    assert img.shape[1] >= 600 and img.shape[0] >= 500 and img.dtype == np.uint8
    assert tblog.heatmap_figure(R).axes[0].get_title() == "accuracy R[i, j]"  # outside images_of: as given


def test_images_logged_by_the_loop_name_their_agent(three_agents, monkeypatch):
    titles = []
    draw = tblog.heatmap_figure

    def recording(*args, **kwargs):
        fig = draw(*args, **kwargs)
        titles.append(fig.axes[0].get_title())
        return fig

    monkeypatch.setattr(tblog, "heatmap_figure", recording)
    name, table = recipes.read_recipe("digits-split")
    resolved = recipes.resolve(name, recipes.apply_overrides(table, ["learner.epochs=1", "learner.max_steps=1"]))
    run_recipe(resolved, run_dir=three_agents[0].parent / "titles", only=["supsup_memory"])
    # the accuracy matrix and SupSup's own heat-maps (mask overlap, task-inference confusion) alike
    assert len(titles) >= 10 and all(t.startswith("supsup_memory: ") for t in titles), titles


def test_evaluator_figures_reach_tensorboard_and_summary(tmp_path):
    """The sequence evaluator's bits per sequence and generalisation figures, as eval/<figure>/task_NNN."""
    name, table = recipes.read_recipe("dnc-copy")
    resolved = recipes.resolve(name, recipes.apply_overrides(table, [
        "learner.steps=2", "stream.n_eval=4", 'stream.tasks=["copy", "repeat_copy"]', "stream.max_len=4",
        "stream.gen_min_len=5", "stream.gen_max_len=6"]))
    run_dir, results = run_recipe(resolved, run_dir=tmp_path / "run", only=["lstm"])
    r = results["lstm"]
    summary = json.loads((run_dir / "lstm" / "summary.json").read_text())
    extras = summary["eval_extras"]
    assert set(extras) == {"bits_per_seq", "bits_per_seq_gen", "acc_gen"}  # "acc" is the accuracy itself: R
    assert np.array(extras["bits_per_seq"], dtype=float).shape == r.R.shape
    assert summary["history"][1]["eval"]["bits_per_seq"]["000"] == pytest.approx(extras["bits_per_seq"][1][0])
    tb = _scalars(run_dir / "lstm")
    points = tb.Scalars("eval/bits_per_seq/task_000")
    assert [p.step for p in points] == [0, 1]
    assert [p.value for p in points] == pytest.approx([extras["bits_per_seq"][0][0], extras["bits_per_seq"][1][0]])
    assert len(tb.Scalars("eval/bits_per_seq_gen/task_001")) == 1
    assert len(tb.Scalars("eval/acc/task_000")) == 2  # not written twice by the extra named "acc"


def _with_raw_return(monkeypatch):
    """An evaluator that also reports a raw return (as an environment's does), 100 x its accuracy."""
    import agentlab.loop as loop

    real = loop.evaluate

    def evaluate(agent, task, **kwargs):
        res = real(agent, task, **kwargs)
        return EvalResult(res.acc, res.n, {**res.extra, "return": 100.0 * res.acc})

    monkeypatch.setattr(loop, "evaluate", evaluate)


def _agent():
    from agentlab.agent import Agent
    from agentlab.backbones.mlp import MLP
    from agentlab.learners.finetune import FineTune
    from agentlab.learners.sgd import SGDConfig

    torch.manual_seed(0)
    return Agent(MLP(20, [16], 4), learner=FineTune(SGDConfig(epochs=1, lr=0.05, batch_size=50)))


def test_evaluator_extras_are_kept_across_a_resume(tmp_path, monkeypatch):
    from tests_helpers import permuted_stream

    _with_raw_return(monkeypatch)
    stream = permuted_stream(n_tasks=3)
    full = run(_agent(), stream, generator=torch.Generator().manual_seed(0), out_dir=tmp_path / "full")
    np.testing.assert_allclose(full.eval_extras()["return"], 100 * full.R)  # NaN where R is not measured
    part = run(_agent(), stream, generator=torch.Generator().manual_seed(0), out_dir=tmp_path / "part",
               cfg=LoopConfig(stop_after_tasks=1))
    assert part.status == "interrupted"
    resumed = run(_agent(), stream, generator=torch.Generator().manual_seed(0), out_dir=tmp_path / "part", resume=True)
    np.testing.assert_array_equal(resumed.eval_extras()["return"], full.eval_extras()["return"])
    saved = json.loads((tmp_path / "part" / "summary.json").read_text())["eval_extras"]["return"]
    assert saved[2][1] == pytest.approx(100 * full.R[2, 1])
